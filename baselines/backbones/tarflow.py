"""Registry entry "tarflow": TARFlow (baselines/tarflow.py) on pixels behind the uniform wrapper: the identity
pixel tokenizer, the generator (training noise, label dropout, sampler options, bits/dim) and the official recipe."""

from __future__ import annotations

import math
from typing import Any

import torch

from baselines.api import Backbone, FlowSampler, Recipe, Tokenizer
from baselines.flows import DecodeStats, FlowGenerator, check_labels
from baselines.tarflow import TarFlow, TarFlow_models
from bench.errors import OptionError


class PixelTokenizer(Tokenizer):
    """Identity tokenizer: TARFlow models pixels in [-1, 1] directly, latent_shape = (3, H, W).

    `set_latent_stats` is a no-op on purpose: the flow's noise level, its bits/dim and its dequantisation are
    defined in the paper's pixel units, which per-channel standardisation would change."""

    def encode(
        self, images: torch.Tensor, features: torch.Tensor | None = None, generator=None
    ) -> torch.Tensor:
        return images.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        return (3, image_size, image_size)

    def set_latent_stats(self, latents: torch.Tensor) -> None:
        return None


class TarFlowGenerator(FlowGenerator):
    """TARFlow behind the uniform Generator API (pixel space, class-conditional).

    Training (official train.py): Gaussian noise augmentation x + sigma * eps in pixel units (paper: 0.05 on
    ImageNet 64, 0.15 on ImageNet 128, 0.07 on AFHQ), dropped labels (prob. label_drop) use the mean class
    embedding (label -1), loss = 0.5 mean(z^2) - mean(logdet).

    Sampling options: guidance (w, 0 = off), guide_what ('ab'), attn_temp, annealed_guidance (the official
    evaluate_fid.py uses True), mode 'sequential' | 'jacobi' with jacobi_block / jacobi_tol / jacobi_max_iters,
    denoise (one Tweedie step, official step size lr = 1 at the training noise level), denoise_lr, noise_std.
    `nfe()` counts sequential network calls of one block (a CFG pair counts 2; Jacobi: its worst case); what a
    call actually cost is in `last_sample_stats` (wall time, passes, FLOP-weighted forward equivalents).
    """

    NAME = "TARFlow"
    null_label = -1  # the mean class embedding

    def __init__(self, model: TarFlow, noise_std: float = 0.05, label_drop: float = 0.1):
        super().__init__(model, model.num_classes, noise_std, label_drop)

    def _labels(self, labels):
        if labels is None or not self.num_classes:
            return None
        check_labels(labels, self.num_classes)
        return labels.long()

    def _objective(self, x, y):
        z, _, logdets = self.model(x, y)
        loss = self.model.get_loss(z, logdets)
        with torch.no_grad():
            parts = {"loss_z": 0.5 * z.pow(2).mean(), "loss_logdet": -logdets.mean()}
        return loss, loss, parts

    def _condition(self, labels):
        return self._labels(labels)

    def _reverse(self, noise, cond, s: FlowSampler, stats):
        m = self.model
        return m.reverse(m.patchify(noise.float()), cond, s.guidance, s.guide_what, s.attn_temp, s.annealed_guidance,
                         mode=s.mode, jacobi_block=s.jacobi_block, jacobi_tol=s.jacobi_tol,
                         jacobi_max_iters=s.jacobi_max_iters, stats=stats)  # fmt: skip

    def _measured_cost(self, stats: list[DecodeStats], s: FlowSampler):
        m = self.model
        fwd = sum(b.tokens * b.rows for b in stats) / (len(m.blocks) * m.num_patches)
        if s.mode == "sequential":
            return self._block_calls(self._targets, s), fwd
        return sum(b.passes * b.rows for b in stats), fwd

    @property
    def _targets(self) -> int:
        return self.model.num_patches - 1  # token 0 passes unchanged

    def _block_calls(self, per_block, s: FlowSampler):
        return len(self.model.blocks) * per_block * (2 if s.guidance > 0 else 1)

    def _eval_batch(self, x, labels, g):
        """Exact likelihood on held-out pixels in [-1, 1] (8-bit images), conditional on the labels.

        - bits_per_dim: uniform dequantisation x = (x_int + u) / 256 * 2 - 1 with u ~ U[0,1)^D (fixed seed), as the
          official evaluate_bpd.py: -log2 p(x)/D + log2(128). For any continuous density this upper-bounds the
          discrete 8-bit NLL and is the number comparable with the pixel-space literature (ImageNet 64: about 2.99).
          A model trained with Gaussian noise augmentation (the generation setting) is scored off its training
          distribution here, so its value is worse than one trained with uniform noise (the density setting).
        - bits_per_dim_noisy: the training objective on held-out data, -log2 p(x + sigma eps)/D (fixed seed): the
          density of the Gaussian-smoothed data that the model actually fits; not a bound on the discrete NLL.
        """
        y = self._labels(labels) if labels is not None else None
        x_int = ((x + 1) * (255 / 2)).round()
        x_deq = (x_int + torch.rand(x.shape, generator=g, device=x.device)) / 256 * 2 - 1
        bpd_u = self._nll(x_deq, y) + math.log(128) / math.log(2)
        x_noisy = x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device)
        return {"bits_per_dim": bpd_u, "bits_per_dim_noisy": self._nll(x_noisy, y)}

    def _nll(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Per-sample -log2 p(x) / D of the continuous density."""
        z, _, logdets = self.model(x, y)
        nats = 0.5 * z.pow(2).flatten(1).mean(1) + 0.5 * math.log(2 * math.pi) - logdets
        return nats / math.log(2)


# Presets: the network (baselines.tarflow.TarFlow_models) + the training noise level (README commands).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model="tiny", noise_std=0.05),
    "imagenet64": dict(model="imagenet64", noise_std=0.05),
    "imagenet128": dict(model="imagenet128", noise_std=0.15),
    "afhq256": dict(model="afhq256", noise_std=0.07),
}

SOURCE = (
    "apple/ml-tarflow @313120e: train.py (AdamW betas (0.9, 0.95), weight_decay 1e-4, CosineLRSchedule with one "
    "epoch of linear warmup from 1e-6 and cosine to min lr 1e-6, no EMA, no grad clipping, bf16 autocast); README "
    "commands (lr 1e-4, batch 256 (768 for ImageNet 128), drop_label 0.1, noise_std 0.05 / 0.15 / 0.07, ImageNet 64 "
    "cond: 200 epochs, evaluate_fid --cfg 2.3); evaluate_fid.py (annealed_guidance=True, attn_temp 1, "
    "self_denoising_lr 1); guidance for ImageNet 128 / AFHQ is not in the README (0 here). tiny preset: our size "
    "(width 64, 4x2 layers), lr 1e-3 for CPU smoke runs, the ImageNet-64 sampler (guidance 2.3, annealed)."
)


def recipe(preset: str) -> Recipe:
    if preset == "tiny":
        return Recipe(
            lr=1e-3,
            betas=(0.9, 0.95),
            weight_decay=1e-4,
            batch_size=64,
            epochs=20,
            lr_schedule="cosine",
            warmup_steps=20,
            min_lr=1e-6,
            ema_decay=0.0,
            grad_clip=None,
            label_drop=0.1,
            sampler=FlowSampler(
                guidance=2.3,
                annealed_guidance=True,
                attn_temp=1.0,
                mode="sequential",
                denoise=True,
                denoise_lr=1.0,
            ),
            source=SOURCE,
        )
    big = preset == "imagenet128"
    # README.md:57-72 (batch, epochs per data set), train.py:70-71 (one epoch of warmup), utils.py:132 (flips),
    # evaluate_fid.py:72, 107 (random labels; torchmetrics' (x * 255).byte() truncation)
    return Recipe(
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=1e-4,
        batch_size=768 if big else 256,
        epochs={"imagenet64": 200, "imagenet128": 320, "afhq256": 4000}[preset],
        lr_schedule="cosine",
        warmup_steps=0,
        warmup_epochs=1.0,
        hflip=0.5,
        latent_norm="scale",  # pixels in [-1, 1] as they are (PixelTokenizer's scale 1): the noise std lives there
        release_labels="random",
        release_uint8="truncate",
        min_lr=1e-6,
        ema_decay=0.0,
        grad_clip=None,
        label_drop=0.1,
        mixed_precision="bf16",
        sampler=FlowSampler(
            guidance=2.3 if preset == "imagenet64" else 0.0,
            annealed_guidance=True,
            attn_temp=1.0,
            mode="sequential",
            denoise=True,
            denoise_lr=1.0,
        ),
        source=SOURCE + " Every setting's line: reports/recipes.md.",
    )


def protocols(recipe: Recipe) -> dict:
    # a flow's common protocol: its paper sampler
    return {"paper": recipe.sampler, "common": recipe.sampler}


def paper_setups() -> dict[str, tuple[Recipe, dict]]:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    return {p: (recipe(p), protocols(recipe(p))) for p in ("imagenet64", "imagenet128", "afhq256")}


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    noise_std: float | None = None,
) -> Backbone:
    """PixelTokenizer + TarFlowGenerator + the official recipe."""
    if preset not in PRESETS:
        raise OptionError(f"unknown TARFlow preset {preset!r}; known: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    over = {}
    if num_classes is not None:
        over["num_classes"] = num_classes
    if image_size is not None:
        over["img_size"] = image_size
    model = TarFlow_models[spec["model"]](**over)
    gen = TarFlowGenerator(model, spec["noise_std"] if noise_std is None else noise_std, label_drop=0.1)
    r = recipe(preset)
    return Backbone(
        name="tarflow",
        family="normalizing_flow",
        tokenizer=PixelTokenizer(),
        generator=gen,
        recipe=r,
        notes={"space": "pixel", "noise_std": gen.noise_std, "preset": preset},
        protocols=protocols(r),
    )
