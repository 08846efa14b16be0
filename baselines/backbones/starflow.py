"""Registry entry "starflow": class-conditional STARFlow (baselines/starflow.py) on autoencoder latents behind the
uniform wrapper: the generator (training noise, label dropout, latent-norm penalty, sampler options, bits/dim),
the presets and the official recipe."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from baselines.api import Backbone, FlowSampler, Recipe
from baselines.flows import DecodeStats, FlowGenerator, check_labels
from baselines.starflow import LATENT_NORM_REG, IdentityBlock, StarFlow, StarFlow_models
from bench.errors import OptionError


class StarFlowGenerator(FlowGenerator):
    """STARFlow behind the uniform Generator API: class-conditional, on normalised autoencoder latents.

    Classes use the official label path (a `.vocab` caption file -> LookupTableTokenizer + LabelEmbdder): the
    condition is a one-hot "caption" of length txt_size = 1 over num_classes + 1 entries, index num_classes
    being the empty caption used for dropped labels and the guidance's null branch.

    Training (official train.py + configs/starflow_3B_t2i_256x256.yaml): latents + noise_std * eps (0.3),
    labels dropped to the null caption with prob. label_drop (0.1), loss = get_loss (per-dimension NLL) +
    latent_norm_reg (1e-4) * sum of mean squares of the input and every intermediate latent.

    Sampling options: guidance (w; deep block only), attn_temp, mode 'sequential' | 'jacobi' (the released image
    script: jacobi, block 16, tol 1e-3, 32 iterations), jacobi_block / jacobi_tol / jacobi_max_iters,
    denoise (one Tweedie step at noise_std, lr 1 as sample.py), denoise_lr, noise_std. `nfe()` counts sequential
    network calls of one block (a CFG pair counts 2; the prefix pass and the denoise forward+backward count; Jacobi:
    its worst case); `last_sample_stats` holds the measured cost of the last call.
    """

    NAME = "STARFlow"

    def __init__(
        self,
        model: StarFlow,
        num_classes: int,
        noise_std: float = 0.3,
        label_drop: float = 0.1,
        latent_norm_reg: float = LATENT_NORM_REG,
    ):
        if model.txt_size != 1 or model.txt_dim != num_classes + 1:
            raise ValueError(
                f"class-conditional STARFlow needs txt_size=1 and txt_dim=num_classes+1={num_classes + 1}, "
                f"got txt_size={model.txt_size}, txt_dim={model.txt_dim}"
            )
        super().__init__(model, num_classes, noise_std, label_drop)
        self.latent_norm_reg = float(latent_norm_reg)

    @property
    def null_label(self) -> int:
        return self.num_classes  # the empty caption

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [B] in [0, K] (K = the null caption) -> one-hot captions [B, 1, K+1]."""
        return F.one_hot(labels.long(), self.num_classes + 1).float()[:, None]

    def _labels(self, labels):
        check_labels(labels, self.num_classes)
        return labels.long()

    def _objective(self, x, y):
        z, _, outputs, logdets = self.model(x, self.condition(y))
        flow = self.model.get_loss(z, logdets)
        reg = self.latent_norm_reg * self.model.latent_norm(outputs)
        parts = {"loss_z": flow["loss_z"], "loss_logdet": flow["loss_logdet"], "latent_norm": reg.detach()}
        return flow["loss"], flow["loss"] + reg, parts

    def _condition(self, labels):
        check_labels(labels, self.num_classes)
        return self.condition(labels)

    def settings(self, settings=None, **overrides) -> FlowSampler:
        s = super().settings(settings, **overrides)
        if s.guide_what != "ab" or s.annealed_guidance:
            raise OptionError(
                "STARFlow guidance has no guide_what / annealed_guidance (TARFlow sampler options)"
            )
        return s

    def _reverse(self, noise, cond, s: FlowSampler, stats):
        if s.guidance > 0:  # conditional rows, then the null caption's rows
            null = torch.full((cond.shape[0],), self.num_classes, dtype=torch.long, device=cond.device)
            cond = torch.cat([cond, self.condition(null)])
        return self.model.reverse(noise.float(), cond, s.guidance, s.attn_temp, mode=s.mode,
                                  jacobi_block=s.jacobi_block, jacobi_tol=s.jacobi_tol,
                                  jacobi_max_iters=s.jacobi_max_iters, stats=stats)  # fmt: skip

    def _measured_cost(self, stats: list[DecodeStats], s: FlowSampler):
        m = self.model
        flops = sum((b.tokens + b.prefix_tokens) * b.rows * m.block_flops_per_token(b.block) for b in stats)
        calls = sum((b.passes + (1 if b.prefix_tokens else 0)) * b.rows for b in stats)
        return calls, flops / m.flops_per_image()

    @property
    def _targets(self) -> int:
        m = self.model
        return m.num_patches if m.use_sos else m.num_patches - 1

    def _block_calls(self, per_block, s: FlowSampler):
        m, total, guided = self.model, 0, s.guidance > 0
        for i, block in enumerate(m.blocks):
            if isinstance(block, IdentityBlock):
                continue
            deep = i == len(m.blocks) - 1 or not m.cond_top_only
            rows = 2 if guided and block.txt_dim > 0 and deep else 1
            total += (per_block + (1 if block.txt_dim > 0 else 0)) * rows
        return total

    def _eval_batch(self, x, labels, g):
        """Exact likelihood of held-out latents (conditional on the labels), in bits per latent dimension.

        Caveats: this is the density of the *continuous, normalised autoencoder latents*, not of pixels: it is not
        comparable to pixel-space bits/dim (no dequantisation, the autoencoder's information loss is not counted,
        and it shifts by log2(s) per dimension under a latent rescaling by s, e.g. the tokenizer's statistics).
        - bits_per_dim: the held-out training objective, -log2 p(z + sigma eps) / D with the training noise
          sigma (fixed seed): the Gaussian-smoothed latent density the model fits. It falls as the model learns.
        - bits_per_dim_clean: -log2 p(z) / D of the same model at the clean latents.
        """
        check_labels(labels, self.num_classes)
        y = self.condition(labels)
        noisy = self._nll(x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device), y)
        return {"bits_per_dim": noisy, "bits_per_dim_clean": self._nll(x, y)}

    def _nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, _, _, logdets = self.model(x, y)
        nats = 0.5 * z.pow(2).flatten(1).mean(1) + 0.5 * math.log(2 * math.pi)
        nats = nats - sum(l.flatten(1).mean(1) if l.dim() > 1 else l for l in logdets)
        return nats / math.log(2)


