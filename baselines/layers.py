"""Blocks shared by several models: DiT embedders and the fixed 2D sin-cos table, the two RMSNorm variants
(LLaMA-style and STARFlow's (1 + weight) form), SwiGLU and GELU MLPs, patch embedding, bidirectional attention
and the rotary position tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import ops


class TimestepEmbedder(nn.Module):
    """Scalar t -> [cos(t f_k), sin(t f_k)] (cosine first, f_k = 10000^(-k/half)) -> Linear-SiLU-Linear.
    t is used as given (no x1000), as REPA's SiT and LightningDiT do."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb.to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, D]
        return self.mlp(
            self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        )


class LabelEmbedder(nn.Module):
    """Class id -> vector; id == num_classes is the learned null class used by classifier-free guidance.
    Label dropout is done by the generator's loss (one place, seeded), not inside the network."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # [B] -> [B, D]
        return self.embedding_table(labels)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE/DiT table [grid*grid, D]: first D/2 channels encode the COLUMN, last D/2 the ROW (numpy meshgrid puts
    w first); each half is [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k/(D/4))."""
    grid_w, grid_h = np.meshgrid(
        np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64)
    )

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], axis=1)


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """[B, T, p*p*c] tokens (per-token layout: row offset, column offset, channel) -> [B, c, H, W]."""
    b, t, _ = x.shape
    h = w = int(round(t**0.5))
    x = x.reshape(b, h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h * p, w * p)


def initialize_dit_weights(model: nn.Module) -> None:
    """DiT/SiT/LightningDiT init (facebookresearch/DiT initialize_weights): Xavier-uniform linears and patch conv,
    the fixed sin-cos table, N(0, 0.02) label table and t-MLP, zeroed adaLN modulations and output layer.
    Expects DiT attribute names (x_embedder.proj, pos_embed, y_embedder, t_embedder, blocks, final_layer).
    On the meta device there is nothing to initialise."""
    if model.pos_embed.is_meta:
        return

    def _basic(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    model.apply(_basic)
    grid = int(round(model.pos_embed.shape[1] ** 0.5))
    table = get_2d_sincos_pos_embed(model.pos_embed.shape[-1], grid)
    model.pos_embed.data.copy_(torch.from_numpy(table).float()[None])
    w = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    for m in (model.final_layer.adaLN_modulation[-1], model.final_layer.linear):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)


# --- norms, MLPs, patch embedding, attention --------------------------------------------------------------


class RMSNorm(nn.Module):
    """LLaMA-style RMSNorm: x / sqrt(mean(x^2) + eps) * weight (weight starts at one; normalised in float32,
    cast back, then scaled). LightningDiT's layout (key `weight`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class UnitOffsetRMSNorm(nn.Module):
    """STARFlow's (Gemma-style) RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + weight), weight starts at zero, all
    in float32 before the cast back (key `weight`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (
            xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight.float())
        ).type_as(x)


