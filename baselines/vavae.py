"""VA-VAE (Yao et al., CVPR 2025, hustvl/LightningDiT vavae/): the LDM KL autoencoder aligned with a vision
foundation model, and its Tokenizer (the `vavae_lightningdit` backbone is assembled in baselines/backbones/).

VF loss (vavae/ldm/modules/losses/contperceptual.py), with z' = linear_proj(z) [B,D,h,w] (1x1 conv, no bias,
latent -> foundation width; `reverse_proj: true`) and F the foundation patch tokens as a map [B,D,h,w]:
  distmat = mean_{b,i,j} ReLU(|cos(z'_i, z'_j) - cos(F_i, F_j)| - m2)       (m2 = 0.25, diagonal included)
  cos     = mean_{b,i}   ReLU(1 - m1 - cos(z'_i, F_i))                       (m1 = 0.5)
  vf      = distmat + cos
It enters the autoencoder loss with the adaptive weight 0.1 * ||grad nll|| / ||grad vf|| taken on the
ENCODER's last layer `encoder.conv_out.weight`; L1 + LPIPS + KL 1e-6 + PatchGAN (0.5, from step 5001) as LDM
(baselines/losses.py). In training, z is the posterior SAMPLE.

Facts about the official release this file relies on: the learnable `loss.logvar` is not in the optimiser
(it stays 0); the autoencoder and discriminator use Adam (0.5, 0.9) at lr 1e-4; the released latents for
LightningDiT are posterior samples normalised per channel with `latents_stats.pt` ({'mean','std'} [1,C,1,1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.autoencoder import AE_CONFIGS, AETokenizer, AutoencoderKL, _dd
from baselines.losses import VAELoss

# --- model ------------------------------------------------------------------------------------------------


class VAVAE(AutoencoderKL):
    """LDM AutoencoderKL + the VF projection `linear_proj` (official training-class key layout)."""

    def __init__(
        self, ddconfig: dict[str, Any], embed_dim: int, vf_feature_dim: int = 1024, reverse_proj: bool = True
    ):
        super().__init__(ddconfig, embed_dim)
        self.reverse_proj = reverse_proj
        if reverse_proj:  # latent -> foundation width (the released setting)
            self.linear_proj = nn.Conv2d(embed_dim, vf_feature_dim, 1, bias=False)
        else:  # foundation width -> latent (official reverse_proj=False branch)
            self.linear_proj = nn.Conv2d(vf_feature_dim, embed_dim, 1, bias=True)

    def project(self, z: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent [B,E,h,w], features [B,D,h,w]) -> the pair the VF loss compares."""
        return (self.linear_proj(z), aux) if self.reverse_proj else (z, self.linear_proj(aux))


def tokens_to_map(f: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Foundation tokens [B, h*w, D] (row-major, CLS removed) -> [B, D, h, w] as the official wrapper does."""
    b, t, d = f.shape
    if t != h * w:
        raise ValueError(f"{t} feature tokens do not match the {h}x{w} latent grid; the encoder's token grid "
                         "must equal the latent grid (DINOv2 at 224 px gives 16x16 for f16 at 256 px)")  # fmt: skip
    return f.reshape(b, h, w, d).permute(0, 3, 1, 2)


def vf_loss(z: torch.Tensor, aux: torch.Tensor, distmat_margin: float = 0.25, cos_margin: float = 0.5,
            distmat_weight: float = 1.0, cos_weight: float = 1.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Marginal distance-matrix + marginal cosine loss between z [B,D,h,w] and aux [B,D,h,w] (VA-VAE eq. 2-4)."""
    zn = F.normalize(z.flatten(2), dim=1)  # [B,D,T]
    fn = F.normalize(aux.flatten(2), dim=1)
    sz = torch.einsum("bci,bcj->bij", zn, zn)  # [B,T,T] token-token cosine
    sf = torch.einsum("bci,bcj->bij", fn, fn)
    distmat = F.relu((sz - sf).abs() - distmat_margin).mean()
    cos = F.relu(1 - cos_margin - F.cosine_similarity(aux, z, dim=1)).mean()
    return {"vf_loss": distmat_weight * distmat + cos_weight * cos, "vf_distmat": distmat, "vf_cos": cos}


# --- tokenizer --------------------------------------------------------------------------------------------

# name -> (ddconfig, embed_dim). tiny: 32 px -> 8x8x8 (a higher-dimensional latent than tiny-f4, as VA-VAE).
VAVAE_CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "f16d32": AE_CONFIGS["vavae-f16d32"],
    "tiny": (_dd(8, (1, 1, 2), (8,), res_blocks=1, ch=32, resolution=32), 8),
}

