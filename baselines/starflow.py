"""STARFlow (Gu et al., "STARFlow: Scaling Latent Normalizing Flows for High-resolution Image Synthesis",
arXiv 2506.06276; official code apple/ml-starflow, `transformer_flow.py`, whose state_dict key names we keep).

A TARFlow (`baselines/tarflow.py`) in the latent space of a pretrained autoencoder, with a deep-shallow stack:
several shallow blocks of two layers, then one deep block next to the Gaussian prior. Per block: a learned start
token (SOS) instead of the zero shift, so every token is transformed; soft clip 4 tanh(o/4) of the output;
scale sigma = softplus(a + 0.5413) (sigma = 1 at a = 0); a final RMSNorm; 3D RoPE indexed by sequence slot;
the condition (text, or a class as a one-hot "caption") enters only the deep block, as a causal prefix.
Guidance (paper Sec. 3.3) replaces each conditional Gaussian step by the Gaussian proportional to
p_c^(1+w) / p_u^w, in the deep block only. Training adds Gaussian noise (sigma 0.3) to the latents and a
1e-4 penalty on the mean square of every intermediate latent; one Tweedie step denoises the samples.

Run `python -m baselines.starflow sizes` for the presets' parameter counts (meta device) and
`python -m baselines.starflow jacobi-bench` for sequential vs block-wise Jacobi sampling (reports/starflow/).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines import ops
from baselines.api import Backbone, Generator, OptionError, Recipe
from baselines.tarflow import (
    DecodeStats,
    KVCache,
    SampleStats,
    _check_labels,
    _drop_mask,
    _jacobi_worst_passes,
    autoregressive_decode,
    causal_attention,
    check_decode_options,
)

INV_SOFTPLUS_1 = 0.541324854612918  # softplus(0 + INV_SOFTPLUS_1) = 1
LATENT_NORM_REG = 1e-4  # configs/starflow_3B_t2i_256x256.yaml: latent_norm_regularization


# ----------------------------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm in float32 with a (1 + weight) multiplier (Gemma style; weight starts at zero)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (
            xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight.float())
        ).type_as(x)


def _norm(norm_type: str, dim: int) -> nn.Module:
    if norm_type == "layer_norm":
        return nn.LayerNorm(dim)
    if norm_type == "rms_norm":
        return RMSNorm(dim)
    if norm_type == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm_type {norm_type!r}; expected layer_norm, rms_norm or none")


def rope_angles(
    h: int, w: int, txt: int, pt_seq_len: int, head_dim: int, latent_len: int, three_d: bool
) -> torch.Tensor:
    """RoPE angles [txt + h*w, head_dim] (misc/pe.py VisionRotaryEmbeddingFast + get_positions).

    Image slot n (in the block's sequence order) sits at (row, col) = (n div w, n mod w), scaled by
    pt_seq_len / sqrt(h w); with a third axis (the model has a text length) image slots get 0 there and the
    txt prefix tokens get (0, 0, k * pt_seq_len / txt). Per head: spatial frequencies 10000^(-2k/F') on the first
    two axes (F' = head_dim/2 - 8 with a third axis, else head_dim/2) and 10000^(-k/8), k < 8, on the third;
    every angle is repeated twice (interleaved pairs)."""
    F_ = head_dim // 2
    dim = F_ - 8 if latent_len > 0 else F_
    if dim < 0:
        raise ValueError(f"3D RoPE needs head_dim >= 16, got {head_dim}")
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / max(dim, 1)))
    mean_len = math.sqrt(h * w)
    px = torch.arange(h) / mean_len * pt_seq_len
    py = torch.arange(w) / mean_len * pt_seq_len
    px, py = (p.reshape(-1) for p in torch.meshgrid(px, py, indexing="ij"))
    parts = [px[:, None] * freqs, py[:, None] * freqs]
    if three_d:
        freqs2 = 1.0 / (10000 ** (torch.arange(0, 8).float() / 8))
        pz = torch.zeros_like(px)
        if txt > 0:
            pt = torch.arange(txt) / txt * pt_seq_len
            zeros = torch.zeros_like(pt)
            parts = [torch.cat([zeros, px])[:, None] * freqs, torch.cat([zeros, py])[:, None] * freqs]
            pz = torch.cat([pt, pz])
        parts.append(pz[:, None] * freqs2)
    elif txt > 0:
        raise ValueError("a text prefix needs 3D RoPE (txt_size > 0)")
    return torch.cat(parts, -1).repeat_interleave(2, dim=-1)


class VisionRotaryEmbedding(nn.Module):
    """Holds only the official module's deprecated zero buffers (`feat_rope.freqs_cos/sin`, unused), so that
    checkpoints load strictly; the angles come from `rope_angles`."""

    def __init__(self, head_dim: int, pt_seq_len: int, latent_len: int):
        super().__init__()
        buf = torch.zeros(latent_len + pt_seq_len**2, 2 * (head_dim // 2))
        self.register_buffer("freqs_cos", buf)
        self.register_buffer("freqs_sin", buf.clone())


class Attention(nn.Module):
    def __init__(
        self,
        in_channels: int,
        head_channels: int,
        norm_type: str = "layer_norm",
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        use_qk_norm: bool = False,
        use_post_norm: bool = False,
        use_bias: bool = True,
        hf_style_rope: bool = False,
    ):
        super().__init__()
        self.norm = _norm(norm_type, in_channels)
        self.head_channels = head_channels
        self.num_heads = num_heads or in_channels // head_channels
        self.num_kv_heads = num_kv_heads or self.num_heads  # GQA when smaller
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        self.q_size, self.kv_size = self.num_heads * head_channels, self.num_kv_heads * head_channels
        self.qkv = nn.Linear(in_channels, self.q_size + 2 * self.kv_size, bias=use_bias)
        self.proj = nn.Linear(self.q_size, in_channels, bias=use_bias)
        self.query_norm = RMSNorm(head_channels) if use_qk_norm else None
        self.key_norm = RMSNorm(head_channels) if use_qk_norm else None
        self.post_norm = RMSNorm(in_channels) if use_post_norm else None
        self.hf_style_rope = hf_style_rope

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if not self.hf_style_rope:
            return ops.rope(x, cos, sin)
        d = x.shape[-1]  # half-split layout: rotate (x_i, x_{i+d/2}) pairs by moving them next to each other
        x = x.unflatten(-1, (2, d // 2)).transpose(-1, -2).flatten(-2)
        return ops.rope(x, cos, sin).unflatten(-1, (d // 2, 2)).transpose(-1, -2).flatten(-2)

    def forward(
        self, x, rope=None, cache: KVCache | None = None, keep=None, temp: float = 1.0
    ) -> torch.Tensor:
        """x [B,T,C]; rope = (cos, sin) [T,d] for these T positions; cache/keep as in tarflow.causal_attention."""
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(B, T, self.num_heads, self.head_channels).transpose(1, 2)  # [B,H,T,d]
        k = k.view(B, T, self.num_kv_heads, self.head_channels).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_channels).transpose(1, 2)
        if self.query_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        if rope is not None:  # keys are cached after rotation: each position keeps its own angle
            q, k = self._rope(q, *rope), self._rope(k, *rope)
        if self.num_kv_heads != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        if temp != 1.0:
            q = q / temp
        o = causal_attention(q, k, v, cache, keep)
        o = self.proj(o.transpose(1, 2).reshape(B, T, self.q_size))
        return self.post_norm(o) if self.post_norm is not None else o


class MLP(nn.Module):
    def __init__(
        self,
        channels: int,
        expansion: float = 4,
        use_swiglu: bool = False,
        norm_type: str = "layer_norm",
        use_post_norm: bool = False,
        use_bias: bool = True,
    ):
        super().__init__()
        self.norm = _norm(norm_type, channels)
        self.post_norm = RMSNorm(channels) if use_post_norm else None
        self.use_swiglu = use_swiglu
        hidden = int(channels * expansion)
        if use_swiglu:
            self.gate_proj = nn.Linear(channels, hidden, bias=use_bias)
            self.up_proj = nn.Linear(channels, hidden, bias=use_bias)
            self.down_proj = nn.Linear(hidden, channels, bias=use_bias)
        else:
            self.main = nn.Sequential(
                nn.Linear(channels, hidden, bias=use_bias),
                nn.GELU(),
                nn.Linear(hidden, channels, bias=use_bias),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if self.use_swiglu:
            h = self.down_proj(F.gelu(self.gate_proj(h), approximate="tanh") * self.up_proj(h))
        else:
            h = self.main(h)
        return self.post_norm(h) if self.post_norm is not None else h


class AttentionBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        head_channels: int,
        expansion: float = 4,
        use_swiglu: bool = False,
        norm_type: str = "layer_norm",
        num_heads=None,
        num_kv_heads=None,
        use_qk_norm=False,
        use_post_norm=False,
        use_bias=True,
        hf_style_rope=False,
    ):
        super().__init__()
        self.attention = Attention(
            channels,
            head_channels,
            norm_type,
            num_heads,
            num_kv_heads,
            use_qk_norm,
            use_post_norm,
            use_bias,
            hf_style_rope,
        )
        self.mlp = MLP(channels, expansion, use_swiglu, norm_type, use_post_norm, use_bias)

    def forward(self, x, rope=None, cache=None, keep=None, temp: float = 1.0) -> torch.Tensor:
        x = x + self.attention(x, rope, cache, keep, temp)
        return x + self.mlp(x)


# ----------------------------------------------------------------------------------------------------------------
# Flow blocks and model
# ----------------------------------------------------------------------------------------------------------------


class MetaBlock(nn.Module):
    """One autoregressive affine flow block on a patch grid [B,h,w,D]."""

    attn_mask: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        channels: int,
        img_size: int,
        flip: bool,
        pt_seq_len: int,
        num_layers: int = 1,
        head_dim: int = 64,
        num_heads=None,
        num_kv_heads=None,
        txt_size: int = 0,
        txt_dim: int = 0,
        expansion: float = 4,
        use_rope: bool = False,
        use_sos: bool = False,
        use_softplus: bool = False,
        use_swiglu: bool = False,
        use_qk_norm: bool = False,
        use_post_norm: bool = False,
        use_final_norm: bool = False,
        use_bias: bool = True,
        hf_style_rope: bool = False,
        norm_type: str = "layer_norm",
        use_checkpoint: int = 0,
        soft_clip: float = 0.0,
    ):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, channels)
        self.proj_out = nn.Linear(channels, 2 * in_channels)
        nn.init.zeros_(self.proj_out.weight)  # starts as the identity map
        if use_sos:
            self.sos_embed = nn.Parameter(torch.randn(1, 1, in_channels))
        self.pos_embed = None if use_rope else nn.Parameter(torch.randn(img_size**2, channels) * 1e-2)
        self.txt_dim = txt_dim
        if txt_dim > 0:
            self.proj_txt = nn.Linear(txt_dim, channels)
        self.attn_blocks = nn.ModuleList(
            [
                AttentionBlock(
                    channels,
                    head_dim,
                    expansion,
                    use_swiglu,
                    norm_type,
                    num_heads,
                    num_kv_heads,
                    use_qk_norm,
                    use_post_norm,
                    use_bias,
                    hf_style_rope,
                )
                for _ in range(num_layers)
            ]
        )
        self.final_norm = RMSNorm(channels) if use_final_norm else None
        self.flip, self.use_sos, self.use_softplus = flip, use_sos, use_softplus
        self.soft_clip, self.use_checkpoint = soft_clip, use_checkpoint
        # deprecated in the official code (SDPA's is_causal is used instead); kept for strict checkpoint loading
        self.register_buffer(
            "attn_mask", torch.tril(torch.ones(pt_seq_len**2 + txt_size, pt_seq_len**2 + txt_size))
        )

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x.flip(dims=[dim]) if self.flip else x

    def _rope(
        self, rope: dict | None, h: int, w: int, txt: int, device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if rope is None:
            return None
        ang = rope_angles(
            h,
            w,
            txt if self.txt_dim > 0 else 0,
            rope["pt_seq_len"],
            rope["head_dim"],
            rope["latent_len"],
            rope["three_d"],
        ).to(device)
        return ang.cos(), ang.sin()

    def _proj_out(self, h: torch.Tensor) -> torch.Tensor:
        o = self.proj_out(h)
        return self.soft_clip * torch.tanh(o / self.soft_clip) if self.soft_clip > 0 else o

    def _scale(self, a: torch.Tensor) -> torch.Tensor:
        return F.softplus(a + INV_SOFTPLUS_1) if self.use_softplus else a.exp()

    def _layers(self, h, rope, caches=None, keep=None, temp=1.0):
        for i, block in enumerate(self.attn_blocks):
            cache = caches[i] if caches is not None else None
            if (
                self.training
                and self.use_checkpoint > 0
                and (i + 1) % self.use_checkpoint == 0
                and cache is None
            ):
                h = checkpoint(block, h, rope, use_reentrant=False)
            else:
                h = block(h, rope, cache, keep, temp)
        return h

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, rope: dict | None = None):
        """x [B,h,w,D] -> (z [B,h,w,D], y_out [B,P,C] or None, logdet [B,T,D] elementwise, permuted order)."""
        B, hh, ww, D = x.shape
        x = self.permute(x.reshape(B, hh * ww, D))
        x_in = x
        if self.use_sos:  # [sos, x_0 .. x_{T-2}]: output t predicts x_t from x_{<t}
            x = torch.cat([self.sos_embed.expand(B, -1, -1), x[:, :-1]], dim=1)
        h = self.proj_in(x)
        if self.pos_embed is not None:
            h = h + self.permute(self.pos_embed, dim=0)
        P = 0
        if self.txt_dim > 0:
            if y is None:
                raise ValueError("this flow block is conditional: y (the condition sequence) is required")
            P = y.shape[1]
            h = torch.cat([self.proj_txt(y), h], dim=1)  # the condition is a causal prefix
        h = self._layers(h, self._rope(rope, hh, ww, P, x.device))
        if self.final_norm is not None:
            h = self.final_norm(h)
        y_out = h[:, :P] if P else None
        o = self._proj_out(h[:, P:])
        if not self.use_sos:
            o = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)
        a, b = o.chunk(2, dim=-1)
        s = self._scale(a.float())
        z = (x_in.float() - b.float()) / s  # paper Eq. 5 with sigma = softplus(a + 0.5413)
        z = self.permute(z).reshape(B, hh, ww, D).to(x_in.dtype)
        return z, y_out, -torch.log(s)

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        attn_temp: float = 1.0,
        rope: dict | None = None,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """Inverse of `forward` on a grid z [B,h,w,D]. With guidance > 0 (conditional blocks), y holds 2B rows:
        conditional rows then null rows (official convention); each step replaces the conditional Gaussian
        N(mu_c, sigma_c) by N(mu, sigma) proportional to N_c^(1+w) / N_u^w (official MetaBlock.guidance):
        s = min(sigma_c/sigma_u, 1)^2, sigma = sigma_c / sqrt(1 + w - w s), mu = ((1+w) mu_c - w s mu_u)/(1 + w - w s).
        Both rows then continue from the same guided token."""
        B, hh, ww, D = z.shape
        T = hh * ww
        z = self.permute(z.reshape(B, T, D)).float()
        guided = guidance > 0 and self.txt_dim > 0  # an unconditional block's two branches coincide: no-op
        P = 0
        if self.txt_dim > 0:
            if y is None:
                raise ValueError("this flow block is conditional: y (the condition sequence) is required")
            if y.shape[0] != (2 * B if guided else B):
                raise ValueError(
                    f"y has {y.shape[0]} rows; expected {2 * B if guided else B} (guided: cond rows then null rows)"
                )
            P = y.shape[1]
        rope_cs = self._rope(rope, hh, ww, P, z.device)
        caches = [KVCache(P + T) for _ in self.attn_blocks]
        if P:  # run the condition prefix once to fill the caches
            self._layers(
                self.proj_txt(y.to(self.proj_txt.weight.dtype)),
                _slice(rope_cs, 0, P),
                caches,
                None,
                attn_temp,
            )
        pos = self.permute(self.pos_embed, dim=0) if self.pos_embed is not None else None
        if stats is not None:
            stats.rows, stats.prefix_tokens = (2 if guided else 1), P

        def step(inp, start, zc, keep):
            c = inp.shape[1]
            if guided:
                inp = torch.cat([inp, inp])
                keep = torch.cat([keep, keep]) if keep is not None else None
            h = self.proj_in(inp.to(self.proj_in.weight.dtype))
            if pos is not None:
                h = h + pos[start : start + c]
            h = self._layers(h, _slice(rope_cs, P + start, P + start + c), caches, keep, attn_temp)
            if self.final_norm is not None:
                h = self.final_norm(h)
            a, b = self._proj_out(h).float().chunk(2, dim=-1)
            if not guided:
                return ops.affine_inverse(zc, a, b, softplus=self.use_softplus)
            (s_c, s_u), (mu_c, mu_u) = self._scale(a).chunk(2), b.chunk(2)
            w = guidance
            r = (s_c / s_u).clip(max=1.0).square()
            sigma = s_c / (1 + w - w * r).sqrt()
            mu = ((1 + w) * mu_c - (w * r) * mu_u) / (1 + w - w * r)
            return zc * sigma + mu

        def rollback(n):
            for cache in caches:
                cache.rollback(n)

        if self.use_sos:
            u = torch.cat([self.sos_embed.float().expand(B, -1, -1), z.clone()], dim=1)  # [B,T+1,D]
            targets = z
        else:
            u, targets = z.clone(), z[:, 1:]  # token 0 passes unchanged
        u = autoregressive_decode(
            step,
            u,
            targets,
            mode=mode,
            block_size=jacobi_block,
            tol=jacobi_tol,
            max_iters=jacobi_max_iters,
            rollback=rollback,
            stats=stats,
        )
        x = u[:, 1:] if self.use_sos else u
        return self.permute(x).reshape(B, hh, ww, D)


def _slice(rope_cs, a: int, b: int):
    return None if rope_cs is None else (rope_cs[0][a:b], rope_cs[1][a:b])


class IdentityBlock(nn.Module):
    """A shallow block with 0 layers (official IdentityBlock): no parameters, identity map."""

    txt_dim = 0

    def forward(self, x, y=None, rope=None):
        return x, None, x.new_zeros(x.shape[0])

    def reverse(self, z, y=None, guidance=0.0, attn_temp=1.0, rope=None, *, stats=None, **unused):
        return z


_UNSUPPORTED = {  # official options that select other model families (video, pretrained LM, learnable denoiser)
    "use_pretrained_lm": None, "use_mm_attn": False, "learnable_self_denoiser": False, "conditional_denoiser": False,
    "noise_embed_denoiser": False, "temporal_causal": 0, "shallow_block_local": False, "denoiser_window": None,
    "local_attn_window": None,
}  # fmt: skip


class StarFlow(nn.Module):
    """The official `transformer_flow.Model` (image path; constructor names and state_dict keys as released)."""

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        patch_size: int,
        channels: int,
        num_blocks: int,
        layers_per_block: list[int] | int,
        head_dim: int = 64,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        rope: bool = False,
        pt_seq_len: int | None = None,
        sos: bool = False,
        txt_size: int = 0,
        txt_dim: int = 0,
        cond_top_only: bool = False,
        use_softplus: bool = False,
        use_swiglu: bool = False,
        use_bias: bool = True,
        use_qk_norm: bool = False,
        use_post_norm: bool = False,
        use_final_norm: bool = False,
        hf_style_rope: bool = False,
        norm_type: str = "layer_norm",
        use_checkpoint: int = 0,
        use_checkpoint_mlp: int | None = None,
        soft_clip: float = 0.0,
        seq_order: str = "R2L",
        top_block_channels: int | None = None,
        **unsupported: Any,
    ):
        super().__init__()
        bad = sorted(k for k in unsupported if k not in _UNSUPPORTED)
        if bad:
            raise ValueError(f"unknown STARFlow constructor argument(s) {bad}")
        on = sorted(k for k, v in unsupported.items() if v != _UNSUPPORTED[k] and v)
        if on:
            raise ValueError(
                f"STARFlow option(s) {on} (video / pretrained-LM / learnable denoiser) are not implemented"
            )
        if seq_order not in ("R2L", "L2R"):
            raise ValueError(f"seq_order must be 'R2L' or 'L2R', got {seq_order!r}")
        if cond_top_only and txt_size <= 0:
            raise ValueError("cond_top_only requires txt_size > 0")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        lpb = [layers_per_block] if isinstance(layers_per_block, int) else list(layers_per_block)
        if len(lpb) == 1:
            lpb = lpb * num_blocks
        if len(lpb) != num_blocks:
            raise ValueError(f"layers_per_block has {len(lpb)} entries for num_blocks={num_blocks}")
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.pt_seq_len = pt_seq_len or img_size // patch_size
        self.num_patches = self.pt_seq_len**2
        self.use_rope, self.use_sos, self.cond_top_only = bool(rope), bool(sos), bool(cond_top_only)
        self.txt_size, self.txt_dim, self.head_dim = txt_size, txt_dim, head_dim
        self.channels, self.top_block_channels = channels, top_block_channels or channels
        self.layers_per_block = lpb
        base = dict(
            in_channels=in_channels * patch_size**2,
            img_size=img_size // patch_size,
            pt_seq_len=self.pt_seq_len,
            txt_size=txt_size,
            use_rope=self.use_rope,
            hf_style_rope=hf_style_rope,
            use_sos=self.use_sos,
            use_softplus=bool(use_softplus),
            use_swiglu=bool(use_swiglu),
            use_qk_norm=bool(use_qk_norm),
            use_post_norm=bool(use_post_norm),
            use_final_norm=bool(use_final_norm),
            use_bias=bool(use_bias),
            norm_type=norm_type,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            use_checkpoint=int(use_checkpoint or 0),
            soft_clip=float(soft_clip),
        )

        def flip(i: int) -> bool:  # permutations = [identity, flip]; L2R shifts the alternation by one
            return (i % 2 if seq_order == "R2L" else (i + 1) % 2) == 1

        blocks: list[nn.Module] = []
        for i in range(num_blocks - 1):  # shallow blocks
            if lpb[i] == 0:
                blocks.append(IdentityBlock())
            else:
                blocks.append(
                    MetaBlock(
                        channels=channels,
                        flip=flip(i),
                        num_layers=lpb[i],
                        txt_dim=0 if cond_top_only else txt_dim,
                        **base,
                    )
                )
        top = dict(base, channels=self.top_block_channels)
        if self.top_block_channels != channels and num_heads is None:
            top["num_heads"] = self.top_block_channels // head_dim
        blocks.append(
            MetaBlock(flip=flip(num_blocks - 1), num_layers=lpb[-1], txt_dim=txt_dim, **top)
        )  # deep block
        self.blocks = nn.ModuleList(blocks)
        if self.use_rope:
            self.feat_rope = VisionRotaryEmbedding(head_dim, self.pt_seq_len, txt_size)
        self.register_buffer(
            "var", torch.ones(self.num_patches, in_channels * patch_size**2)
        )  # deprecated, unused

    def _rope_spec(self) -> dict | None:
        if not self.use_rope:
            return None
        return {
            "pt_seq_len": self.pt_seq_len,
            "head_dim": self.head_dim,
            "latent_len": self.txt_size,
            "three_d": self.txt_size > 0,
        }

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> patch grid [B,H/p,W/p,p*p*C] (einops '(h p1) (w p2) -> h w (p1 p2 c)': channel fastest)."""
        B, C, H, W = x.shape
        p = self.patch_size
        return (
            x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, H // p, W // p, p * p * C)
        )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, _ = x.shape
        p = self.patch_size
        return x.view(B, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(B, -1, h * p, w * p)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x [B,C,H,W] -> (z [B,C,H,W], y_out, outputs [input grid, each block's output grid], logdets list [B,T,D])."""
        rope = self._rope_spec()
        x = self.patchify(x)
        outputs, logdets = [x], []
        y_out = None
        for block in self.blocks:
            x, y_b, logdet = block(x, y if block.txt_dim > 0 else None, rope)
            y_out = y_b if y_b is not None else y_out
            outputs.append(x)
            logdets.append(logdet)
        return self.unpatchify(x), y_out, outputs, logdets

    @staticmethod
    def get_loss(z: torch.Tensor, logdets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-dimension NLL without the 0.5 log(2 pi) constant (official get_loss): mean over the batch of
        0.5 mean(z^2) - sum over blocks of mean(logdet)."""
        loss_z = 0.5 * z.pow(2).mean(dim=tuple(range(1, z.dim())))
        loss_logdet = -sum(l.mean(dim=tuple(range(1, l.dim()))) for l in logdets)
        return {
            "loss": (loss_z + loss_logdet).mean(),
            "loss_z": loss_z.detach().mean(),
            "loss_logdet": loss_logdet.detach().mean(),
        }

    @staticmethod
    def latent_norm(outputs: list[torch.Tensor]) -> torch.Tensor:
        """sum of mean(o^2) over outputs[:-1] (train.py's latent_norm_regularization term: the raw input and
        every intermediate latent, not the final z)."""
        return sum(o.pow(2).mean() for o in outputs[:-1])

    @torch.no_grad()
    def reverse(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        attn_temp: float = 1.0,
        return_sequence: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: list[DecodeStats] | None = None,
    ):
        """Latent noise [B,C,H,W] -> sample [B,C,H,W]: the deep block first (guided), then the shallow blocks
        (unguided when cond_top_only). return_sequence: [input, after the deep block, ..., after block 0]."""
        check_decode_options(mode, jacobi_block, jacobi_tol, jacobi_max_iters)
        rope = self._rope_spec()
        opts = dict(
            mode=mode, jacobi_block=jacobi_block, jacobi_tol=jacobi_tol, jacobi_max_iters=jacobi_max_iters
        )
        seq = [x]
        x = self.patchify(x)
        for i in reversed(range(len(self.blocks))):
            block = self.blocks[i]
            st = DecodeStats(block=i) if stats is not None else None
            x = block.reverse(
                x, y if block.txt_dim > 0 else None, guidance, attn_temp, rope, stats=st, **opts
            )
            if st is not None:
                stats.append(st)
            seq.append(self.unpatchify(x))
            if i == len(self.blocks) - 1 and self.cond_top_only and guidance > 0:
                guidance, y = 0.0, y.chunk(2, dim=0)[0]  # the shallow blocks are unconditional
        return seq if return_sequence else seq[-1]

    def denoise(
        self, x: torch.Tensor, y: torch.Tensor | None, noise_std: float, lr: float = 1.0
    ) -> torch.Tensor:
        """Official utils.inference.self_denoise: x - lr * noise_std^2 * numel(x) * d loss_flow / dx, i.e. one
        Tweedie step x + noise_std^2 grad log p(x|y) per sample (lr = 1, the optimal step)."""
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            z, _, _, logdets = self(x, y)
            grad = torch.autograd.grad(self.get_loss(z, logdets)["loss"], [x])[0]
        return (x - (lr * noise_std**2 * x.numel()) * grad).detach()

    # --- cost model ----------------------------------------------------------------------------------------
    def block_flops_per_token(self, i: int) -> float:
        """Matmul FLOPs for one token through block i (multiply-add = 2) plus its causal attention."""
        block = self.blocks[i]
        if isinstance(block, IdentityBlock):
            return 0.0
        lin = sum(
            m.weight.numel()
            for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and not n.startswith("proj_txt")
        )
        ctx = (self.txt_size if block.txt_dim > 0 else 0) + (self.num_patches + 1) / 2
        width = block.attn_blocks[0].attention.q_size if len(block.attn_blocks) else 0
        return 2.0 * lin + len(block.attn_blocks) * 4.0 * width * ctx

    def flops_per_image(self) -> float:
        """Forward FLOPs of the whole flow for one image (every block over all tokens, the prefix included)."""
        total = 0.0
        for i, block in enumerate(self.blocks):
            tokens = self.num_patches + (self.txt_size if block.txt_dim > 0 else 0)
            total += tokens * self.block_flops_per_token(i)
        return total


# ----------------------------------------------------------------------------------------------------------------
# Golden parity (baselines/parity.py): family "normalizing_flow/starflow"
# ----------------------------------------------------------------------------------------------------------------


def parity_model(kwargs: dict[str, Any]) -> StarFlow:
    return StarFlow(**kwargs)


def _forward_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    with torch.no_grad():
        z, y_out, outputs, logdets = model(x, y)
        flow = model.get_loss(z, logdets)
        loss = flow["loss"] + LATENT_NORM_REG * model.latent_norm(outputs)
    return {
        "z": z,
        "y_out": y_out,
        "logdets": torch.stack(logdets),
        "outputs": torch.stack(outputs),
        "loss": loss,
        "loss_flow": flow["loss"],
        "loss_z": flow["loss_z"],
        "loss_logdet": flow["loss_logdet"],
    }


def _reverse_call(model, io, call, config, key: str, convention: str):
    z, y = (io[k] for k in call["inputs"])
    opts = config.get("conventions", {}).get(convention, {})
    seq = model.reverse(
        z, y, float(opts.get("guidance", 0.0)), float(opts.get("attn_temp", 1.0)), return_sequence=True
    )
    return {key: seq[-1], f"{key}_seq": torch.stack(seq)}


def _denoise_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    opts = config["conventions"]["denoise"]
    return {"x_denoised": model.denoise(x, y, float(opts["noise_std"]), float(opts.get("lr", 1.0)))}


PARITY_CALLS = {
    "forward": _forward_call,
    "reverse": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample", "reverse"),
    "reverse_cfg": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample_cfg", "reverse_cfg"),
    "denoise": _denoise_call,
}


# ----------------------------------------------------------------------------------------------------------------
# Uniform wrapper: generator, presets, recipe, backbone
# ----------------------------------------------------------------------------------------------------------------


class StarFlowGenerator(Generator):
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

    SAMPLER_KEYS = (
        "guidance",
        "attn_temp",
        "mode",
        "jacobi_block",
        "jacobi_tol",
        "jacobi_max_iters",
        "denoise",
        "denoise_lr",
        "noise_std",
    )

    def __init__(
        self,
        model: StarFlow,
        num_classes: int,
        noise_std: float = 0.3,
        label_drop: float = 0.1,
        latent_norm_reg: float = LATENT_NORM_REG,
    ):
        super().__init__()
        if model.txt_size != 1 or model.txt_dim != num_classes + 1:
            raise ValueError(
                f"class-conditional STARFlow needs txt_size=1 and txt_dim=num_classes+1={num_classes + 1}, "
                f"got txt_size={model.txt_size}, txt_dim={model.txt_dim}"
            )
        self.model = model
        self.num_classes = num_classes
        self.noise_std, self.label_drop, self.latent_norm_reg = (
            float(noise_std),
            float(label_drop),
            float(latent_norm_reg),
        )
        self.last_sample_stats = SampleStats()

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [B] in [0, K] (K = the null caption) -> one-hot captions [B, 1, K+1]."""
        return F.one_hot(labels.long(), self.num_classes + 1).float()[:, None]

    def loss(self, latents, labels, features=None, generator=None) -> dict[str, torch.Tensor]:
        _check_labels(labels, self.num_classes)
        x = latents + self.noise_std * torch.randn(
            latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
        y = labels.long()
        if self.label_drop > 0:
            y = torch.where(
                _drop_mask(y, self.label_drop, generator), torch.full_like(y, self.num_classes), y
            )
        z, _, outputs, logdets = self.model(x, self.condition(y))
        flow = self.model.get_loss(z, logdets)
        reg = self.latent_norm_reg * self.model.latent_norm(outputs)
        nll = flow["loss"].detach() + 0.5 * math.log(2 * math.pi)  # nats per dimension of the noisy latents
        return {
            "loss": flow["loss"] + reg,
            "nll": nll,
            "bits_per_dim_noisy": nll / math.log(2),
            "loss_z": flow["loss_z"],
            "loss_logdet": flow["loss_logdet"],
            "latent_norm": reg.detach(),
        }

    def _sampler(self, sampler: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(sampler) - set(self.SAMPLER_KEYS))
        if unknown:
            raise ValueError(f"unknown STARFlow sampler option(s) {unknown}; known: {self.SAMPLER_KEYS}")
        o = {
            "guidance": 0.0,
            "attn_temp": 1.0,
            "mode": "sequential",
            "jacobi_block": 16,
            "jacobi_tol": 1e-3,
            "jacobi_max_iters": 32,
            "denoise": True,
            "denoise_lr": 1.0,
            "noise_std": self.noise_std,
            **sampler,
        }
        check_decode_options(o["mode"], o["jacobi_block"], o["jacobi_tol"], o["jacobi_max_iters"])
        return o

    @torch.no_grad()
    def sample(self, labels, noise, generators=None, **sampler) -> torch.Tensor:
        """labels [B], noise [B,C,H,W] standard normal -> normalised latents [B,C,H,W] (deterministic given noise)."""
        o = self._sampler(sampler)
        _check_labels(labels, self.num_classes)
        y = self.condition(labels)
        y_in = (
            torch.cat([y, self.condition(torch.full_like(labels, self.num_classes))])
            if o["guidance"] > 0
            else y
        )
        t0 = time.perf_counter()
        stats: list[DecodeStats] = []
        x = self.model.reverse(
            noise.float(),
            y_in,
            o["guidance"],
            o["attn_temp"],
            mode=o["mode"],
            jacobi_block=o["jacobi_block"],
            jacobi_tol=o["jacobi_tol"],
            jacobi_max_iters=o["jacobi_max_iters"],
            stats=stats,
        )
        if o["denoise"]:
            x = self.model.denoise(x, y, o["noise_std"], o["denoise_lr"])
        wall = time.perf_counter() - t0
        m = self.model
        flops = sum((s.tokens + s.prefix_tokens) * s.rows * m.block_flops_per_token(s.block) for s in stats)
        passes = sum((s.passes + (1 if s.prefix_tokens else 0)) * s.rows for s in stats) + (
            2 if o["denoise"] else 0
        )
        self.last_sample_stats = SampleStats(
            stats, wall, passes, flops / m.flops_per_image() + (3.0 if o["denoise"] else 0.0)
        )
        return x

    def nfe(self, **sampler) -> int:
        o = self._sampler(sampler)
        m = self.model
        n = m.num_patches if m.use_sos else m.num_patches - 1
        per_block = (
            n
            if o["mode"] == "sequential"
            else _jacobi_worst_passes(n, o["jacobi_block"], o["jacobi_max_iters"])
        )
        total, guided = 0, o["guidance"] > 0
        for i, block in enumerate(m.blocks):
            if isinstance(block, IdentityBlock):
                continue
            rows = (
                2 if guided and block.txt_dim > 0 and (i == len(m.blocks) - 1 or not m.cond_top_only) else 1
            )
            total += (per_block + (1 if block.txt_dim > 0 else 0)) * rows
        return total + (2 if o["denoise"] else 0)

    def flops_per_image(self) -> float:
        return self.model.flops_per_image()

    @torch.no_grad()
    def eval_metrics(
        self, latents: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
    ) -> dict[str, float]:
        """Exact likelihood of held-out latents (conditional on the labels), in bits per latent dimension.

        Caveats: this is the density of the *continuous, normalised autoencoder latents*, not of pixels: it is not
        comparable to pixel-space bits/dim (no dequantisation, the autoencoder's information loss is not counted,
        and it shifts by log2(s) per dimension under a latent rescaling by s, e.g. the tokenizer's statistics).
        - bits_per_dim: the held-out training objective, -log2 p(z + sigma eps) / D with the training noise
          sigma (fixed seed): the Gaussian-smoothed latent density the model fits. It falls as the model learns.
        - bits_per_dim_clean: -log2 p(z) / D of the same model at the clean latents.
        """
        m = self.model
        was_training = m.training
        m.eval()
        g = torch.Generator(device=latents.device).manual_seed(0)
        noisy, clean = [], []
        for i in range(0, latents.shape[0], batch_size):
            x = latents[i : i + batch_size].float()
            lab = labels[i : i + batch_size]
            _check_labels(lab, self.num_classes)
            y = self.condition(lab)
            noisy.append(
                self._nll(x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device), y)
            )
            clean.append(self._nll(x, y))
        m.train(was_training)
        return {
            "bits_per_dim": float(torch.cat(noisy).mean()),
            "bits_per_dim_clean": float(torch.cat(clean).mean()),
        }

    def _nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, _, _, logdets = self.model(x, y)
        nats = 0.5 * z.pow(2).flatten(1).mean(1) + 0.5 * math.log(2 * math.pi)
        nats = nats - sum(l.flatten(1).mean(1) if l.dim() > 1 else l for l in logdets)
        return nats / math.log(2)


_PAPER_SWITCHES = dict(
    patch_size=1,
    head_dim=64,
    rope=1,
    sos=1,
    cond_top_only=1,
    use_softplus=1,
    use_final_norm=1,
    soft_clip=4.0,
    seq_order="L2R",
)  # configs/starflow_3B_t2i_256x256.yaml

# Presets: official constructor kwargs. img_size is the latent size (image size / 8 for SD-VAE), as train.py passes it.
STARFLOW_PRESETS: dict[str, dict[str, Any]] = {
    # CPU smoke suites: 32x32 images -> KLTokenizer("tiny-f4") 8x8x4 latents, 8 classes; paper switches, tiny sizes
    "tiny": dict(
        model=dict(
            _PAPER_SWITCHES,
            in_channels=4,
            img_size=8,
            channels=64,
            head_dim=32,
            num_blocks=3,
            layers_per_block=[1, 1, 4],
            txt_size=1,
            txt_dim=9,
        ),
        image_size=32,
        classes=8,
    ),
    # ImageNet 256 class-conditional, about 1.4B (official TarFlow_XLv2_1 "# 1.4B": 6 blocks [2,2,2,2,2,18], width 2048)
    "1.4B": dict(
        model=dict(
            _PAPER_SWITCHES,
            in_channels=4,
            img_size=32,
            channels=2048,
            num_blocks=6,
            layers_per_block=[2, 2, 2, 2, 2, 18],
            txt_size=1,
            txt_dim=1001,
        ),
        image_size=256,
        classes=1000,
    ),
    # text-to-image 256 (configs/starflow_3B_t2i_256x256.yaml: width 3072, [2,2,2,2,2,24], 128 flan-t5-xl tokens of 2048)
    "3.8B": dict(
        model=dict(
            _PAPER_SWITCHES,
            in_channels=4,
            img_size=32,
            channels=3072,
            num_blocks=6,
            layers_per_block=[2, 2, 2, 2, 2, 24],
            txt_size=128,
            txt_dim=2048,
        ),
        image_size=256,
        classes=None,
    ),
}

_STARFLOW_SOURCE = (
    "apple/ml-starflow @e565a46: train.py (AdamW betas (0.9, 0.95), weight_decay 1e-4, CosineLRSchedule: linear "
    "warmup over warmup_steps (default one epoch) then cosine to min_lr; no EMA; grad_clip 0 = off; bf16 autocast; "
    "NB the released train.py hard-codes needs_update = False so its optimizer never steps -- values are read from "
    "its arguments, not from a working run); configs/starflow_3B_t2i_256x256.yaml (lr 6.4e-5, min_lr 1e-6, "
    "batch 1024, noise_std 0.3, drop_label 0.1, latent_norm_regularization 1e-4, cfg 2.5, SD-VAE ft-EMA); "
    "scripts/test_sample_image.sh (jacobi 1, jacobi_th 1e-3, block 16; cfg 3.6 for text); sample.py (jacobi_max_iter "
    "32, self-denoising lr 1 at noise_std). ImageNet guidance and epoch budget: not in the release (unsure: cfg 2.5 "
    "from the config, 400 epochs as in the FAE paper's STARFlow comparison). tiny preset: our sizes, lr 1e-3."
)


def build_model(preset: str = "tiny", **overrides: Any) -> StarFlow:
    if preset not in STARFLOW_PRESETS:
        raise OptionError(f"unknown STARFlow preset {preset!r}; known: {', '.join(STARFLOW_PRESETS)}")
    return StarFlow(**{**STARFLOW_PRESETS[preset]["model"], **overrides})


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    vae_folder: str | Path | None = None,
    noise_std: float = 0.3,
    **options: Any,
) -> Backbone:
    """Registry entry "starflow". tiny: trainable KLTokenizer('tiny-f4') (stage 1 on the embedded suites) +
    STARFlow on its 8x8x4 latents. 1.4B: frozen SD-VAE ft-EMA from a local diffusers folder (`vae_folder`)."""
    from baselines import autoencoder

    if options:
        raise ValueError(f"unknown STARFlow backbone option(s) {sorted(options)}")
    if preset not in STARFLOW_PRESETS:
        raise OptionError(f"unknown STARFlow preset {preset!r}; known: {', '.join(STARFLOW_PRESETS)}")
    spec = STARFLOW_PRESETS[preset]
    if spec["classes"] is None:
        raise ValueError(
            f"STARFlow preset {preset!r} is text-to-image; use build_model({preset!r}) for its network "
            "(class-conditional backbones: tiny, 1.4B)"
        )
    K = spec["classes"] if num_classes is None else int(num_classes)
    image_size = spec["image_size"] if image_size is None else int(image_size)
    if preset == "tiny":
        tokenizer = autoencoder.sd_vae_standin("tiny-f4")
    else:
        if vae_folder is None:
            raise ValueError(
                f"STARFlow preset {preset!r} needs vae_folder=<local diffusers stabilityai/sd-vae-ft-ema folder>"
            )
        tokenizer = autoencoder.SDVAETokenizer(vae_folder)
    C, h, _ = tokenizer.latent_shape(image_size)
    model = build_model(preset, in_channels=C, img_size=h, txt_dim=K + 1)
    gen = StarFlowGenerator(model, K, noise_std=noise_std, label_drop=0.1)
    sampler = dict(
        guidance=2.5,
        mode="jacobi",
        jacobi_block=16,
        jacobi_tol=1e-3,
        jacobi_max_iters=32,
        denoise=True,
        denoise_lr=1.0,
    )
    if preset == "tiny":
        recipe = Recipe(
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
            sampler=sampler,
            stage1_epochs=10,
            source=_STARFLOW_SOURCE,
        )
    else:
        recipe = Recipe(
            lr=6.4e-5,
            betas=(0.9, 0.95),
            weight_decay=1e-4,
            batch_size=1024,
            epochs=400,
            lr_schedule="cosine",
            warmup_steps=0,
            min_lr=1e-6,
            ema_decay=0.0,
            grad_clip=None,
            label_drop=0.1,
            mixed_precision="bf16",
            sampler=sampler,
            source=_STARFLOW_SOURCE + " warmup_steps=0 here stands for 'one epoch'.",
        )
    return Backbone(
        name="starflow",
        family="normalizing_flow",
        tokenizer=tokenizer,
        generator=gen,
        recipe=recipe,
        notes={"space": "latent", "noise_std": noise_std, "preset": preset, "guidance_in": "deep block only"},
    )


if __name__ == "__main__":  # the commands live in baselines/flow_sizes.py (sizes, jacobi-bench)
    from baselines.flow_sizes import main

    sys.exit(main())
