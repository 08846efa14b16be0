"""Named suites: data + backbones + budget + evaluation protocol, validated before any work starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.api import BACKBONES
from bench.errors import OptionError


class SuiteError(OptionError):
    """A suite cannot run as asked (unknown name, missing data/weights, unwritable output)."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    data: str  # "embedded" | "imagenet" | "synthetic"
    image_size: int
    num_classes: int
    backbones: tuple[str, ...]
    presets: dict[str, str] = field(default_factory=dict)  # backbone -> preset name (default "tiny")
    n_train_per_class: int = 64
    n_ref_per_class: int = 64  # real held-out images for the FID reference statistics
    eval_epochs: tuple[int, ...] = ()
    n_eval_samples: int = 256  # equal labels: sample i has label i % num_classes
    extractor: str = "smoke"
    metrics: tuple[str, ...] = ("fid",)
    sample_batch_size: int = 128
    throughput_batch_sizes: tuple[int, ...] = (64,)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # backbone -> Recipe field overrides
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # backbone -> build_backbone options
    requires: dict[str, str] = field(default_factory=dict)  # what -> environment variable holding its path
    linear_probe: bool = True
    protocols: tuple[str, ...] = ("paper",)  # sampler protocols evaluated at every evaluation epoch
    micro_batch: int | None = None  # default --micro-batch (the unit of the loss's random draws)
    sample_steps: int | None = None  # replaces every step-based sampler's steps (dry runs on CPU)

    def preset_for(self, backbone: str) -> str:
        return self.presets.get(backbone, "tiny")


# stage 1 in steps, not images, decides the stand-ins' floors: 12 epochs of 512 crops at batch 16 (384 steps) brought
# the SD-VAE stand-in from rFID 821 (batch 64) to 62 (smoke extractor), at about twice the CPU time
_TINY_STAGE1 = dict(stage1_epochs=12, stage1_lr=2e-3, stage1_batch_size=16)
_TINY_FM = dict(
    lr=1e-3,
    batch_size=64,
    ema_decay=0.995,
    ema_warmup=True,
    lr_schedule="constant",
    warmup_steps=0,
    grad_clip=1.0,
    mixed_precision="no",
)

SMOKE_EPOCHS = 24
# diffusion samplers at 24 steps (32 before): the 10-minute budget; the flows keep their released step structure
SMOKE = Suite(
    name="smoke",
    description="Embedded photo crops (32 px, 8 classes), every family at tiny size on CPU in minutes",
    data="embedded",
    image_size=32,
    num_classes=8,
    backbones=("repa", "sit", "vavae_lightningdit", "fae", "starflow", "tarflow"),
    n_train_per_class=64,
    n_ref_per_class=64,
    eval_epochs=(4, 12, SMOKE_EPOCHS),
    n_eval_samples=256,
    metrics=("fid", "fid_ci"),  # fid_ci: bootstrap interval per evaluation (the claims table's within-seed interval)
    overrides={
        "repa": {
            **_TINY_STAGE1,
            **_TINY_FM,
            "epochs": SMOKE_EPOCHS,
            "sampler": dict(mode="sde", steps=24, guidance=1.8, guidance_interval=(0.0, 0.7)),
        },
        # plain SiT: REPA's smoke recipe without the alignment loss, REPA's speed-up has its reference
        "sit": {
            **_TINY_STAGE1,
            **_TINY_FM,
            "epochs": SMOKE_EPOCHS,
            "sampler": dict(mode="sde", steps=24, guidance=1.8, guidance_interval=(0.0, 0.7)),
        },
        "vavae_lightningdit": {**_TINY_STAGE1, **_TINY_FM, "epochs": SMOKE_EPOCHS, "sampler": dict(steps=24)},
        # FAE's stage 1 is cheap (a 16-token attention autoencoder): 18 epochs, rFID 48 at 12 -> 18 at 24 (batch 16)
        "fae": {**_TINY_STAGE1, "stage1_epochs": 18, **_TINY_FM, "epochs": SMOKE_EPOCHS, "sampler": dict(steps=24)},
        # the flows' official releases train without EMA (their recipes say ema_decay=0); kept as released
        "starflow": {
            **_TINY_STAGE1,
            "lr": 1e-3,
            "batch_size": 64,
            "epochs": SMOKE_EPOCHS,
            "grad_clip": 1.0,
            "mixed_precision": "no",
            "lr_schedule": "constant",
            "warmup_steps": 0,
        },
        "tarflow": {
            "lr": 1e-3,
            "batch_size": 64,
            "epochs": SMOKE_EPOCHS,
            "grad_clip": 1.0,
            "mixed_precision": "no",
            "lr_schedule": "constant",
            "warmup_steps": 0,
        },
    },
)

