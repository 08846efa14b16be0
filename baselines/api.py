"""The uniform wrapper every backbone family implements, and the one registry of backbones.

A backbone = a tokenizer (image <-> latent) + a generator (latent model) + a training recipe. The harness
(bench/) only talks to these three objects, so every family is trained, sampled and measured the same way.

Conventions shared by all families:
- images are float NCHW in [-1, 1];
- `Tokenizer.encode` returns *raw* latents; the harness calls `set_latent_stats` once on the training latents
  and the generator always sees `normalize(latents)`;
- determinism: sample i's initial noise and every stochastic step draw from its own generator seeded by
  (run seed, i) (`sample_generators`), so results do not depend on batch size or process count.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import OptionError  # user errors: one line, exit code 2 (tasks.py)


class Tokenizer(nn.Module):
    """image <-> latent. Subclasses implement `_encode`, `decode`, `latent_shape`; trainable ones `loss`."""

    trainable: bool = False  # True: the harness trains it in stage 1 with `loss`
    needs_features: bool = False  # True: `loss`/`encode` want frozen-encoder features of the images
    # Tokenizers with the same key are one model shared by several backbones (SD-VAE serves REPA and STARFlow):
    # a suite run trains it once in stage 1 and every backbone with that key reuses it.
    shared_key: str | None = None
    total_steps: int = 0  # set by the harness before stage 1, for tokenizers whose loss is staged by step

    def __init__(self):
        super().__init__()
        # Per-channel statistics (VA-VAE's latents_stats.pt convention: latent_norm = (z - mean) / std).
        self.register_buffer("latent_mean", torch.zeros(0), persistent=True)
        self.register_buffer("latent_std", torch.zeros(0), persistent=True)
        self.latent_scale = 1.0  # a fixed scalar multiplier (SD-VAE 0.18215) used when no stats are set

    def encode(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> raw latents [B,*latent_shape] (posterior mean)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """raw latents -> images [B,3,H,W], roughly in [-1,1] (not clipped)."""
        raise NotImplementedError

    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        raise NotImplementedError

    def loss(
        self, images: torch.Tensor, features: torch.Tensor | None = None, step: int = 0
    ) -> dict[str, torch.Tensor]:
        """Stage-1 loss: dict with 'loss' (the scalar to minimise) and named parts to log."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    # --- normalisation -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_latent_stats(self, latents: torch.Tensor) -> None:
        """Per-channel mean/std over (batch, spatial) of raw latents [N, C, ...]."""
        dims = [0] + list(range(2, latents.ndim))
        self.latent_mean = latents.double().mean(dims).float()
        self.latent_std = latents.double().std(dims).float().clamp_min(1e-6)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.latent_mean.numel() == 0:
            return None
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return self.latent_mean.view(shape).to(z), self.latent_std.view(shape).to(z)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._stats(z)
        return z * self.latent_scale if stats is None else (z - stats[0]) / stats[1]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._stats(z)
        return z / self.latent_scale if stats is None else z * stats[1] + stats[0]


