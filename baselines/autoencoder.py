"""LDM KL autoencoder (SD-VAE, VA-VAE) with the official LDM state_dict layout, plus two tokenizers.

Architecture of CompVis/latent-diffusion `ldm/modules/diffusionmodules/model.py` (Encoder/Decoder) and
`ldm/models/autoencoder.py` (AutoencoderKL); the VA-VAE of hustvl/LightningDiT is the same network. Keys:
`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`. Facts the numbers depend on:
- GroupNorm(32 groups, eps 1e-6) everywhere, swish non-linearity, no time embedding;
- Downsample pads right/bottom by one pixel, then a 3x3 stride-2 conv without padding;
- attention is single-head over all positions with scale C^-1/2;
- `decoder.up.<i>` is indexed by level (0 = highest resolution) but executed from the last index down;
- attention placement follows `ddconfig["resolution"]` (the training resolution), not the input size.

`load_diffusers_vae(folder)` converts a local diffusers folder (e.g. stabilityai/sd-vae-ft-ema) to these keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.api import Tokenizer

# --- primitives -------------------------------------------------------------------------------------------


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions (1x1 conv projections)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (
            m(hn).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v)
        )  # [B,1,HW,C]
        out = F.scaled_dot_product_attention(q, k, v)  # scale C^-1/2, softmax over keys
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level; attribute names give the official keys (block.<j>, attn.<j>, down/upsample)."""

    def __init__(self, channels: list[tuple[int, int]], attn: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(i, o, dropout) for i, o in channels])
        self.attn = nn.ModuleList([AttnBlock(o) for _, o in channels] if attn else [])

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


# --- encoder / decoder ------------------------------------------------------------------------------------

_DDCONFIG_KEYS = {
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
}


def _check_ddconfig(dd: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(dd) - _DDCONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown ddconfig key(s) {unknown}; known: {sorted(_DDCONFIG_KEYS)}")
    dd = {"double_z": True, "dropout": 0.0, "in_channels": 3, "out_ch": 3, **dd}
    for c in [dd["ch"] * m for m in dd["ch_mult"]]:
        if c % 32:
            raise ValueError(
                f"channel count {c} (ch * ch_mult) is not a multiple of 32 (GroupNorm uses 32 groups)"
            )
    return dd


class Encoder(nn.Module):
    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                 double_z=True, dropout=0.0, out_ch=3):  # fmt: skip
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        res, levels = resolution, []
        for i, mult in enumerate(ch_mult):
            c_in, c_out = ch * in_ch_mult[i], ch * mult
            chans = [(c_in if j == 0 else c_out, c_out) for j in range(num_res_blocks)]
            level = _Level(chans, res in attn_resolutions, dropout)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            levels.append(level)
        self.down = nn.ModuleList(levels)
        c = ch * ch_mult[-1]
        self.mid = _Mid(c, dropout)
        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B,ch,H,W]
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))  # [B,2z,H/f,W/f]


class Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels,
                 dropout=0.0, in_channels=3, double_z=True):  # fmt: skip
        super().__init__()
        c = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = _Mid(c, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[i]
            chans = [(c if j == 0 else c_out, c_out) for j in range(num_res_blocks + 1)]
            level = _Level(chans, res in attn_resolutions, dropout)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.insert(0, level)  # up.<i> = level i (0 = highest resolution)
            c = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B,C,h,w]
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # [B,3,H,W], no tanh