# Presets: the network (baselines.starflow.StarFlow_models) + image size and classes of the class-conditional use.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model="tiny", image_size=32, classes=8
    ),  # 32x32 images -> KLTokenizer("tiny-f4") 8x8x4 latents
    "1.4B": dict(model="1.4B", image_size=256, classes=1000),
    "3.8B": dict(model="3.8B", image_size=256, classes=None),  # text-to-image: network only
}

SOURCE = (
    "apple/ml-starflow @e565a46: train.py (AdamW betas (0.9, 0.95), weight_decay 1e-4, CosineLRSchedule: linear "
    "warmup over warmup_steps (default one epoch) then cosine to min_lr; no EMA; grad_clip 0 = off; bf16 autocast; "
    "NB the released train.py hard-codes needs_update = False so its optimizer never steps -- values are read from "
    "its arguments, not from a working run); configs/starflow_3B_t2i_256x256.yaml (lr 6.4e-5, min_lr 1e-6, "
    "batch 1024, noise_std 0.3, drop_label 0.1, latent_norm_regularization 1e-4, cfg 2.5, SD-VAE ft-EMA); "
    "scripts/test_sample_image.sh (jacobi 1, jacobi_th 1e-3, block 16; cfg 3.6 for text); sample.py (jacobi_max_iter "
    "32, self-denoising lr 1 at noise_std). ImageNet guidance and epoch budget: not in the release (unsure: cfg 2.5 "
    "from the config, 400 epochs as in the FAE paper's STARFlow comparison). tiny preset: our sizes, lr 1e-3."
)


# The released image sampler (scripts/test_sample_image.sh + sample.py): Jacobi, block 16, tol 1e-3, 32 iterations,
# one self-denoising step (lr 1); guidance weight 2.5 from the 3B config (ImageNet's is not released).
PAPER_SAMPLER = FlowSampler(guidance=2.5, mode="jacobi", jacobi_block=16, jacobi_tol=1e-3, jacobi_max_iters=32,
                            denoise=True, denoise_lr=1.0)  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(
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
        sampler=PAPER_SAMPLER,
        stage1_epochs=10,
        source=SOURCE,
    ),
    # ImageNet 256 (arXiv 2506.06276 appendix B.2, as quoted in issue #12): batch 512, lr 1e-4 cosine to 1e-6,
    # ~400M images = 312 epochs; the release's train.py: AdamW (0.9, 0.95), wd 1e-4, one epoch of warmup, no EMA,
    # bf16; SD-VAE latents x 0.18215 drawn from the posterior every step (utils/model_setup.py:172-173)
    "1.4B": Recipe(
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=1e-4,
        batch_size=512,
        epochs=312,
        lr_schedule="cosine",
        warmup_steps=0,
        warmup_epochs=1.0,
        min_lr=1e-6,
        ema_decay=0.0,
        grad_clip=None,
        label_drop=0.1,
        mixed_precision="bf16",
        posterior="sample",
        hflip=0.5,
        latent_norm="scale",
        sampler=PAPER_SAMPLER,
        source="arXiv 2506.06276 appendix B.2 + apple/ml-starflow train.py; every setting's line: reports/recipes.md",
    ),
}