class Generator(nn.Module):
    """Latent generative model. Works on *normalised* latents. Sampler settings are a typed `SamplerSettings` of
    the generator's kind (`settings_type`); `sample`/`nfe` also take keyword overrides (validated, unknown keys
    are an OptionError)."""

    needs_features: bool = False  # True: `loss` wants frozen-encoder features (REPA alignment)
    settings_type: ClassVar[type[SamplerSettings]]

    def loss(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training loss: dict with 'loss' (scalar) and named parts (scalars) to log."""
        raise NotImplementedError

    def settings(self, settings: SamplerSettings | dict | None = None, **overrides: Any) -> SamplerSettings:
        """Typed settings from settings (typed, a dict of overrides of the defaults, or None = defaults) + overrides."""
        return as_settings(self.settings_type, settings).replace(**overrides)

    def sample(
        self,
        labels: torch.Tensor,
        noise: torch.Tensor,
        generators: list[torch.Generator] | None = None,
        settings: SamplerSettings | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """labels [B] int64, noise [B,*latent] (one row per sample, drawn by the caller) -> latents [B,*latent].
        `generators[i]` supplies every further random draw of sample i (SDE noise)."""
        raise NotImplementedError

    def nfe(self, settings: SamplerSettings | None = None, **overrides: Any) -> int:
        """Network evaluations per image for these sampler settings (a CFG pair counts as 2)."""
        raise NotImplementedError

    def describe(self, settings: SamplerSettings | None = None) -> dict[str, Any]:
        """{"sampler", "steps", "guidance"} of these settings in the one convention (see SamplerSettings)."""
        return self.settings(settings).describe()

    def flops_per_image(self) -> float:
        """Forward FLOPs of one network evaluation for one image (multiply-add = 2 FLOPs)."""
        raise NotImplementedError

    def eval_metrics(self, latents: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Family-specific held-out metrics (e.g. bits/dim for flows). Default: none."""
        return {}

    def apply_recipe(self, recipe: Recipe, epoch: float = 0.0) -> None:
        """Training-time settings the recipe owns, applied by the trainer before a step `epoch` epochs into
        training (fractional): the label dropout (the generator is built before suite overrides) and, in
        subclasses, schedules such as LightningDiT's logit-normal t switched off mid-training."""
        if hasattr(self, "label_drop"):
            self.label_drop = float(recipe.label_drop)


# --- typed sampler settings ----------------------------------------------------------------------------------


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler settings of one generator kind: frozen, validated on construction, `replace(**overrides)` rejects
    unknown keys. `describe()` reports {"sampler": name, "steps": int, "guidance": scale} in ONE convention for
    every family: guidance is a classifier-free guidance scale with 1 = off (a flow's weight w is 1 + w)."""

    kind: ClassVar[str] = "sampler"

    def __post_init__(self):
        for f in dataclasses.fields(self):  # lists from JSON / suites -> tuples, so settings stay hashable
            object.__setattr__(self, f.name, _tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        pass

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> SamplerSettings:
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise OptionError(
                f"unknown {self.kind} sampler option(s) {', '.join(unknown)}; known: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **overrides) if overrides else self

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: {"kind": ..., field: value} with tuples as lists."""

        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {"kind": self.kind, **{k: plain(getattr(self, k)) for k in self.field_names()}}

    def describe(self, steps: int | None = None) -> dict[str, Any]:
        raise NotImplementedError


def as_settings(kind: type[SamplerSettings], settings: SamplerSettings | dict | None) -> SamplerSettings:
    """settings of `kind` from a typed value, a dict of overrides of kind's defaults, or None (the defaults)."""
    if settings is None:
        return kind()
    if isinstance(settings, dict):
        return kind().replace(**settings)
    if not isinstance(settings, kind):
        raise OptionError(
            f"{type(settings).__name__} given where {kind.__name__} ({kind.kind}) settings are needed"
        )
    return settings


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise OptionError(what)


@dataclass(frozen=True)
class FlowMatchingSampler(SamplerSettings):
    """Linear-interpolant flow matching (baselines/transport.py, t = 1 noise): Euler / Heun ODE or Euler-Maruyama
    SDE, classifier-free guidance `guidance` (1 = off) inside `guidance_interval` (t_lo, t_hi), or a piecewise
    `guidance_schedule` ((t_lo, t_hi, scale), ...); guidance_channels = DiT/LightningDiT's quirk of guiding the
    first channels only (None: all channels); time_shift > 1 spends more steps near noise; t_last: the SDE's last
    noisy time."""

    kind: ClassVar[str] = "flow-matching"
    mode: str = "ode"  # "ode" | "sde"
    steps: int = 250
    guidance: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    guidance_schedule: tuple[tuple[float, float, float], ...] | None = None
    guidance_channels: int | None = None
    time_shift: float = 1.0
    heun: bool = False
    heun_guidance: str = (
        "t_cur"  # which time decides guidance of Heun's 2nd call: t_cur (REPA's sampler) | t_next
    )
    t_last: float = 0.04

    def validate(self) -> None:
        _check(self.mode in ("ode", "sde"), f"sampler mode must be 'ode' or 'sde', got {self.mode!r}")
        _check(int(self.steps) >= 1, f"steps must be >= 1, got {self.steps}")
        i = self.guidance_interval
        _check(
            i is None or (len(i) == 2 and i[0] <= i[1]), f"guidance_interval must be (t_lo, t_hi), got {i}"
        )
        g = self.guidance_schedule
        _check(
            g is None or all(len(x) == 3 for x in g),
            f"guidance_schedule must hold (t_lo, t_hi, scale), got {g}",
        )
        c = self.guidance_channels
        _check(c is None or int(c) >= 1, f"guidance_channels must be None or >= 1, got {c}")
        _check(self.time_shift > 0, f"time_shift must be > 0, got {self.time_shift}")
        _check(self.heun_guidance in ("t_cur", "t_next"),
               f"heun_guidance must be 't_cur' (REPA's sampler) or 't_next', got {self.heun_guidance!r}")  # fmt: skip
        _check(0 < self.t_last < 1, f"t_last must lie in (0, 1), got {self.t_last}")

    def describe(self, steps: int | None = None) -> dict[str, Any]:
        scale = (
            max(float(w) for _, _, w in self.guidance_schedule) if self.guidance_schedule else self.guidance
        )
        return {"sampler": self.mode, "steps": int(self.steps), "guidance": float(scale)}


SAMPLING_MODES = ("sequential", "jacobi")


def check_decode_options(mode: str, block_size: int, tol: float, max_iters: int) -> None:
    """Autoregressive-flow decoding: 'sequential' or block-wise 'jacobi' with its block / tolerance / iterations."""
    _check(mode in SAMPLING_MODES, f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if mode == "jacobi":
        _check(int(block_size) >= 1, f"jacobi_block must be >= 1, got {block_size}")
        _check(tol >= 0, f"jacobi_tol must be >= 0, got {tol}")
        _check(int(max_iters) >= 1, f"jacobi_max_iters must be >= 1, got {max_iters}")


@dataclass(frozen=True)
class FlowSampler(SamplerSettings):
    """Autoregressive normalizing flows (TARFlow / STARFlow, baselines/flows.py): invert the blocks token by token
    ('sequential') or block-wise Jacobi; guidance WEIGHT w (0 = off; reported as scale 1 + w) with the unconditional
    branch at attention temperature attn_temp; TARFlow's guide_what ('a', 'b', 'ab') and annealed_guidance
    (w (i+1)/(T-1) at token i); one Tweedie denoising step at noise_std (None: the training noise) with step
    denoise_lr."""

    kind: ClassVar[str] = "autoregressive-flow"
    guidance: float = 0.0
    attn_temp: float = 1.0
    mode: str = "sequential"
    jacobi_block: int = 16
    jacobi_tol: float = 1e-3
    jacobi_max_iters: int = 32
    denoise: bool = True
    denoise_lr: float = 1.0
    noise_std: float | None = None
    guide_what: str = "ab"
    annealed_guidance: bool = False

    def validate(self) -> None:
        check_decode_options(self.mode, self.jacobi_block, self.jacobi_tol, self.jacobi_max_iters)
        _check(self.guidance >= 0, f"guidance weight must be >= 0 (0 = off), got {self.guidance}")
        _check(self.attn_temp > 0, f"attn_temp must be > 0, got {self.attn_temp}")
        _check(
            set(self.guide_what) <= set("ab"),
            f"guide_what must be made of 'a' and 'b', got {self.guide_what!r}",
        )
        _check(self.noise_std is None or self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")

    def describe(self, steps: int | None = None) -> dict[str, Any]:
        """steps: sequential network calls without CFG doubling or denoising (the generator knows the token count:
        use `Generator.describe(settings)`)."""
        return {"sampler": self.mode, "steps": steps, "guidance": 1.0 + float(self.guidance)}


@dataclass(frozen=True)
class Recipe:
    """Training + sampling recipe. Paper presets carry the official release's values; `source` says where
    they come from. Suites override fields by name (unknown names are an error)."""

    # optimiser and schedule
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 80
    lr_schedule: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0
    min_lr: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = (
        False  # decay_k = min(ema_decay, (1 + k) / (10 + k)): short runs don't average in the init
    )
    grad_clip: float | None = None
    label_drop: float = 0.1
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (CUDA only); applied by the trainer as autocast
    warmup_epochs: float = (
        0.0  # linear lr warmup over this many epochs (the flows' "one epoch"); adds to warmup_steps
    )
    # how the generator's training latents come from the tokenizer's posterior:
    # "mean" (posterior mean), "sample" (a fresh posterior sample every step: REPA, STARFlow),
    # "sample_once" (one posterior sample per image, drawn at extraction: LightningDiT's released latents)
    posterior: str = "mean"
    hflip: float = (
        0.0  # probability that a training image / its cached latent is the horizontally flipped one
    )
    # latent normalisation: "per_channel" (mean/std from the training latents), "scale" (the tokenizer's fixed
    # factor, e.g. SD-VAE 0.18215), "released" (statistics shipped with the tokenizer, e.g. latents_stats.pt)
    latent_norm: str = "per_channel"
    # flow matching: training t ~ logit-normal until this epoch, uniform after (LightningDiT's large runs switch it
    # off mid-training, configs/config_details.yaml:59-61); None keeps the generator's t sampling throughout
    logit_normal_until_epoch: float | None = None
    # what the release's FID script did, recorded beside our choice (bench.sample label modes / uint8 conventions):
    release_labels: str = (
        "equal"  # "equal" (50 per class, ours) | "random" (torch.randint: REPA, LightningDiT, ADM)
    )
    release_uint8: str = "round"  # "round" | "truncate" ((x + 1) * 127.5 cast down: ADM, REPA)
    # sampling: the generator's typed settings (None: its defaults); `replace(sampler={...})` merges overrides
    sampler: SamplerSettings | None = None
    # stage 1: trainable tokenizer
    stage1_epochs: int = 0
    stage1_lr: float = 1e-4
    stage1_batch_size: int = 64
    stage1_betas: tuple[float, float] = (0.5, 0.9)
    stage1_lr_schedule: str = "constant"  # "constant" | "cosine" (FAE: cosine with 1000 warmup steps)
    stage1_warmup_steps: int = 0
    stage1_min_lr: float = 0.0
    stage1_grad_clip: float | None = 1.0  # over every tokenizer parameter (ours; None = off, as VA-VAE)
    source: str = ""

    def replace(self, **overrides: Any) -> Recipe:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise OptionError(f"unknown recipe field(s) {unknown}; known: {sorted(names)}")
        new = overrides.get("sampler")
        if isinstance(new, dict):  # merge, validated, so a suite can change one sampler knob
            if self.sampler is None:
                raise OptionError("this recipe has no sampler settings to merge sampler overrides into")
            overrides = dict(overrides, sampler=self.sampler.replace(**new))
        elif new is not None and not isinstance(new, SamplerSettings):
            raise OptionError(
                f"recipe sampler must be SamplerSettings or a dict of overrides, got {type(new).__name__}"
            )
        return dataclasses.replace(self, **overrides)


@dataclass
class Backbone:
    """What the harness trains and measures."""

    name: str
    family: str
    tokenizer: Tokenizer
    generator: Generator
    recipe: Recipe
    encoder: nn.Module | None = None  # frozen feature encoder (REPA target, VA-VAE VF target, FAE input)
    notes: dict[str, Any] = field(
        default_factory=dict
    )  # choices the report must show (e.g. CFG quirk on/off)
    # evaluation protocols -> sampler settings: "paper" (the release's sampler, quirks included) and "common"
    # (one setting shared by all families)
    protocols: dict[str, SamplerSettings] = field(default_factory=dict)

    def features(self, images: torch.Tensor) -> torch.Tensor | None:
        """Frozen-encoder patch features [B, T, D] of images in [-1,1], or None without an encoder."""
        if self.encoder is None:
            return None
        with torch.no_grad():
            return self.encoder(images)

    @property
    def sampler(self) -> SamplerSettings:
        """The recipe's sampler settings (the generator's defaults when the recipe has none)."""
        return self.generator.settings(self.recipe.sampler)

    @torch.no_grad()
    def sample_images(
        self,
        labels: torch.Tensor,
        noise: torch.Tensor,
        generators: list[torch.Generator] | None = None,
        settings: SamplerSettings | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Decoded images [B,3,H,W], roughly in [-1,1] and NOT clamped (callers count non-finite values first; the
        uint8 conversion clamps). settings: default the recipe's; overrides: validated sampler keys."""
        s = self.generator.settings(settings if settings is not None else self.recipe.sampler, **overrides)
        z = self.generator.sample(labels, noise, generators, s)
        return self.tokenizer.decode(self.tokenizer.denormalize(z))


# The one registry: backbone name -> "module:function". The function takes (preset: str, **options) and
# returns a Backbone. Import is lazy so a broken family cannot break the others' import.
BACKBONES: dict[str, str] = {
    "repa": "baselines.backbones.repa:build_backbone",
    "sit": "baselines.backbones.sit:build_backbone",  # REPA without the alignment loss (its speed-up's reference)
    "vavae_lightningdit": "baselines.backbones.vavae_lightningdit:build_backbone",
    "fae": "baselines.backbones.fae:build_backbone",
    "starflow": "baselines.backbones.starflow:build_backbone",
    "tarflow": "baselines.backbones.tarflow:build_backbone",
}


def build_backbone(name: str, preset: str = "tiny", **options: Any) -> Backbone:
    if name not in BACKBONES:
        raise OptionError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    module, fn = BACKBONES[name].split(":")
    build = getattr(importlib.import_module(module), fn)
    params = inspect.signature(build).parameters
    if not any(
        p.kind is p.VAR_KEYWORD for p in params.values()
    ):  # builders with **options check them themselves
        known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise OptionError(
                f"unknown {name} build option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
    return build(preset, **options)


def sample_seed(run_seed: int, index: int) -> int:
    """Seed of sample `index` in a run: a fixed mix of (run seed, index), independent of batching."""
    x = (int(run_seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (
        1 << 64
    )
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    return x ^ (x >> 32)


def sample_generators(run_seed: int, indices, device: str | torch.device = "cpu") -> list[torch.Generator]:
    return [
        torch.Generator(device=device).manual_seed(sample_seed(run_seed, int(i)) % (1 << 63)) for i in indices
    ]


def randn_per_sample(
    generators: list[torch.Generator], shape: tuple[int, ...], device=None, dtype=torch.float32
) -> torch.Tensor:
    """One standard-normal draw of `shape` per sample, each from that sample's own generator -> [B, *shape]."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in generators]
    ).to(device or generators[0].device)