class SwiGLUFFN(nn.Module):
    """w3(SiLU(a) * b) with [a, b] = w12(x) (LightningDiT's keys `w12`, `w3`; FAE uses the same layout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(ops.swiglu(self.w12(x)))


class Mlp(nn.Module):
    """timm Mlp: fc1 -> GELU -> fc2 (keys `fc1`, `fc2`). DiT-family models use the tanh GELU, ViTs the exact one."""

    def __init__(self, dim: int, hidden: int, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class PatchEmbed(nn.Module):
    """timm PatchEmbed: conv with kernel = stride = patch, tokens in row-major order (key `proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"input_size {img_size} is not divisible by patch_size {patch_size}")
        self.patch_size = (patch_size, patch_size)
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B,C,H,W] -> [B,T,D]


class Attention(nn.Module):
    """Bidirectional multi-head self-attention (SiT, LightningDiT, FAE): qkv -> optional per-head q/k norm ->
    optional RoPE (cos, sin) -> SDPA (scale head_dim^-1/2) -> proj. The inner width heads * head_dim may differ
    from the model width (FAE's encoder). Keys `qkv`, `q_norm`, `k_norm`, `proj`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        qk_norm: Callable[[int], nn.Module] | None = None,
        cast_rope: bool = False,
    ):
        super().__init__()
        self.cast_rope = (
            cast_rope  # FAE: tables cast to q's dtype first (differs from float32 tables under bf16)
        )
        self.num_heads, self.head_dim = num_heads, head_dim or dim // num_heads
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.q_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, t, _ = x.shape  # [B, T, D]
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # [B, H, T, d] each
        if rope is not None:
            cos, sin = (r.to(q.dtype) for r in rope) if self.cast_rope else rope
            q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, d]
        return self.proj(o.transpose(1, 2).reshape(b, t, -1))  # [B, T, D]


# --- rotary position tables (EVA-02 / LightningDiT / STARFlow / FAE) --------------------------------------


def rope_frequencies(dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[dim // 2] base frequencies theta^(-2k/dim) of one RoPE axis of `dim` channels."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype)[: dim // 2] / max(dim, 1))


def grid_positions(h: int, w: int, scale: float | None = None, dtype: torch.dtype = torch.float32):
    """Row and column index of each of the h*w tokens (row-major) -> two [h*w] tensors. With `scale`, positions
    are index / sqrt(h w) * scale (EVA-02's / STARFlow's pt_seq_len rescaling; scale = h = w gives the index
    as the official code computes it, in floating point)."""
    rows, cols = torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype)
    if scale is not None:
        mean_len = math.sqrt(h * w)
        rows, cols = rows / mean_len * scale, cols / mean_len * scale
    rows, cols = torch.meshgrid(rows, cols, indexing="ij")
    return rows.reshape(-1), cols.reshape(-1)


def rope_angles(axes: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[(positions [T], freqs [F_i]), ...] -> angles [T, 2 sum F_i]: the axes' blocks side by side, every angle
    repeated twice (interleaved pairs, as `ops.rope` rotates them)."""
    return torch.cat([p[:, None] * f for p, f in axes], -1).repeat_interleave(2, dim=-1)


def axial_rope_2d(
    head_dim: int, grid: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32, scaled: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2D RoPE (EVA-02 VisionRotaryEmbeddingFast with ft_seq_len = pt_seq_len): the first half of each head
    rotates with the token's row, the second half with its column. Computed in `dtype`; returns float32 cos, sin
    [grid*grid, head_dim]. scaled=True reproduces the official index arithmetic (i / grid * grid)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    freqs = rope_frequencies(head_dim // 2, theta, dtype)
    rows, cols = grid_positions(grid, grid, grid if scaled else None, dtype)
    ang = rope_angles([(rows, freqs), (cols, freqs)])
    return ang.cos().float(), ang.sin().float()


def starflow_rope_angles(
    h: int, w: int, txt: int, pt_seq_len: int, head_dim: int, latent_len: int, three_d: bool
) -> torch.Tensor:
    """STARFlow's RoPE angles [txt + h*w, head_dim] (ml-starflow misc/pe.py VisionRotaryEmbeddingFast + get_positions).

    Image slot n (in the block's sequence order) sits at (row, col) = (n div w, n mod w), scaled by
    pt_seq_len / sqrt(h w); with a third axis (the model has a text length) image slots get 0 there and the
    txt prefix tokens get (0, 0, k * pt_seq_len / txt). Per head: spatial frequencies 10000^(-2k/F') on the first
    two axes (F' = head_dim/2 - 8 with a third axis, else head_dim/2) and 10000^(-k/8), k < 8, on the third;
    every angle is repeated twice (interleaved pairs)."""
    F_ = head_dim // 2
    dim = F_ - 8 if latent_len > 0 else F_
    if dim < 0:
        raise ValueError(f"3D RoPE needs head_dim >= 16, got {head_dim}")
    freqs = rope_frequencies(dim)
    px, py = grid_positions(h, w, pt_seq_len)
    axes = [(px, freqs), (py, freqs)]
    if three_d:
        pz = torch.zeros_like(px)
        if txt > 0:
            pt = torch.arange(txt) / txt * pt_seq_len
            zeros = torch.zeros_like(pt)
            axes = [(torch.cat([zeros, px]), freqs), (torch.cat([zeros, py]), freqs)]
            pz = torch.cat([pt, pz])
        axes.append((pz, rope_frequencies(16)))  # 10000^(-k/8), k < 8
    elif txt > 0:
        raise ValueError("a text prefix needs 3D RoPE (txt_size > 0)")
    return rope_angles(axes)