# --- posterior and autoencoder ----------------------------------------------------------------------------


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from moments [B, 2C, h, w]; logvar clamped to [-30, 20] as in LDM."""

    def __init__(self, moments: torch.Tensor):
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample [B], summed over latent elements (LDM convention)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    def __init__(self, ddconfig: dict[str, Any], embed_dim: int):
        super().__init__()
        dd = _check_ddconfig(dict(ddconfig))
        if not dd["double_z"]:
            raise ValueError("AutoencoderKL needs double_z=True (mean and log-variance)")
        self.ddconfig, self.embed_dim = dd, embed_dim
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quant_conv = nn.Conv2d(2 * dd["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, dd["z_channels"], 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments [B,2E,H/f,W/f]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # [B,3,H,W]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


def _dd(z: int, ch_mult, attn, res_blocks: int = 2, ch: int = 128, resolution: int = 256) -> dict[str, Any]:
    return dict(double_z=True, z_channels=z, resolution=resolution, in_channels=3, out_ch=3, ch=ch,
                ch_mult=list(ch_mult), num_res_blocks=res_blocks, attn_resolutions=list(attn), dropout=0.0)  # fmt: skip


# name -> (ddconfig, embed_dim).
# sd-vae-f8: SD-VAE (ft-EMA / ft-MSE), f8, 4 channels, attention in the mid blocks only.
# vavae-f16d32: VA-VAE (vavae/configs/f16d32_vfdinov2.yaml), f16, 32 channels, attention at 16x16.
# tiny-f4: the CPU suites, 32 px -> 8x8x4 (attention at the lowest level, as VA-VAE).
AE_CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "sd-vae-f8": (_dd(4, (1, 2, 4, 4), ()), 4),
    "vavae-f16d32": (_dd(32, (1, 1, 2, 2, 4), (16,)), 32),
    "tiny-f4": (_dd(4, (1, 1, 2), (8,), res_blocks=1, ch=32, resolution=32), 4),
}


def build_autoencoder(name: str) -> AutoencoderKL:
    if name not in AE_CONFIGS:
        raise ValueError(f"unknown autoencoder config {name!r}; known: {', '.join(AE_CONFIGS)}")
    dd, embed_dim = AE_CONFIGS[name]
    return AutoencoderKL(dd, embed_dim)


# The weights path that means "build the architecture with random weights": speed does not depend on weight
# values, so the throughput suite measures paper-size models without their files.
RANDOM_WEIGHTS = "random"

# --- diffusers checkpoints --------------------------------------------------------------------------------

_HOW_TO_GET = (
    "download the diffusers VAE folder once (e.g. the files config.json and diffusion_pytorch_model.safetensors "
    "of https://huggingface.co/stabilityai/sd-vae-ft-ema) and pass its local path"
)


def _diffusers_ddconfig(cfg: dict[str, Any]) -> tuple[dict[str, Any], int]:
    chans = list(cfg["block_out_channels"])
    ch = chans[0]
    if any(c % ch for c in chans):
        raise ValueError(f"block_out_channels {chans} are not multiples of the first one")
    if cfg.get("norm_num_groups", 32) != 32 or cfg.get("act_fn", "silu") != "silu":
        raise ValueError("only norm_num_groups=32 and act_fn='silu' (the LDM architecture) are supported")
    if not cfg.get("use_quant_conv", True) or not cfg.get("use_post_quant_conv", True):
        raise ValueError("VAEs without quant_conv/post_quant_conv are not LDM AutoencoderKLs")
    if not cfg.get("mid_block_add_attention", True):
        raise ValueError("VAEs without mid-block attention are not LDM AutoencoderKLs")
    resolution = int(
        cfg.get("sample_size", 256) if not isinstance(cfg.get("sample_size"), list) else cfg["sample_size"][0]
    )
    attn = [resolution // 2**i for i, t in enumerate(cfg.get("down_block_types", [])) if t.startswith("Attn")]
    dd = _dd(
        int(cfg["latent_channels"]),
        [c // ch for c in chans],
        attn,
        int(cfg["layers_per_block"]),
        ch,
        resolution,
    )
    dd["in_channels"], dd["out_ch"] = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    return dd, int(cfg["latent_channels"])


def diffusers_to_ldm(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Rename diffusers AutoencoderKL keys to LDM keys (attention Linear weights become 1x1 convs)."""
    out: dict[str, torch.Tensor] = {}
    attn_names = {
        "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
        "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
    }  # fmt: skip
    for key, v in sd.items():
        parts = key.split(".")
        side, rest = parts[0], parts[1:]
        new: list[str] | None = None
        if rest[0] in ("conv_in", "conv_out"):
            new = rest
        elif rest[0] == "conv_norm_out":
            new = ["norm_out"] + rest[1:]
        elif rest[0] in ("down_blocks", "up_blocks"):
            i = int(rest[1])
            level = i if rest[0] == "down_blocks" else num_levels - 1 - i
            top = "down" if rest[0] == "down_blocks" else "up"
            kind, tail = rest[2], rest[3:]
            if kind == "resnets":
                new = [top, str(level), "block", tail[0]] + tail[1:]
            elif kind == "attentions":
                new = [top, str(level), "attn", tail[0]] + tail[1:]
            elif kind in ("downsamplers", "upsamplers"):
                new = [top, str(level), "downsample" if kind == "downsamplers" else "upsample"] + tail[1:]
        elif rest[0] == "mid_block":
            kind, j, tail = rest[1], int(rest[2]), rest[3:]
            new = ["mid", f"block_{j + 1}"] + tail if kind == "resnets" else ["mid", "attn_1"] + tail
        elif side in ("quant_conv", "post_quant_conv"):
            out[key] = v
            continue
        if new is None:
            raise ValueError(f"unexpected diffusers VAE key {key!r}")
        name = ".".join([side] + new).replace("conv_shortcut", "nin_shortcut")
        if ".attn" in name:
            for d_name, l_name in attn_names.items():
                name = name.replace(f".{d_name}.", f".{l_name}.")
            if v.ndim == 2:  # Linear -> 1x1 conv
                v = v[:, :, None, None]
        out[name] = v
    return out


