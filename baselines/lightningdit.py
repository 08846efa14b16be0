"""LightningDiT (Yao et al., CVPR 2025; hustvl/LightningDiT models/lightningdit.py), official key names.

A DiT with the paper's upgrades, each behind the official constructor flag: SwiGLU MLP (`use_swiglu`),
RMSNorm (`use_rmsnorm`), 2D RoPE on q/k beside the fixed sin-cos table (`use_rope`), optional QK-norm
(`use_qknorm`), adaLN-Zero with or without the shift (`wo_shift`), `learn_sigma`. The released XL/1 config
turns on SwiGLU, RoPE and RMSNorm; the presets below do the same.

Time convention of the official repo: t = 0 is noise, t = 1 is data, the network predicts x_data - noise
and t is fed to the embedder as a float in [0, 1]. The common protocol (baselines/transport.py, t = 1 noise)
wraps it with `net_time="data_at_1"`.

Differences from the official module that do not change any number: label dropout is done by the generator's
loss (seeded, one place) rather than inside `forward`; the fused ops (modulated RMSNorm/LayerNorm, SwiGLU,
RoPE) come from `baselines.ops`; classifier-free guidance lives in the sampler. The official
`forward_with_cfg` (guides the first 3 channels only, interval decided by t[0]) is kept as the function
`official_forward_with_cfg` for parity and for the paper-faithful sampler option.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines import ops
from baselines.layers import (
    Attention,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    RMSNorm,
    SwiGLUFFN,
    TimestepEmbedder,
    axial_rope_2d,
    initialize_dit_weights,
    unpatchify,
)

# --- primitives -------------------------------------------------------------------------------------------


class VisionRotaryEmbeddingFast(nn.Module):
    """EVA-02 2D RoPE with dim = head_dim / 2 per axis: buffers freqs_cos/freqs_sin [T, head_dim] (official keys).
    Each base frequency is repeated twice (interleaved pairs); the first half of a head's dims rotates with the ROW
    index, the second half with the COLUMN index (the opposite order of the sin-cos table)."""

    def __init__(self, dim: int, pt_seq_len: int, theta: float = 10000.0):
        super().__init__()
        cos, sin = axial_rope_2d(2 * dim, pt_seq_len, theta)  # official index form i / L * L, float32
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.freqs_cos, self.freqs_sin


def _attention(dim: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool) -> Attention:
    if dim % num_heads:
        raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
    norm = RMSNorm if use_rmsnorm else nn.LayerNorm  # official q/k norms (LayerNorm with torch's eps 1e-5)
    return Attention(dim, num_heads, qk_norm=norm if qk_norm else None)


def _layernorm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # DiT's parameter-free LayerNorm


def _modulated_norm(norm: nn.Module, x, shift, scale):
    """norm(x) * (1 + scale) + shift through the fused op; shift None = wo_shift."""
    if shift is None:
        shift = torch.zeros_like(scale)
    if isinstance(norm, RMSNorm):
        return ops.modulated_rmsnorm(x, norm.weight, shift, scale, norm.eps)
    return ops.modulated_layernorm(x, shift, scale, norm.eps)


# --- blocks -----------------------------------------------------------------------------------------------


class LightningDiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, use_qknorm=False, use_swiglu=False,
                 use_rmsnorm=False, wo_shift=False):  # fmt: skip
        super().__init__()
        self.norm1 = RMSNorm(hidden_size) if use_rmsnorm else _layernorm(hidden_size)
        self.norm2 = RMSNorm(hidden_size) if use_rmsnorm else _layernorm(hidden_size)
        self.attn = _attention(hidden_size, num_heads, use_qknorm, use_rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = (
            SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden)) if use_swiglu else Mlp(hidden_size, mlp_hidden)
        )
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size)
        )
        self.wo_shift = wo_shift

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope=None) -> torch.Tensor:  # x [B,T,D], c [B,D]
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
                6, dim=1
            )
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulated_norm(self.norm1, x, shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(_modulated_norm(self.norm2, x, shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool = False):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size) if use_rmsnorm else _layernorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulated_norm(self.norm_final, x, shift, scale))  # [B,T,p*p*C]


# --- model ------------------------------------------------------------------------------------------------


class LightningDiT(nn.Module):
    """Keyword arguments are the official constructor's (see the golden config.json)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=32, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=False, use_qknorm=False,
                 use_swiglu=False, use_rope=False, use_rmsnorm=False, wo_shift=False, use_checkpoint=False):  # fmt: skip
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size, self.num_heads, self.hidden_size, self.depth = (
            patch_size,
            num_heads,
            hidden_size,
            depth,
        )
        self.num_classes, self.use_rope, self.use_checkpoint = num_classes, use_rope, use_checkpoint
        self.input_size = input_size
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)  # fixed
        if use_rope:
            head_dim = hidden_size // num_heads
            if head_dim % 4:
                raise ValueError(f"2D RoPE needs head_dim divisible by 4 (two axes of pairs), got {head_dim}")
            self.feat_rope = VisionRotaryEmbeddingFast(head_dim // 2, input_size // patch_size)
        else:
            self.feat_rope = None
        self.blocks = nn.ModuleList(
            [
                LightningDiTBlock(
                    hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift
                )
                for _ in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        initialize_dit_weights(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [B,C,H,W] latents, t [B] in [0,1] (0 = noise), y [B] class ids (num_classes = null)
        -> velocity x_data - noise [B,C,H,W]."""
        x = self.x_embedder(x) + self.pos_embed  # [B,T,D]
        c = self.t_embedder(t) + self.y_embedder(y)  # [B,D]
        rope = self.feat_rope.tables() if self.feat_rope is not None else None
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, rope, use_reentrant=False)
            else:
                x = block(x, c, rope)
        x = self.final_layer(x, c)  # [B,T,p*p*out]
        x = unpatchify(x, self.patch_size, self.out_channels)  # [B,out,H,W]
        if self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x

    def flops_per_image(self) -> float:
        """Forward FLOPs of one image (multiply-add = 2): linears + attention, ignoring norms/activations."""
        t, d = self.x_embedder.num_patches, self.hidden_size
        blk = self.blocks[0]
        mlp = sum(m.weight.numel() for m in blk.mlp.modules() if isinstance(m, nn.Linear))
        per_block = 2 * t * (4 * d * d + mlp) + 4 * t * t * d + 2 * (6 if not blk.wo_shift else 4) * d * d
        embed = 2 * t * self.x_embedder.proj.weight.numel() + 2 * (256 * d + d * d)
        final = 2 * t * self.final_layer.linear.weight.numel() + 2 * 2 * d * d
        return float(self.depth * per_block + embed + final)


def official_forward_with_cfg(
    model: LightningDiT, x, t, y, cfg_scale, cfg_interval=False, cfg_interval_start=0.0
):
    """The released `LightningDiT.forward_with_cfg`, kept for parity and the paper-faithful sampler option.

    x, t, y are [cond; uncond] batches; only the first half of x is read. Guidance touches output channels
    0..2 only (DiT's quirk); channels 3.. keep the raw cond/uncond outputs. With cfg_interval, guidance is
    off for the WHOLE batch when t[0] < cfg_interval_start (t = 0 noise). Returns [B,C,H,W]."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = eps.chunk(2, dim=0)
    guided = uncond + cfg_scale * (cond - uncond)
    if cfg_interval and float(t[0]) < float(cfg_interval_start):
        guided = cond
    return torch.cat([torch.cat([guided, guided]), rest], dim=1)


# --- presets ----------------------------------------------------------------------------------------------

# The released XL/1 configuration (configs/lightningdit_xl_vavae_f16d32.yaml): 16x16x32 VA-VAE latents.
PAPER_FLAGS: dict[str, Any] = dict(
    use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False
)


def _preset(depth: int, hidden_size: int, patch_size: int, num_heads: int, **defaults):
    def build(**kwargs) -> LightningDiT:
        base = {"input_size": 16, "in_channels": 32, "num_classes": 1000, **PAPER_FLAGS, **defaults}
        return LightningDiT(**{**base, **kwargs, "depth": depth, "hidden_size": hidden_size,
                               "patch_size": patch_size, "num_heads": num_heads})  # fmt: skip

    return build


# name -> constructor(**official kwargs overrides) -> LightningDiT. L/1 is not in the official dict; same width.
LightningDiT_models = {
    "B/1": _preset(12, 768, 1, 12),
    "B/2": _preset(12, 768, 2, 12),
    "L/1": _preset(24, 1024, 1, 16),
    "L/2": _preset(24, 1024, 2, 16),
    "XL/1": _preset(28, 1152, 1, 16),
    "XL/2": _preset(28, 1152, 2, 16),
    "tiny": _preset(4, 128, 1, 4, input_size=8, in_channels=8),  # 8x8 latents, head_dim 32
    # the CPU suites: patch 2 on VA-VAE tiny's 8x8x8 latent = 16 tokens, the token count (and cost) of FAE tiny's
    # generator on its 4x4x16 latent, as XL/1 sees 256 tokens on both papers' 16x16x32 latents
    "tiny/2": _preset(4, 128, 2, 4, input_size=8, in_channels=8),
}
