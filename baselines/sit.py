"""SiT as in REPA's official models/sit.py (sihyun-yu/REPA): a DiT with adaLN-Zero blocks that also returns
the projector outputs of the hidden state after block `encoder_depth` (REPA's alignment head).

State-dict key names and shapes are the official ones (x_embedder.proj, t_embedder.mlp.{0,2},
y_embedder.embedding_table, pos_embed, blocks.i.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1},
projectors.j.{0,2,4}, final_layer.{linear, adaLN_modulation.1}), so official checkpoints load with strict=True.
Time t in [0, 1] is fed unscaled; t = 1 is noise (REPA convention, see baselines/transport.py).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from baselines import ops
from baselines.layers import (
    Attention,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    initialize_dit_weights,
    unpatchify,
)


def _qk_layernorm(head_dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(head_dim, eps=1e-6)


class SiTBlock(nn.Module):
    """adaLN-Zero block: six modulation vectors (shift/scale/gate for attention, then for the MLP)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(
            hidden_size, elementwise_affine=False, eps=1e-6
        )  # kept for the official layout
        self.attn = Attention(hidden_size, num_heads, qk_norm=_qk_layernorm if qk_norm else None)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x [B, T, D], c [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=-1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(ops.modulated_layernorm(x, shift_msa, scale_msa, 1e-6))
        return x + gate_mlp.unsqueeze(1) * self.mlp(ops.modulated_layernorm(x, shift_mlp, scale_mlp, 1e-6))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(ops.modulated_layernorm(x, shift, scale, 1e-6))


def build_mlp(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """REPA projector: Linear-SiLU-Linear-SiLU-Linear applied per token (keys .0, .2, .4)."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )  # fmt: skip


class SiT(nn.Module):
    """REPA's SiT. forward(x [B,C,H,W], t [B], y [B]) -> (v [B,C,H,W], zs list of [B, T, z_dim])."""

    def __init__(
        self,
        path_type: str = "linear",
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        decoder_hidden_size: int = 768,
        encoder_depth: int = 8,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        use_cfg: bool = False,
        z_dims: tuple[int, ...] = (768,),
        projector_dim: int = 2048,
        fused_attn: bool = True,  # accepted for the official signature; SDPA is used either way
        qk_norm: bool = False,
    ):
        super().__init__()
        if decoder_hidden_size != hidden_size:
            # The official final layer is sized by decoder_hidden_size but receives hidden_size tokens.
            raise ValueError(
                f"decoder_hidden_size ({decoder_hidden_size}) must equal hidden_size ({hidden_size})"
            )
        if not 1 <= encoder_depth <= depth:
            raise ValueError(f"encoder_depth must be in [1, depth={depth}], got {encoder_depth}")
        self.in_channels = self.out_channels = in_channels
        self.patch_size, self.num_heads, self.encoder_depth = patch_size, num_heads, encoder_depth
        self.input_size, self.num_classes, self.hidden_size = input_size, num_classes, hidden_size
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth)]
        )
        self.projectors = nn.ModuleList([build_mlp(hidden_size, projector_dim, z) for z in z_dims])
        self.final_layer = FinalLayer(decoder_hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        initialize_dit_weights(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        x = self.x_embedder(x) + self.pos_embed  # [B, T, D]
        b, tokens, d = x.shape
        c = self.t_embedder(t) + self.y_embedder(y)  # [B, D]
        zs = []
        for i, block in enumerate(self.blocks):
            x = block(x, c)
            if i + 1 == self.encoder_depth:
                zs = [
                    proj(x.reshape(-1, d)).reshape(b, tokens, -1) for proj in self.projectors
                ]  # [B, T, z_dim] each
        x = self.final_layer(x, c)  # [B, T, p*p*C]
        return unpatchify(x, self.patch_size, self.out_channels), zs


# Presets (REPA models/sit.py SiT_models; encoder_depth as REPA's scripts use it: 8 for XL/L, 4 for B/S).
# `tiny` is ours: 8x8x4 latents of the embedded CPU suites, 16 tokens at patch 2.
SiT_configs: dict[str, dict] = {
    "XL/2": dict(
        depth=28, hidden_size=1152, decoder_hidden_size=1152, num_heads=16, patch_size=2, encoder_depth=8
    ),
    "L/2": dict(
        depth=24, hidden_size=1024, decoder_hidden_size=1024, num_heads=16, patch_size=2, encoder_depth=8
    ),
    "B/2": dict(
        depth=12, hidden_size=768, decoder_hidden_size=768, num_heads=12, patch_size=2, encoder_depth=4
    ),
    "S/2": dict(
        depth=12, hidden_size=384, decoder_hidden_size=384, num_heads=6, patch_size=2, encoder_depth=4
    ),
    "tiny": dict(
        depth=4,
        hidden_size=128,
        decoder_hidden_size=128,
        num_heads=4,
        patch_size=2,
        encoder_depth=2,
        projector_dim=256,
    ),
}
SiT_models = {name: functools.partial(SiT, **cfg) for name, cfg in SiT_configs.items()}  # call with overrides
