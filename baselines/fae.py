"""FAE: Feature Auto-Encoder ("One Layer Is Enough: Adapting Pretrained Visual Encoders for Image Generation",
Gao, Chen, Chen, Gu; Apple; arXiv 2512.07829). No official code is public: this module is built from the paper.

Pipeline (paper size): image 256 px -> frozen DINOv2-g/14 at 224 px -> patch features x [B, 16*16, 1536]
  -> encoder: ONE self-attention layer (24 heads x 256) + a linear projection to mean / log-variance
     of a 16x16x32 latent z (the generator's space; 48 / 64 channels for the ablation)
  -> feature decoder: 6-layer transformer (width 1536, 24 heads x 64, RoPE, RMSNorm, SwiGLU) -> x_hat ~ x
     trained with ||x_hat - x||^2 + beta * KL
  -> pixel decoder: a ViT-L-like transformer (24 x 1024, 16 heads) mapping features to pixels (patch 16), trained
     first on noisy frozen features (x + 0.4 eps) and then on the feature decoder's outputs, with reconstruction,
     perceptual and GAN losses.
Generation: LightningDiT-XL/1 (or SiT-XL) on the 16x16x32 latent, linear interpolant, v-prediction, unweighted
loss (baselines/transport.py, t = 1 noise); the paper's w_t = sigma_t is the SDE's diffusion coefficient.

Parameter counts at paper size (paper's table -> ours; `param_counts()` prints them; tests check them):
- encoder 38.17M -> 37.87M (-0.79%): pre-RMSNorm(1536) + attention whose q, k, v project 1536 -> 6144
  (= 24 heads x 256, with bias) and whose output projects 6144 -> 1536 (with bias), a residual connection, then
  Linear(1536 -> 2 x 32). "Hidden 6144" read as the attention's inner width. The paper's remaining 0.30M is not
  identified: a 14x14 position table at width 1536 (196 x 1536 = 301,056) would close it exactly; a 16x16 one
  (393,216, the decoder's convention) would overshoot to 38.26M (+0.24%). We add no position table: the frozen
  features already carry position, and a sin-cos table of unit amplitude would swamp small stand-in features.
- feature decoder 170.43M -> 170.43M (exact to 10 kParams): Linear(32 -> 1536) + fixed 2D sin-cos table
  (256 x 1536, a non-trainable Parameter counted as DiT/LightningDiT count theirs) + 6 pre-norm blocks
  [RMSNorm, attention 24 x 64 with qkv bias + 2D axial RoPE, RMSNorm, SwiGLU hidden int(2/3 * 4 * 1536) = 4096
  with biases (LightningDiT's `w12` / `w3` layout)] + final RMSNorm; no output projection (width = feature width).
- pixel decoder 305.36M -> 304.93M (-0.14%): Linear(1536 -> 1024) + fixed sin-cos table (256 x 1024) + 24 ViT-L
  blocks (LayerNorm, qkv bias, GELU MLP 4096) + LayerNorm + Linear(1024 -> 16*16*3) + unpatchify. The
  remaining 0.43M is not identified (e.g. a CLS / mask token or a small conv head).

Choices the paper leaves open (also in `Backbone.notes`):
- losses are per-element means: feat_l2 = mean (x_hat - x)^2; kl = mean over latent elements of
  0.5 (mu^2 + var - 1 - log var); beta = `kl_weight` (1e-6 paper preset, our pick; the value is not in the text
  we could read); log-variance clamped to [-30, 20] (LDM's DiagonalGaussian);
- the feature decoder is trained on posterior samples z = mu + sigma eps; `encode` returns the posterior mean;
- the pixel decoder's stage 2 input is the feature decoder's output for a posterior sample (detached); the
  encoder and the feature decoder are frozen during that stage (their loss terms are dropped, so their grads are
  None and the optimiser leaves them alone);
- pixel losses: L1 + perceptual (LPIPS-VGG from a local file, else the seeded random-feature stand-in of
  baselines/losses.py; `notes["perceptual"]` says which) + PatchGAN hinge loss with LDM's adaptive weight on the
  pixel decoder's last layer; weights 1.0 / 0.5 as LDM; the discriminator starts at `disc_start` (fraction of
  stage-1 steps) and is trained by the same scalar (generator term sees detached discriminator parameters);
- noise sigma 0.4 is absolute (DINOv2-g features are LayerNorm outputs); the tiny preset scales it to the
  stand-in features' RMS (0.17 x 0.4 ~ 0.07) and drops the feature decoder's final RMSNorm, because stand-in
  tokens are not layer-normalised (token RMS 0.02-0.47) and a final per-token norm could not fit them;
- stage-1 split: the first `stage_split` (0.5) of the steps train encoder + feature decoder and the pixel
  decoder on noisy frozen features (independent parameter sets, so one summed loss = two separate trainings);
  the rest fine-tunes the pixel decoder on reconstructed features; GAN from `disc_start` = 25% of the steps;
- generator recipe beyond the paper's numbers: AdamW (0.9, 0.999), EMA 0.9999, no grad clip, bf16;
- the time shift 0.4 is read in LightningDiT's form (t = 0 noise, t' = s t / (1 + (s - 1) t), the generator the
  paper builds on, whose own value is 0.3 on the same 16x16x32 latent size): in the common t = 1-noise
  convention that is `transport.shift_time` with 1 / 0.4 = 2.5, which spends more steps near noise, as
  high-dimensional latents want (baselines/vavae.py reads 0.3 the same way). The guidance intervals are taken
  as stated with t = 1 noise.
- tiny preset (CPU, a stage 1 of ~100 steps): GAN weight 0.1 from 75% of the steps and stage split 0.6 (with
  LDM's 0.5 from 25%, 96 steps ended at pixel L1 0.29 vs 0.17 without GAN); perceptual and GAN terms on the
  first 16 images of a batch (`aux_batch`), which keeps a batch-64 step near 0.15-0.2 s of one CPU core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.api import Tokenizer
from baselines.layers import Attention, Mlp, SwiGLUFFN, axial_rope_2d, get_2d_sincos_pos_embed, unpatchify
from bench.errors import OptionError

# --- primitives -------------------------------------------------------------------------------------------


def rope_2d(head_dim: int, grid: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """FAE's axial 2D RoPE tables (EVA / LightningDiT layout), computed in float64 on integer positions."""
    return axial_rope_2d(head_dim, grid, theta, torch.float64, scaled=False)