def load_diffusers_vae(folder: str | Path) -> AutoencoderKL:
    """Build an AutoencoderKL from a LOCAL diffusers folder (config.json + weights) and load it strictly."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"diffusers VAE config not found: {cfg_path}; {_HOW_TO_GET}")
    cfg = json.loads(cfg_path.read_text())
    st, binf = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    if st.is_file() or binf.is_file():
        from bench.checkpoints import load_weights  # safetensors or weights_only: never runs pickled code

        sd = load_weights(st if st.is_file() else binf, "diffusers VAE weights")
    else:
        raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors or .bin in {folder}; {_HOW_TO_GET}")
    dd, embed_dim = _diffusers_ddconfig(cfg)
    model = AutoencoderKL(dd, embed_dim)
    model.load_state_dict(diffusers_to_ldm(sd, len(dd["ch_mult"])), strict=True)
    model.scaling_factor = float(cfg.get("scaling_factor", 0.18215))
    return model


# --- tokenizers -------------------------------------------------------------------------------------------


class AETokenizer(Tokenizer):
    """Shared image <-> latent plumbing around an AutoencoderKL stored as `self.ae`."""

    ae: AutoencoderKL

    def encode(self, images, features=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> raw latents [B,E,H/f,W/f]: posterior mean, or a sample with `generator`."""
        posterior = self.ae.encode(images)
        return posterior.mean if generator is None else posterior.sample(generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latents)

    def latent_shape(self, image_size: int) -> tuple[int, ...]:
        f = self.ae.downsample_factor
        if image_size % f:
            raise ValueError(f"image size {image_size} is not divisible by the downsampling factor {f}")
        return (self.ae.embed_dim, image_size // f, image_size // f)


class SDVAETokenizer(AETokenizer):
    """Frozen SD-VAE from a local diffusers folder; latents scaled by the folder's scaling_factor (0.18215).

    `decoder_folder` decodes with another SD-VAE's decoder (same architecture): REPA trains on sd-vae-ft-MSE
    latents (sihyun-yu/REPA train.py:176) but its FID samples decode with sd-vae-ft-EMA (generate.py:88, 193)."""

    trainable = False

    def __init__(self, folder: str | Path, decoder_folder: str | Path | None = None):
        super().__init__()
        if str(folder) == RANDOM_WEIGHTS:  # throughput on paper shapes (bench/throughput.py): no weights file
            self.ae = build_autoencoder("sd-vae-f8")
            self.ae.scaling_factor = 0.18215
        else:
            self.ae = load_diffusers_vae(folder)
        if decoder_folder is not None and str(decoder_folder) != RANDOM_WEIGHTS:
            other = load_diffusers_vae(decoder_folder)
            self.ae.decoder.load_state_dict(other.decoder.state_dict(), strict=True)
            self.ae.post_quant_conv.load_state_dict(other.post_quant_conv.state_dict(), strict=True)
        self.decoder_folder = None if decoder_folder is None else str(decoder_folder)
        self.ae.requires_grad_(False).eval()
        self.latent_scale = self.ae.scaling_factor

    def train(self, mode: bool = True):  # stays frozen in eval mode
        super().train(mode)
        self.ae.eval()
        return self


class KLTokenizer(AETokenizer):
    """A trainable LDM KL autoencoder (stage 1): L1 (+ perceptual, + PatchGAN) reconstruction + kl_weight * KL.

    Loss scale follows LDM's LPIPSWithDiscriminator: reconstruction and KL are summed per image and averaged
    over the batch, so kl_weight keeps its published meaning (1e-6)."""

    trainable = True

    def __init__(self, ddconfig_name: str = "tiny-f4", kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
                 disc_weight: float = 0.0, disc_start: int = 0, perceptual: str = "auto"):  # fmt: skip
        super().__init__()
        self.ae = build_autoencoder(ddconfig_name)
        from baselines.losses import VAELoss

        self.loss_fn = VAELoss(
            kl_weight=kl_weight, perceptual_weight=perceptual_weight, disc_weight=disc_weight,
            disc_start=disc_start, perceptual=perceptual,
        )  # fmt: skip

    def loss(self, images, features=None, step: int = 0, generator: torch.Generator | None = None):
        posterior = self.ae.encode(images)
        rec = self.ae.decode(posterior.sample(generator))
        return self.loss_fn(images, rec, posterior, step=step, last_layer=self.ae.decoder.conv_out.weight)


# Stand-ins start from a nearly deterministic posterior (std e^-4 = 0.018, the regime a trained SD-VAE is in:
# kl_weight 1e-6 barely resists it). From LDM's init (std ~1) the CPU suites' few hundred stage-1 steps went to
# shrinking the noise first: SD-VAE stand-in, 192 steps, rFID 611 -> 361 with this init (smoke extractor).
STANDIN_INIT_LOGVAR = -8.0


def small_posterior_init(ae: AutoencoderKL, logvar: float = STANDIN_INIT_LOGVAR) -> AutoencoderKL:
    """Set the bias of quant_conv's log-variance half (the posterior's initial log-variance) to `logvar`."""
    with torch.no_grad():
        b = ae.quant_conv.bias
        b[b.shape[0] // 2 :] = logvar
    return ae


def sd_vae_standin(ddconfig_name: str = "tiny-f4") -> KLTokenizer:
    """The embedded suites' stand-in for SD-VAE: a small KL autoencoder trained in stage 1. Like SD-VAE in the
    paper protocol it is ONE frozen tokenizer shared by the SD-VAE families (REPA, SiT, STARFlow): a suite run
    trains it once and every backbone with the same `shared_key` reuses it."""
    tok = KLTokenizer(ddconfig_name)
    small_posterior_init(tok.ae)
    tok.shared_key = f"sd-vae-standin-{ddconfig_name}"
    return tok