def protocols(recipe: Recipe) -> dict:
    # a flow's common protocol: its paper sampler
    return {"paper": recipe.sampler, "common": recipe.sampler}


def paper_setups() -> dict[str, tuple[Recipe, dict]]:
    """Paper presets -> (recipe, protocols), what build_backbone uses and `invoke recipes` prints."""
    return {"1.4B": (RECIPES["1.4B"], protocols(RECIPES["1.4B"]))}


DECODERS = ("denoise", "finetuned")

NOTES = {"space": "latent", "guidance_in": "deep block only"}


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    vae_folder: str | Path | None = None,
    noise_std: float = 0.3,
    decoder: str = "denoise",
    finetuned_decoder: str | Path | None = None,
) -> Backbone:
    """tiny: trainable KLTokenizer('tiny-f4') (stage 1 on the embedded suites) + STARFlow on its 8x8x4 latents.
    1.4B: frozen SD-VAE ft-EMA from a local diffusers folder (`vae_folder`).
    decoder: "denoise" (one score-based denoising step on the sampled latents, then the SD-VAE decoder: the
    release's sample.py) or "finetuned" (no denoising step; the decoder of `finetuned_decoder`, a diffusers folder
    whose decoder was fine-tuned on noisy latents, as finetune_decoder.py does and the published FID 2.40 used)."""
    from baselines import autoencoder

    if preset not in PRESETS:
        raise OptionError(f"unknown STARFlow preset {preset!r}; known: {', '.join(PRESETS)}")
    if decoder not in DECODERS:
        raise OptionError(f"unknown STARFlow decoder {decoder!r}; known: {', '.join(DECODERS)}")
    if (decoder == "finetuned") != (finetuned_decoder is not None) or (
        decoder == "finetuned" and preset == "tiny"
    ):
        raise OptionError(
            "STARFlow decoder='finetuned' needs finetuned_decoder=<diffusers folder> and an SD-VAE preset (1.4B)"
        )
    spec = PRESETS[preset]
    if spec["classes"] is None:
        raise OptionError(
            f"STARFlow preset {preset!r} is text-to-image; use StarFlow_models[{preset!r}] for its network "
            "(class-conditional backbones: tiny, 1.4B)"
        )
    K = spec["classes"] if num_classes is None else int(num_classes)
    image_size = spec["image_size"] if image_size is None else int(image_size)
    if preset == "tiny":
        tokenizer = autoencoder.sd_vae_standin("tiny-f4")
    else:
        if vae_folder is None:
            raise OptionError(
                f"STARFlow preset {preset!r} needs vae_folder=<local diffusers stabilityai/sd-vae-ft-ema folder>"
            )
        tokenizer = autoencoder.SDVAETokenizer(vae_folder, decoder_folder=finetuned_decoder)
    C, h, _ = tokenizer.latent_shape(image_size)
    model = StarFlow_models[spec["model"]](in_channels=C, img_size=h, txt_dim=K + 1)
    gen = StarFlowGenerator(model, K, noise_std=noise_std, label_drop=0.1)
    recipe = RECIPES[preset]
    if decoder == "finetuned":  # the fine-tuned decoder takes the noisy latents: no denoising step
        recipe = recipe.replace(sampler={"denoise": False})
    return Backbone(
        name="starflow",
        family="normalizing_flow",
        tokenizer=tokenizer,
        generator=gen,
        recipe=recipe,
        notes={
            **NOTES,
            "noise_std": noise_std,
            "preset": preset,
            "decoder": "SD-VAE decoder after one score denoising step"
            if decoder == "denoise"
            else f"decoder fine-tuned on noisy latents ({finetuned_decoder}), no denoising step (the paper's 2.40)",
        },
        protocols=protocols(recipe),  # fmt: skip
    )