PATCHES64 = dataclasses.replace(
    SMOKE,
    name="patches64",
    description="Embedded photo crops at 64 px: the smoke protocol at 4x the pixels with four evaluations, "
    "convergence curves of all families over seeds (`invoke study --suite patches64 --seeds 0,1,2`)",
    image_size=64,
    eval_epochs=(4, 8, 16, SMOKE_EPOCHS),
)

PAPER_PRESETS = {"repa": "XL/2", "vavae_lightningdit": "XL/1", "fae": "paper", "starflow": "1.4B"}

IMAGENET256 = Suite(
    name="imagenet256",
    description="ImageNet 256x256, paper protocol: FID-50K vs the ADM reference batch, paper sampler/CFG settings",
    data="imagenet",
    image_size=256,
    num_classes=1000,
    backbones=("repa", "vavae_lightningdit", "fae", "starflow"),
    presets=PAPER_PRESETS,
    eval_epochs=(80, 800),
    n_eval_samples=50_000,
    extractor="inception-v3-compat",
    metrics=("fid", "sfid", "is", "precision", "recall"),
    sample_batch_size=250,
    linear_probe=False,
    protocols=("paper", "common"),
    micro_batch=32,  # 256 / 1024-image global batches split evenly over 1, 2, 4, 8 ... GPUs
    requires={
        "ImageNet train folder": "GENBENCH_IMAGENET",
        "ADM reference batch VIRTUAL_imagenet256_labeled.npz": "GENBENCH_ADM_REF",
        "InceptionV3 weights (torch-fidelity weights-inception-2015-12-05)": "GENBENCH_INCEPTION",
        "SD-VAE ft-EMA / ft-MSE diffusers folder": "GENBENCH_SD_VAE",
        "DINOv2 weights folder": "GENBENCH_WEIGHTS",
    },
)

IMAGENET256_THROUGHPUT = Suite(
    name="imagenet256-throughput",
    description="Paper-size models on synthetic inputs of the exact shapes: train/sampling img/s, latency, memory (GPU)",
    data="synthetic",
    image_size=256,
    num_classes=1000,
    backbones=("repa", "vavae_lightningdit", "fae", "starflow"),
    presets=PAPER_PRESETS,
    throughput_batch_sizes=(1, 8, 32, 64),
    linear_probe=False,
    requires={"CUDA device": "cuda"},
)

SUITES: dict[str, Suite] = {s.name: s for s in (SMOKE, PATCHES64, IMAGENET256, IMAGENET256_THROUGHPUT)}
BUILTIN = dict(SUITES)  # what a fresh process (a bench.jobs worker) knows by name

# Where each input comes from (printed with a missing input).
HOW_TO_GET = {
    "GENBENCH_IMAGENET": "the ILSVRC2012 train folder (one sub-folder per synset), from image-net.org",
    "GENBENCH_ADM_REF": "VIRTUAL_imagenet256_labeled.npz from openai/guided-diffusion's evaluations/README.md",
    "GENBENCH_INCEPTION": "weights-inception-2015-12-05-6726825d.pth, the weights file torch-fidelity downloads "
    "(github.com/toshas/torch-fidelity releases)",
    "GENBENCH_SD_VAE": "a diffusers folder of stabilityai/sd-vae-ft-ema or sd-vae-ft-mse (Hugging Face)",
    "GENBENCH_WEIGHTS": "a folder with the DINOv2 timm weights dinov2-vit-{b14,l14,g14}.safetensors (or timm folders "
    "of timm/vit_{base,large,giant}_patch14_dinov2.lvd142m)",
}

DRY_RUN_REQUIRES = {k: v for k, v in IMAGENET256.requires.items() if v in ("GENBENCH_IMAGENET", "GENBENCH_ADM_REF", "GENBENCH_INCEPTION")}  # fmt: skip