# vavae/configs/f16d32_vfdinov2.yaml (lossconfig)
OFFICIAL_LOSS = dict(kl_weight=1e-6, disc_weight=0.5, disc_start=5001, perceptual_weight=1.0, vf_weight=0.1,
                     adaptive_vf=True, distmat_margin=0.25, cos_margin=0.5, distmat_weight=1.0, cos_weight=1.0)  # fmt: skip

# The released tokenizer's budget (vavae/configs/f16d32_vfdinov2_long.yaml:1-9, 74; docs/log.txt:6): 100 epochs
# with vf_weight 0.5 and no margins, 15 with vf_weight 0.1, 15 with the margins 0.25 / 0.5. Phases as
# (end, as a fraction of stage-1 steps; loss overrides). The release restarts each phase from the previous weights
# with a fresh optimiser (weight_init) and disc_start 1; here one run continues (the GAN is already on by then).
LONG_PHASES: tuple[tuple[float, dict[str, float]], ...] = (
    (100 / 130, dict(vf_weight=0.5, distmat_margin=0.0, cos_margin=0.0)),
    (115 / 130, dict(vf_weight=0.1, distmat_margin=0.0, cos_margin=0.0)),
    (1.0, dict(vf_weight=0.1, distmat_margin=0.25, cos_margin=0.5)),
)