class Block(nn.Module):
    """Pre-norm transformer block. kind "rms_swiglu" (feature decoder) or "ln_gelu" (ViT-L pixel decoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, kind: str = "rms_swiglu"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if kind == "rms_swiglu":
            self.norm1, self.norm2 = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
            self.mlp = SwiGLUFFN(dim, int(2 / 3 * mlp_ratio * dim))
        elif kind == "ln_gelu":
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, int(mlp_ratio * dim), approximate="none")  # timm ViT: exact GELU
        else:
            raise ValueError(f"unknown block kind {kind!r}")
        self.attn = Attention(dim, num_heads, dim // num_heads, cast_rope=True)

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


def _sincos_table(width: int, grid: int) -> nn.Parameter:
    """Fixed 2D sin-cos table [1, grid*grid, width] as a non-trainable Parameter (DiT / MAE convention)."""
    p = nn.Parameter(torch.zeros(1, grid * grid, width), requires_grad=False)
    if p.device.type != "meta":
        p.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(width, grid)).float()[None])
    return p


def _init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --- the three FAE parts ----------------------------------------------------------------------------------


class FeatureEncoder(nn.Module):
    """The single attention layer: x [B, T, D] -> (mean, logvar) [B, T, C]. x + Attn(RMSNorm(x)), then a
    linear projection to 2C channels."""

    def __init__(self, feature_dim: int, latent_dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.norm = nn.RMSNorm(feature_dim, eps=1e-6)
        self.attn = Attention(feature_dim, num_heads, head_dim, cast_rope=True)
        self.proj = nn.Linear(feature_dim, 2 * latent_dim)
        _init_linears(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn(self.norm(x))  # [B, T, D]
        mean, logvar = self.proj(x).chunk(2, dim=-1)  # [B, T, C] each
        return mean, logvar.clamp(-30.0, 20.0)


class FeatureDecoder(nn.Module):
    """Latent tokens z [B, T, C] -> reconstructed encoder features [B, T, D] (RoPE + RMSNorm + SwiGLU blocks)."""

    def __init__(self, latent_dim: int, feature_dim: int, grid: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, final_norm: bool = True):  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(latent_dim, width)
        self.pos_embed = _sincos_table(width, grid)
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, "rms_swiglu") for _ in range(depth)])
        self.norm = nn.RMSNorm(width, eps=1e-6) if final_norm else nn.Identity()
        self.out = nn.Identity() if width == feature_dim else nn.Linear(width, feature_dim)
        cos, sin = rope_2d(width // num_heads, grid)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        _init_linears(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.embed(z) + self.pos_embed  # [B, T, W]
        for block in self.blocks:
            x = block(x, (self.rope_cos, self.rope_sin))
        return self.out(self.norm(x))  # [B, T, D]


class PixelDecoder(nn.Module):
    """Encoder features [B, T, D] -> images [B, 3, grid*p, grid*p] (ViT-L-like, patch p, unpatchified)."""

    def __init__(self, feature_dim: int, grid: int, width: int, depth: int, num_heads: int, patch_size: int,
                 mlp_ratio: float = 4.0):  # fmt: skip
        super().__init__()
        self.patch_size = patch_size
        self.embed = nn.Linear(feature_dim, width)
        self.pos_embed = _sincos_table(width, grid)
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio, "ln_gelu") for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, patch_size * patch_size * 3)
        _init_linears(self)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.embed(f) + self.pos_embed  # [B, T, W]
        for block in self.blocks:
            x = block(x)
        return unpatchify(self.head(self.norm(x)), self.patch_size, 3)  # [B, 3, H, W]


# --- config and presets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FAEConfig:
    feature_dim: int = 1536  # frozen encoder width (DINOv2-g/14)
    grid: int = 16  # token grid of the frozen encoder (224 px / 14)
    latent_dim: int = 32  # 32 default; 48 and 64 in the paper's ablation
    enc_heads: int = 24
    enc_head_dim: int = 256  # 24 x 256 = 6144 inner width
    dec_width: int = 1536
    dec_depth: int = 6
    dec_heads: int = 24
    dec_mlp_ratio: float = 4.0
    dec_final_norm: bool = True
    pix_width: int = 1024
    pix_depth: int = 24
    pix_heads: int = 16
    pix_mlp_ratio: float = 4.0
    patch_size: int = 16  # pixels per token side: image size = grid * patch_size
    # stage 1
    kl_weight: float = 1e-6  # beta
    pixel_noise_sigma: float = 0.4  # noise on frozen features for the pixel decoder's first stage
    stage_split: float = 0.5  # fraction of stage-1 steps before the pixel decoder sees reconstructions
    perceptual_weight: float = 1.0
    perceptual: str = "auto"  # baselines.losses.PerceptualLoss kind
    disc_weight: float = 0.5  # 0 disables the GAN
    disc_start: float = 0.25  # fraction of stage-1 steps after which the GAN term is on
    disc_ndf: int = 64
    disc_layers: int = 3
    aux_batch: int | None = None  # perceptual + GAN terms on the first `aux_batch` images only (None: all)

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> FAEConfig:
        if preset not in FAE_configs:
            raise OptionError(f"unknown FAE preset {preset!r}; known: {', '.join(FAE_configs)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise OptionError(
                f"unknown FAE option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        cfg = dataclasses.replace(FAE_configs[preset], **overrides)
        if cfg.latent_dim < 1 or not 0.0 < cfg.stage_split <= 1.0:
            raise ValueError(f"bad FAE config: latent_dim={cfg.latent_dim}, stage_split={cfg.stage_split}")
        return cfg


# --- tokenizer --------------------------------------------------------------------------------------------


class FAETokenizer(Tokenizer):
    """Frozen-encoder features <-> FAE latent [B, C, grid, grid] -> images. `loss` runs the staged stage 1."""

    trainable = True
    needs_features = True

    def __init__(self, config: FAEConfig):
        super().__init__()
        c = self.config = config
        self.encoder = FeatureEncoder(c.feature_dim, c.latent_dim, c.enc_heads, c.enc_head_dim)
        self.feature_decoder = FeatureDecoder(c.latent_dim, c.feature_dim, c.grid, c.dec_width, c.dec_depth,
                                              c.dec_heads, c.dec_mlp_ratio, c.dec_final_norm)  # fmt: skip
        self.pixel_decoder = PixelDecoder(
            c.feature_dim, c.grid, c.pix_width, c.pix_depth, c.pix_heads, c.patch_size, c.pix_mlp_ratio
        )
        self.discriminator = None
        if c.disc_weight > 0:
            from baselines.losses import NLayerDiscriminator

            self.discriminator = NLayerDiscriminator(3, c.disc_ndf, c.disc_layers)
        # built on first use and kept out of state_dict: frozen, and its weights come from a local file
        self._perceptual: tuple[nn.Module, ...] = ()

    # --- api ------------------------------------------------------------------------------------------
    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        if image_size != self.config.image_size:
            raise ValueError(f"FAE preset decodes {self.config.image_size} px images (grid {self.config.grid} x patch "
                             f"{self.config.patch_size}), got image_size={image_size}")  # fmt: skip
        return (self.config.latent_dim, self.config.grid, self.config.grid)

    def _check_features(self, features: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if features is None:
            raise ValueError("FAE encodes frozen-encoder features: pass features=backbone.features(images)")
        if features.ndim != 3 or features.shape[1:] != (c.grid * c.grid, c.feature_dim):
            want = f"[B, {c.grid * c.grid}, {c.feature_dim}]"
            raise ValueError(f"FAE expects features {want}, got {tuple(features.shape)}")
        return features.float()

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, D] -> (mean, logvar) [B, T, C]."""
        return self.encoder(self._check_features(features))

    def encode(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(images unused) + frozen features [B, T, D] -> posterior mean [B, C, grid, grid]."""
        mean, _ = self.posterior(features)
        g = self.config.grid
        return mean.transpose(1, 2).reshape(mean.shape[0], -1, g, g)

    def decode_features(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, grid, grid] -> reconstructed encoder features [B, T, D]."""
        return self.feature_decoder(latents.flatten(2).transpose(1, 2))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pixel_decoder(self.decode_features(latents))  # [B, 3, H, W]

    # --- stage 1 --------------------------------------------------------------------------------------
    def perceptual_loss(self) -> nn.Module | None:
        if self.config.perceptual_weight <= 0:
            return None
        if not self._perceptual:
            from baselines.losses import PerceptualLoss

            self._perceptual = (PerceptualLoss(self.config.perceptual),)
        return self._perceptual[0]

    def stage_boundaries(self) -> tuple[int, int]:
        """(first step of the pixel decoder's stage 2, first step with the GAN term on)."""
        n = self.total_steps
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"set tokenizer.total_steps (a positive int) before stage 1; got {n!r}")
        return int(round(self.config.stage_split * n)), int(round(self.config.disc_start * n))

    def _pixel_losses(self, images: torch.Tensor, rec: torch.Tensor, gan_on: bool) -> dict[str, torch.Tensor]:
        from baselines.losses import adaptive_weight, hinge_d_loss

        c = self.config
        out = {"pix_rec": (rec - images).abs().mean()}
        nll = out["pix_rec"]
        if c.aux_batch is not None:  # CPU presets: the costly terms on a sub-batch (unbiased, noisier)
            images, rec = images[: c.aux_batch], rec[: c.aux_batch]
        perceptual = self.perceptual_loss()
        if perceptual is not None:
            perceptual.to(images.device)
            out["perceptual"] = perceptual(images, rec).mean()
            nll = nll + c.perceptual_weight * out["perceptual"]
        loss = nll
        if self.discriminator is not None and gan_on:
            # generator term: detached discriminator parameters, so it only trains the pixel decoder
            params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            params.update(dict(self.discriminator.named_buffers()))
            g_loss = -torch.func.functional_call(self.discriminator, params, (rec,)).mean()
            d_weight = c.disc_weight * adaptive_weight(nll, g_loss, self.pixel_decoder.head.weight, 1e4)
            # discriminator term: detached images, so it only trains the discriminator
            d_loss = hinge_d_loss(self.discriminator(images.detach()), self.discriminator(rec.detach()))
            loss = loss + d_weight * g_loss + d_loss
            out.update(gan_g=g_loss.detach(), gan_d=d_loss.detach(), d_weight=d_weight.detach())
        out["pix_loss"] = loss
        return out

    def loss(self, images: torch.Tensor, features: torch.Tensor | None = None, step: int = 0) -> dict:
        """Staged stage-1 loss at step `step` of `total_steps` (see the module docstring)."""
        c = self.config
        split, disc_start = self.stage_boundaries()
        x = self._check_features(features)
        first = step < split
        with torch.set_grad_enabled(first and torch.is_grad_enabled()):
            mean, logvar = self.encoder(x)  # [B, T, C]
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            x_hat = self.feature_decoder(z)  # [B, T, D]
            feat_l2 = (x_hat - x).pow(2).mean()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        if first:  # stage 1 of the pixel decoder: noisy frozen features
            pix_in = x + c.pixel_noise_sigma * torch.randn_like(x)
        else:  # stage 2: the feature decoder's reconstruction (encoder and feature decoder frozen)
            pix_in = x_hat.detach()
        pix = self._pixel_losses(images, self.pixel_decoder(pix_in), gan_on=step >= disc_start)
        loss = pix.pop("pix_loss") + (feat_l2 + c.kl_weight * kl if first else 0.0)
        out = {
            "loss": loss,
            "feat_l2": feat_l2.detach(),
            "kl": kl.detach(),
            "post_std": torch.exp(0.5 * logvar).mean().detach(),
        }
        out.update({k: v.detach() for k, v in pix.items()})
        out["stage"] = torch.tensor(1.0 if first else 2.0)
        return out