def dry_run_suite(epochs: int = 2, num_samples: int = 64, image_size: int = 256, sample_steps=None,
                  num_classes: int | None = None) -> Suite:  # fmt: skip
    """The imagenet256 protocol at toy scale: tiny presets with the stand-in encoders on any ImageNet-layout
    folder, FID against the ADM reference batch with Inception; only the three data/weights inputs needed.
    `num_classes`: the folder's class count (as ImageNet's 1000 at paper scale), so equal-label sampling draws
    only classes the models trained on; default 1000."""
    tiny = {"stage1_epochs": 1, "stage1_lr": 2e-3, "stage1_batch_size": 16, **_TINY_FM, "batch_size": 16,
            "epochs": epochs}  # fmt: skip
    flows = {k: v for k, v in tiny.items() if not k.startswith("ema")}
    return dataclasses.replace(
        IMAGENET256,
        name="imagenet256",
        description=f"imagenet256 dry run: tiny presets, {epochs} epochs, {num_samples} samples at {image_size} px",
        image_size=image_size,
        num_classes=num_classes or IMAGENET256.num_classes,
        presets={},
        eval_epochs=(epochs,),
        n_eval_samples=num_samples,
        sample_batch_size=min(64, num_samples),
        micro_batch=8,
        sample_steps=sample_steps,
        throughput_batch_sizes=(),  # the imagenet256-throughput suite measures speed at paper size
        overrides={b: (flows if b == "starflow" else tiny) for b in IMAGENET256.backbones},
        requires=DRY_RUN_REQUIRES,
    )


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def resolve(suite: Suite, backbones: str | None) -> tuple[str, ...]:
    """Backbones to run: the suite's, or a comma list that must name registered backbones of the suite."""
    if not backbones:
        return suite.backbones
    names = tuple(b.strip() for b in backbones.split(",") if b.strip())
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        raise SuiteError(f"unknown backbone(s) {', '.join(unknown)}; known: {', '.join(sorted(BACKBONES))}")
    not_in = [b for b in names if b not in suite.backbones]
    if not_in:
        raise SuiteError(
            f"backbone(s) {', '.join(not_in)} are not part of suite {suite.name!r} ({', '.join(suite.backbones)})"
        )
    return names


def check_output_dir(out: str | Path) -> Path:
    """The results root must be creatable and writable (checked by writing a probe file)."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SuiteError(f"output directory {p} is not writable: {e.strerror or e}") from None
    return p


def _has_class_folders(root: Path) -> bool:
    if not root.is_dir():
        return False
    return any(p.is_dir() and any(p.iterdir()) for p in root.iterdir())


def check_requirements(suite: Suite, device: str, extra: list[str] | tuple = ()) -> None:
    """One error naming every missing path and how to provide it, before any work starts (`extra`: more such
    lines from other checks, e.g. bench.paper_inputs' weights files)."""
    missing = list(extra)
    for what, env in suite.requires.items():
        if env == "cuda":
            import torch

            if not (device.startswith("cuda") and torch.cuda.is_available()):
                missing.append(
                    f"- {what}: suite {suite.name} needs a GPU (run with --device cuda on a CUDA machine)"
                )
            continue
        value = os.environ.get(env)
        how = f" ({HOW_TO_GET[env]})" if env in HOW_TO_GET else ""
        if not value:
            missing.append(f"- {what}: set {env}=PATH{how}")
        elif not Path(value).exists():
            missing.append(f"- {what}: {env}={value} does not exist{how}")
        elif not os.access(value, os.R_OK) or (Path(value).is_dir() and not os.access(value, os.X_OK)):
            missing.append(f"- {what}: {env}={value} is not readable")
        elif env == "GENBENCH_IMAGENET" and not _has_class_folders(Path(value)):
            missing.append(f"- {what}: {env}={value} holds no class sub-folders with images{how}")
        elif env != "GENBENCH_IMAGENET" and Path(value).is_file():
            try:
                with open(value, "rb") as f:
                    f.read(1)
            except OSError as e:
                missing.append(f"- {what}: {env}={value} cannot be read: {e.strerror or e}")
    if missing:
        raise SuiteError(f"suite {suite.name} cannot start; missing inputs:\n" + "\n".join(missing))