class VAVAETokenizer(AETokenizer):
    """The VA-VAE as a Tokenizer. `loss(images, features, step)` is the official generator-side loss plus the
    discriminator's hinge loss in single-scalar form (see baselines/losses.py); `features` are the frozen
    foundation model's patch tokens [B, h*w, D] of the same images."""

    trainable = True
    needs_features = True

    def __init__(self, config: str = "tiny", vf_feature_dim: int = 1024, *, perceptual: str = "auto",
                 vgg_path: str | Path | None = None, disc_ndf: int = 64, disc_layers: int = 3,
                 phases: tuple[tuple[float, dict[str, float]], ...] | None = None,
                 **loss_overrides: Any):  # fmt: skip
        super().__init__()
        if config not in VAVAE_CONFIGS:
            raise ValueError(f"unknown VA-VAE config {config!r}; known: {', '.join(VAVAE_CONFIGS)}")
        unknown = sorted(set(loss_overrides) - set(OFFICIAL_LOSS))
        unknown += sorted(
            {k for _, o in (phases or ()) for k in o} - {"vf_weight", "distmat_margin", "cos_margin"}
        )
        if unknown:
            raise ValueError(f"unknown VA-VAE loss option(s) {unknown}; known: {sorted(OFFICIAL_LOSS)}")
        if phases and (phases[-1][0] != 1.0 or any(a[0] >= b[0] for a, b in zip(phases, phases[1:]))):
            raise ValueError(f"VA-VAE phases must end at increasing fractions, the last at 1.0; got {phases}")
        self.phases = tuple(phases or ())
        dd, embed_dim = VAVAE_CONFIGS[config]
        self.ae = VAVAE(dd, embed_dim, vf_feature_dim)
        self.hp = {**OFFICIAL_LOSS, **loss_overrides}
        self.loss_fn = VAELoss(
            kl_weight=self.hp["kl_weight"], perceptual_weight=self.hp["perceptual_weight"],
            disc_weight=self.hp["disc_weight"], disc_start=self.hp["disc_start"], perceptual=perceptual,
            vgg_path=vgg_path, disc_ndf=disc_ndf, disc_layers=disc_layers,
        )  # fmt: skip

    def hp_at(self, step: int) -> dict[str, Any]:
        """Loss hyper-parameters at stage-1 step `step` (of `total_steps`): the phase's overrides, if any."""
        if not self.phases:
            return self.hp
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(
                f"set tokenizer.total_steps (a positive int) before a phased stage 1; got {self.total_steps!r}"
            )
        frac = step / self.total_steps
        overrides = next((o for end, o in self.phases if frac < end), self.phases[-1][1])
        return {**self.hp, **overrides}

    # stage 1
    def loss(self, images, features=None, step: int = 0, generator: torch.Generator | None = None):
        if features is None:
            raise ValueError(
                "VA-VAE training needs the frozen foundation model's features (Backbone.encoder)"
            )
        hp = self.hp_at(step)
        posterior = self.ae.encode(images)
        z = posterior.sample(generator)  # [B,E,h,w]
        rec = self.ae.decode(z)
        zp, aux = self.ae.project(z, tokens_to_map(features.to(z.dtype), z.shape[2], z.shape[3]))
        vf = vf_loss(zp, aux, hp["distmat_margin"], hp["cos_margin"], hp["distmat_weight"], hp["cos_weight"])
        out = self.loss_fn(
            images, rec, posterior, step, last_layer=self.ae.decoder.conv_out.weight, vf_loss=vf["vf_loss"],
            vf_weight=hp["vf_weight"], enc_last_layer=self.ae.encoder.conv_out.weight,
            adaptive_vf=hp["adaptive_vf"],
        )  # fmt: skip
        out.update(vf_distmat=vf["vf_distmat"].detach(), vf_cos=vf["vf_cos"].detach())
        return out

    # official files
    def load_official(self, ckpt: str | Path, stats: str | Path | None = None) -> None:
        """Load the released VA-VAE checkpoint (LDM keys, e.g. vavae-imagenet256-f16d32-dinov2.pt) and, if
        given, `latents_stats.pt` ({'mean','std'} [1,C,1,1]) into latent_mean/latent_std."""
        self.ae.load_state_dict(load_vavae_state_dict(ckpt, self.ae), strict=True)
        if stats is not None:
            s = _load(
                stats, "the latents_stats.pt of the LightningDiT release (or your own latent statistics)"
            )
            self.latent_mean = s["mean"].flatten().float()
            self.latent_std = s["std"].flatten().float()


def _load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    from bench.checkpoints import load_weights
    from bench.errors import MissingInputError

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found; download {what} and pass its local path")
    return load_weights(path, what)  # safetensors or weights_only: never runs pickled code


def load_vavae_state_dict(ckpt: str | Path, model: VAVAE) -> dict[str, torch.Tensor]:
    """The autoencoder part of an official VA-VAE checkpoint: `state_dict` of a training checkpoint without
    the `loss.*` (LPIPS, discriminator) and `foundation_model.*` (DINOv2) keys. A checkpoint without
    `linear_proj.weight` (inference-only) keeps the model's own projection; every other key must match."""
    sd = _load(
        ckpt,
        "the VA-VAE checkpoint (hustvl/vavae-imagenet256-f16d32-dinov2, file vavae-imagenet256-f16d32-dinov2.pt)",
    )
    sd = sd.get("state_dict", sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(("loss.", "foundation_model."))}
    if "linear_proj.weight" not in sd:
        sd["linear_proj.weight"] = model.linear_proj.weight.detach().clone()
        if not model.reverse_proj:
            sd["linear_proj.bias"] = model.linear_proj.bias.detach().clone()
    return sd