def param_counts(config: FAEConfig | None = None) -> dict[str, int]:
    """Parameters of each FAE part (built on the meta device: no memory). Non-trainable sin-cos tables count."""
    config = config or FAE_configs["paper"]
    with torch.device("meta"):
        tok = FAETokenizer(dataclasses.replace(config, disc_weight=0.0))
    n = lambda m: sum(p.numel() for p in m.parameters())
    return {
        "encoder": n(tok.encoder),
        "feature_decoder": n(tok.feature_decoder),
        "pixel_decoder": n(tok.pixel_decoder),
    }


PAPER_PARAMS = {"encoder": 38.17e6, "feature_decoder": 170.43e6, "pixel_decoder": 305.36e6}  # paper's table

# CPU preset of the embedded suites: 32 px crops, stand-in encoder 4x4x64 (f8, as the paper's f16 is twice
# REPA's f8: the generator then sees 16 tokens, as REPA's tiny SiT does), latent 4x4x16, pixel patch 8.
_TINY = FAEConfig(
    feature_dim=64, grid=4, latent_dim=16, enc_heads=4, enc_head_dim=32,
    dec_width=64, dec_depth=2, dec_heads=4, dec_final_norm=False,
    pix_width=96, pix_depth=2, pix_heads=4, patch_size=8,
    kl_weight=1e-6, pixel_noise_sigma=0.07, stage_split=0.6, disc_weight=0.1, disc_start=0.75, disc_ndf=16,
    disc_layers=2, aux_batch=16,
)  # fmt: skip
FAE_configs: dict[str, FAEConfig] = {"paper": FAEConfig(), "tiny": _TINY}
