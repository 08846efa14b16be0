"""TARFlow: Transformer AutoRegressive Flow (Zhai et al., "Normalizing Flows are Capable Generative Models",
arXiv 2412.06329; official code apple/ml-tarflow, `transformer_flow.py`, whose state_dict key names we keep).

A stack of affine autoregressive flow blocks over patch tokens. Block k reads the tokens in identity (k even) or
reversed (k odd) order, runs a causal pre-LayerNorm transformer and shifts its output right by one token, so the
parameters (a_t, b_t) of token t depend on tokens < t only: z_t = (x_t - b_t) * exp(-a_t) (paper Eq. 5). The
log-determinant is -sum(a); the official code averages it over tokens and features (a per-dimension NLL).
Sampling inverts the blocks last-to-first, token by token, with a key/value cache (or block-wise Jacobi).

This file also holds the machinery STARFlow (`baselines/starflow.py`) reuses: the key/value cache, causal
attention with a cache, and the sequential / block-wise Jacobi decoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines import ops
from baselines.api import Backbone, Generator, OptionError, Recipe, Tokenizer

# ----------------------------------------------------------------------------------------------------------------
# Shared flow machinery: key/value cache, causal attention, sequential and block-wise Jacobi decoding
# ----------------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys/values of one attention layer, preallocated to `capacity` positions: k, v [B, H, capacity, d].

    `append` writes a chunk at position `length`; `keep` [B] (bool) leaves the rows of finished samples untouched
    (block-wise Jacobi freezes each sample once it has converged, so its result does not depend on its batch).
    `rollback(n)` forgets the last n positions (a Jacobi iteration that has to be redone)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None):
        if self.k is None:
            B, H, _, d = k.shape
            self.k = k.new_zeros(B, H, self.capacity, d)
            self.v = v.new_zeros(B, H, self.capacity, d)
        s, c = self.length, k.shape[2]
        assert s + c <= self.capacity, f"KV cache overflow: {s} + {c} > {self.capacity}"
        if keep is None:
            self.k[:, :, s : s + c] = k
            self.v[:, :, s : s + c] = v
        else:
            m = keep.view(-1, 1, 1, 1)
            self.k[:, :, s : s + c] = torch.where(m, self.k[:, :, s : s + c], k)
            self.v[:, :, s : s + c] = torch.where(m, self.v[:, :, s : s + c], v)
        self.length = s + c

    def rollback(self, n: int) -> None:
        self.length = max(0, self.length - n)


def causal_attention(q, k, v, cache: KVCache | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Causal scaled-dot-product attention, q/k/v [B, H, c, d] -> [B, H, c, d] (scale 1/sqrt(d); fold a
    temperature into q). With a cache, k/v are appended first and the c queries sit at the cache's last c slots."""
    if cache is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    cache.append(k, v, keep)
    L, c = cache.length, q.shape[2]
    if c == 1:  # the sequential-sampling hot path: one query against the cache (fused op on GPU)
        return ops.kv_attention(q, cache.k, cache.v, L)
    mask = torch.ones(c, L, dtype=torch.bool, device=q.device).tril(L - c)
    return F.scaled_dot_product_attention(q, cache.k[:, :, :L], cache.v[:, :, :L], attn_mask=mask)


@dataclass
class DecodeStats:
    """Cost of inverting one flow block: `passes` sequential network calls, `tokens` token positions run through
    the block's transformer (per batch row), `rows` rows per sample (2 with a doubled CFG batch)."""

    block: int
    passes: int = 0
    tokens: int = 0
    rows: int = 1
    prefix_tokens: int = 0


SAMPLING_MODES = ("sequential", "jacobi")


def check_decode_options(mode: str, block_size: int, tol: float, max_iters: int) -> None:
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if mode == "jacobi":
        if int(block_size) < 1:
            raise ValueError(f"jacobi_block must be >= 1, got {block_size}")
        if not tol >= 0:
            raise ValueError(f"jacobi_tol must be >= 0, got {tol}")
        if int(max_iters) < 1:
            raise ValueError(f"jacobi_max_iters must be >= 1, got {max_iters}")


def autoregressive_decode(
    step: Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor | None], torch.Tensor],
    u: torch.Tensor,
    z: torch.Tensor,
    *,
    mode: str = "sequential",
    block_size: int = 16,
    tol: float = 1e-3,
    max_iters: int = 32,
    rollback: Callable[[int], None] | None = None,
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """Invert one autoregressive affine flow block.

    u [B, n+1, D]: the block's input sequence; u[:, 0] is known (STARFlow's start token, or TARFlow's token 0,
    which passes unchanged), u[:, 1:] is overwritten. z [B, n, D]: the latent values of the n targets.
    `step(inp [B,c,D], start, z_chunk [B,c,D], keep)` runs the network on inputs u[start:start+c] (appending
    their keys/values to the caches; rows with keep=True are not rewritten) and returns the inverted targets
    u[start+1 : start+1+c] given those inputs.

    - sequential: n single-token steps with the KV cache; exact.
    - jacobi (Song et al. 2021; STARFlow Sec. 3.4): chunks of `block_size` targets; each chunk starts from
      u = z (the official initialisation) and repeats the parallel update until the per-sample relative change
      mean((new-old)^2)/mean(new^2) <= tol, then that sample is frozen. After c iterations a chunk of c
      targets equals the sequential result (its triangular system is solved one position per iteration), so a
      chunk never runs more than c iterations and tol = 0 reproduces sequential decoding exactly.
    """
    B, n = z.shape[:2]
    assert u.shape[1] == n + 1, (u.shape, z.shape)
    if mode == "sequential":
        for t in range(n):
            u[:, t + 1 : t + 2] = step(u[:, t : t + 1], t, z[:, t : t + 1], None)
            if stats is not None:
                stats.passes += 1
                stats.tokens += 1
        return u
    check_decode_options(mode, block_size, tol, max_iters)
    assert rollback is not None
    start = 0
    while start < n:
        c = min(int(block_size), n - start)
        done = torch.zeros(B, dtype=torch.bool, device=u.device)
        for it in range(min(int(max_iters), c)):
            new = step(
                u[:, start : start + c], start, z[:, start : start + c], done if bool(done.any()) else None
            )
            if stats is not None:
                stats.passes += 1
                stats.tokens += c
            old = u[:, start + 1 : start + 1 + c]
            rel = (new - old).float().pow(2).flatten(1).mean(1) / new.float().pow(2).flatten(1).mean(
                1
            ).clamp_min(1e-30)
            u[:, start + 1 : start + 1 + c] = torch.where(done.view(-1, 1, 1), old, new)
            done = done | (rel <= tol)
            if bool(done.all()) or it + 1 == min(int(max_iters), c):
                break  # keep the caches of the last iteration (as the official code does)
            rollback(c)
        start += c
    return u


# ----------------------------------------------------------------------------------------------------------------
# TARFlow model (official: transformer_flow.Model)
# ----------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Pre-LayerNorm multi-head causal self-attention; qkv laid out [all q heads | all k heads | all v heads]."""

    def __init__(self, in_channels: int, head_channels: int):
        super().__init__()
        if in_channels % head_channels:
            raise ValueError(f"channels {in_channels} must be a multiple of the head width {head_channels}")
        self.norm = nn.LayerNorm(in_channels)
        self.qkv = nn.Linear(in_channels, in_channels * 3)
        self.proj = nn.Linear(in_channels, in_channels)
        self.num_heads = in_channels // head_channels

    def forward(self, x, cache: KVCache | None = None, q_scale=None, keep=None) -> torch.Tensor:
        B, T, C = x.shape
        h = self.norm(x.float()).type(x.dtype)
        q, k, v = (
            self.qkv(h).reshape(B, T, 3 * self.num_heads, -1).transpose(1, 2).chunk(3, dim=1)
        )  # [B,H,T,d]
        if q_scale is not None:  # per-row attention temperature (the CFG branch's attn_temp): scores / temp
            q = q * q_scale
        o = causal_attention(q, k, v, cache, keep)  # [B,H,T,d]
        return self.proj(o.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, channels: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.main = nn.Sequential(
            nn.Linear(channels, channels * expansion), nn.GELU(), nn.Linear(channels * expansion, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(self.norm(x.float()).type(x.dtype))


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_channels: int, expansion: int = 4):
        super().__init__()
        self.attention = Attention(channels, head_channels)
        self.mlp = MLP(channels, expansion)

    def forward(self, x, cache=None, q_scale=None, keep=None) -> torch.Tensor:
        x = x + self.attention(x, cache, q_scale, keep)
        return x + self.mlp(x)


class MetaBlock(nn.Module):
    """One flow block: permutation, proj_in + positional table + class embedding, causal layers, proj_out, shift."""

    attn_mask: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_patches: int,
        flip: bool,
        num_layers: int = 1,
        head_dim: int = 64,
        expansion: int = 4,
        nvp: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, channels)
        self.pos_embed = nn.Parameter(torch.randn(num_patches, channels) * 1e-2)
        self.class_embed = nn.Parameter(torch.randn(num_classes, 1, channels) * 1e-2) if num_classes else None
        self.attn_blocks = nn.ModuleList(
            [AttentionBlock(channels, head_dim, expansion) for _ in range(num_layers)]
        )
        self.nvp = nvp
        self.proj_out = nn.Linear(channels, in_channels * 2 if nvp else in_channels)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as the identity map
        self.flip = flip
        # unused at run time (causality comes from the attention call), kept for official state_dict compatibility
        self.register_buffer("attn_mask", torch.tril(torch.ones(num_patches, num_patches)))

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x.flip(dims=[dim]) if self.flip else x  # a flip is its own inverse

    def cond(self, y: torch.Tensor | None, B: int) -> torch.Tensor | None:
        """Class embedding [B,1,C]; y None -> mean embedding for all; y < 0 (dropped label) -> mean embedding."""
        if self.class_embed is None:
            return None
        mean = self.class_embed.mean(dim=0)  # [1,C]
        if y is None:
            return mean.expand(B, 1, -1)
        e = self.class_embed[y.clamp_min(0)]  # [B,1,C]
        return torch.where((y < 0).view(-1, 1, 1), mean.expand_as(e), e)

    def _ab(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.nvp:
            a, b = o.chunk(2, dim=-1)
            return a, b
        return torch.zeros_like(o), o

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,T,D] -> (z [B,T,D], logdet [B] = -mean of a over T*D)."""
        x = self.permute(x)
        h = self.proj_in(x) + self.permute(self.pos_embed, dim=0)  # the positional row follows its patch
        c = self.cond(y, x.shape[0])
        if c is not None:
            h = h + c
        for block in self.attn_blocks:
            h = block(h)
        o = self.proj_out(h)
        o = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)  # token t is predicted from tokens < t
        a, b = self._ab(o)
        # z = (x - b) exp(-a), logdet = -mean(a) over T*D (one fused kernel with its backward on GPU)
        z, logdet = ops.affine_forward(x, a, b)
        return self.permute(z), logdet

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: DecodeStats | None = None,
    ) -> torch.Tensor:
        """Inverse of `forward`: z [B,T,D] -> x [B,T,D]. Guidance (official MetaBlock.reverse): an unconditional
        pass (mean class embedding, its own KV cache, attention temperature attn_temp) on the same guided
        prefix; a <- a + w (a - a_u), b <- b + w (b - b_u), with w annealed as w (i+1)/(T-1) if asked."""
        z = self.permute(z)
        pos = self.permute(self.pos_embed, dim=0)
        B, T, _ = z.shape
        guided = guidance > 0 and bool(guide_what)
        cond = self.cond(y, B)
        q_scale = None
        if guided:
            cond = torch.cat([cond, self.cond(None, B)]) if cond is not None else None
            if attn_temp != 1.0:
                q_scale = torch.cat([z.new_ones(B), z.new_full((B,), 1.0 / attn_temp)]).view(-1, 1, 1, 1)
        caches = [KVCache(T) for _ in self.attn_blocks]
        if stats is not None:
            stats.rows = 2 if guided else 1

        def step(inp, start, zc, keep):
            c = inp.shape[1]
            if guided:
                inp = torch.cat([inp, inp])
                keep = torch.cat([keep, keep]) if keep is not None else None
            h = self.proj_in(inp) + pos[start : start + c]
            if cond is not None:
                h = h + cond
            for block, cache in zip(self.attn_blocks, caches):
                h = block(h, cache, q_scale, keep)
            a, b = self._ab(self.proj_out(h))
            if guided:
                (a, a_u), (b, b_u) = a.chunk(2), b.chunk(2)
                g = guidance
                if annealed_guidance:
                    i = torch.arange(start, start + c, device=a.device, dtype=a.dtype).view(1, -1, 1)
                    g = (i + 1) / (T - 1) * guidance
                if "a" in guide_what:
                    a = a + g * (a - a_u)
                if "b" in guide_what:
                    b = b + g * (b - b_u)
            return ops.affine_inverse(zc, a, b)

        def rollback(n):
            for cache in caches:
                cache.rollback(n)

        x = autoregressive_decode(
            step,
            z.clone(),
            z[:, 1:],
            mode=mode,
            block_size=jacobi_block,
            tol=jacobi_tol,
            max_iters=jacobi_max_iters,
            rollback=rollback,
            stats=stats,
        )
        return self.permute(x)


class TarFlow(nn.Module):
    """The official `transformer_flow.Model` (constructor names and state_dict keys as released)."""

    var: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        patch_size: int,
        channels: int,
        num_blocks: int,
        layers_per_block: int,
        nvp: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.channels, self.num_classes, self.nvp = channels, num_classes, nvp
        self.num_patches = (img_size // patch_size) ** 2
        self.head_dim = 64  # hard-wired in the official Model (MetaBlock default), like the MLP expansion 4
        d = in_channels * patch_size**2
        self.blocks = nn.ModuleList(
            [
                MetaBlock(
                    d,
                    channels,
                    self.num_patches,
                    i % 2 == 1,
                    layers_per_block,
                    self.head_dim,
                    4,
                    nvp,
                    num_classes,
                )
                for i in range(num_blocks)
            ]
        )
        # prior variance: ones in nvp mode; learned by running average in the volume-preserving mode
        self.register_buffer("var", torch.ones(self.num_patches, d))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> [B,T,C*p*p] (unfold order: channel-major inside a token, tokens row-major)."""
        return F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return F.fold(
            x.transpose(1, 2), (self.img_size, self.img_size), self.patch_size, stride=self.patch_size
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """x [B,C,H,W] -> (z [B,T,D], outputs: list of each block's output [B,T,D], logdets [B])."""
        x = self.patchify(x)
        outputs, logdets = [], torch.zeros((), device=x.device)
        for block in self.blocks:
            x, logdet = block(x, y)
            logdets = logdets + logdet
            outputs.append(x)
        return x, outputs, logdets

    @staticmethod
    def get_loss(z: torch.Tensor, logdets: torch.Tensor) -> torch.Tensor:
        """Per-dimension NLL without the 0.5 log(2 pi) constant (the official training objective)."""
        return 0.5 * z.pow(2).mean() - logdets.mean()

    def update_prior(self, z: torch.Tensor, lr: float = 0.1) -> None:
        """Volume-preserving mode (nvp=False) only: running average of E[z^2] as the prior variance."""
        self.var.lerp_((z.detach() ** 2).mean(dim=0), weight=lr)

    @torch.no_grad()
    def reverse(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        guidance: float = 0.0,
        guide_what: str = "ab",
        attn_temp: float = 1.0,
        annealed_guidance: bool = False,
        return_sequence: bool = False,
        *,
        mode: str = "sequential",
        jacobi_block: int = 16,
        jacobi_tol: float = 1e-3,
        jacobi_max_iters: int = 32,
        stats: list[DecodeStats] | None = None,
    ):
        """z [B,T,D] (token layout) -> image [B,C,H,W]; blocks are inverted last to first. With return_sequence,
        the list [z, after the last block, ..., after block 0] in image layout (the official return_sequence)."""
        check_decode_options(mode, jacobi_block, jacobi_tol, jacobi_max_iters)
        seq = [self.unpatchify(z)]
        x = z * self.var.sqrt()
        for i in reversed(range(len(self.blocks))):
            st = DecodeStats(block=i) if stats is not None else None
            x = self.blocks[i].reverse(
                x,
                y,
                guidance,
                guide_what,
                attn_temp,
                annealed_guidance,
                mode=mode,
                jacobi_block=jacobi_block,
                jacobi_tol=jacobi_tol,
                jacobi_max_iters=jacobi_max_iters,
                stats=st,
            )
            if st is not None:
                stats.append(st)
            seq.append(self.unpatchify(x))
        return seq if return_sequence else seq[-1]

    def denoise(
        self, x: torch.Tensor, y: torch.Tensor | None, noise_std: float, lr: float = 1.0
    ) -> torch.Tensor:
        """Score-based self-denoising (official evaluate_fid.py): x - lr * numel(x) * noise_std^2 * d loss / dx.
        The loss averages over all B*T*D entries, so this is one Tweedie step x + noise_std^2 grad log p(x|y) per
        sample (lr = 1 is the theoretically optimal step)."""
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            z, _, logdets = self(x, y)
            grad = torch.autograd.grad(self.get_loss(z, logdets), [x])[0]
        return (x - (lr * x.numel() * noise_std**2) * grad).detach()

    # --- cost model ----------------------------------------------------------------------------------------
    def block_flops_per_token(self) -> float:
        """Matmul FLOPs of one token through one block (multiply-add = 2), plus its causal attention (average
        context (T+1)/2)."""
        C, T, d = self.channels, self.num_patches, self.in_channels * self.patch_size**2
        layers = len(self.blocks[0].attn_blocks)
        lin = d * C + layers * 12 * C * C + C * (2 * d if self.nvp else d)
        return 2.0 * lin + layers * 4.0 * C * (T + 1) / 2

    def flops_per_image(self) -> float:
        """Forward FLOPs of the whole flow for one image (all blocks over all T tokens)."""
        return len(self.blocks) * self.num_patches * self.block_flops_per_token()


# ----------------------------------------------------------------------------------------------------------------
# Golden parity (baselines/parity.py): family "normalizing_flow/tarflow"
# ----------------------------------------------------------------------------------------------------------------

_OFFICIAL_KWARGS = (
    "in_channels",
    "img_size",
    "patch_size",
    "channels",
    "num_blocks",
    "layers_per_block",
    "nvp",
    "num_classes",
)


def parity_model(kwargs: dict[str, Any]) -> TarFlow:
    unknown = sorted(set(kwargs) - set(_OFFICIAL_KWARGS))
    if unknown:
        raise ValueError(f"unknown TARFlow constructor argument(s) {unknown}; official: {_OFFICIAL_KWARGS}")
    return TarFlow(**kwargs)


def _forward_call(model, io, call, config, suffix=""):
    x, y = (io[k] for k in call["inputs"])
    with torch.no_grad():
        z, outputs, logdets = model(x, y)
    out = {f"z{suffix}": z, f"logdets{suffix}": logdets, f"loss{suffix}": model.get_loss(z, logdets)}
    if not suffix:
        out["block_outputs"] = torch.stack(outputs)
    return out


def _reverse_call(model, io, call, config, key: str, convention: str | None, uncond: bool = False):
    z = io[call["inputs"][0]]
    y = None if uncond else io[call["inputs"][1]]
    opts = dict(config.get("conventions", {}).get(convention, {})) if convention else {}
    kw = {k: opts[k] for k in ("guidance", "guide_what", "attn_temp", "annealed_guidance") if k in opts}
    return {key: model.reverse(z, y, **kw)}


def _denoise_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    opts = config["conventions"]["denoise"]
    return {
        "x_denoised": model.denoise(x, y, float(opts["noise_std"]), float(opts.get("self_denoising_lr", 1.0)))
    }


PARITY_CALLS = {
    "forward": lambda m, io, c, cfg: _forward_call(m, io, c, cfg),
    "forward_drop": lambda m, io, c, cfg: _forward_call(m, io, c, cfg, "_drop"),
    "reverse": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample", None),
    "reverse_uncond": lambda m, io, c, cfg: _reverse_call(
        m, io, c, cfg, "x_sample_uncond", None, uncond=True
    ),
    "reverse_cfg": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample_cfg", "reverse_cfg"),
    "reverse_cfg_annealed": lambda m, io, c, cfg: _reverse_call(
        m, io, c, cfg, "x_sample_cfg_annealed", "reverse_cfg_annealed"
    ),
    "denoise": _denoise_call,
}


# ----------------------------------------------------------------------------------------------------------------
# Uniform wrapper: pixel tokenizer, generator, recipe, presets
# ----------------------------------------------------------------------------------------------------------------


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


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if num_classes and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )


def _drop_mask(labels: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(labels.shape, generator=generator, device=labels.device) < p


@dataclass
class SampleStats:
    """What the last `sample` call cost: per-block decode stats, wall time, and derived totals."""

    blocks: list[DecodeStats] = field(default_factory=list)
    wall_s: float = 0.0
    nfe: int = 0  # sequential network calls (a CFG pair counts 2), incl. the prefix pass and the denoise step
    forward_equivalents: float = 0.0  # sampling FLOPs / flops_per_image()

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "nfe": self.nfe,
            "forward_equivalents": self.forward_equivalents,
            "passes": sum(b.passes for b in self.blocks),
        }


class TarFlowGenerator(Generator):
    """TARFlow behind the uniform Generator API (pixel space, class-conditional).

    Training (official train.py): Gaussian noise augmentation x + sigma * eps in pixel units (paper: 0.05 on
    ImageNet 64, 0.15 on ImageNet 128, 0.07 on AFHQ), dropped labels (prob. label_drop) use the mean class
    embedding, loss = 0.5 mean(z^2) - mean(logdet).

    Sampling options: guidance (w, 0 = off), guide_what ('ab'), attn_temp, annealed_guidance (the official
    evaluate_fid.py uses True), mode 'sequential' | 'jacobi' with jacobi_block / jacobi_tol / jacobi_max_iters,
    denoise (one Tweedie step, official step size lr = 1 at the training noise level), denoise_lr, noise_std.
    `nfe()` counts sequential network calls of one block (a CFG pair counts 2; Jacobi: its worst case); what a
    call actually cost is in `last_sample_stats` (wall time, passes, FLOP-weighted forward equivalents).
    """

    SAMPLER_KEYS = (
        "guidance",
        "guide_what",
        "attn_temp",
        "annealed_guidance",
        "mode",
        "jacobi_block",
        "jacobi_tol",
        "jacobi_max_iters",
        "denoise",
        "denoise_lr",
        "noise_std",
    )

    def __init__(self, model: TarFlow, noise_std: float = 0.05, label_drop: float = 0.1):
        super().__init__()
        self.model = model
        self.noise_std = float(noise_std)
        self.label_drop = float(label_drop)
        self.num_classes = model.num_classes
        self.last_sample_stats = SampleStats()

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None or not self.num_classes:
            return None
        _check_labels(labels, self.num_classes)
        return labels.long()

    def loss(self, latents, labels, features=None, generator=None) -> dict[str, torch.Tensor]:
        x = latents + self.noise_std * torch.randn(
            latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
        y = self._labels(labels)
        if y is not None and self.label_drop > 0:
            y = torch.where(
                _drop_mask(y, self.label_drop, generator), torch.full_like(y, -1), y
            )  # -1: mean embedding
        z, _, logdets = self.model(x, y)
        loss = self.model.get_loss(z, logdets)
        with torch.no_grad():
            loss_z, loss_logdet = 0.5 * z.pow(2).mean(), -logdets.mean()
        nll = loss.detach() + 0.5 * math.log(2 * math.pi)  # nats per dimension of the noisy data
        return {
            "loss": loss,
            "nll": nll,
            "bits_per_dim_noisy": nll / math.log(2),
            "loss_z": loss_z,
            "loss_logdet": loss_logdet,
        }

    def _sampler(self, sampler: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(sampler) - set(self.SAMPLER_KEYS))
        if unknown:
            raise ValueError(f"unknown TARFlow sampler option(s) {unknown}; known: {self.SAMPLER_KEYS}")
        opts = {
            "guidance": 0.0,
            "guide_what": "ab",
            "attn_temp": 1.0,
            "annealed_guidance": False,
            "mode": "sequential",
            "jacobi_block": 16,
            "jacobi_tol": 1e-3,
            "jacobi_max_iters": 32,
            "denoise": True,
            "denoise_lr": 1.0,
            "noise_std": self.noise_std,
            **sampler,
        }
        check_decode_options(opts["mode"], opts["jacobi_block"], opts["jacobi_tol"], opts["jacobi_max_iters"])
        return opts

    @torch.no_grad()
    def sample(self, labels, noise, generators=None, **sampler) -> torch.Tensor:
        """labels [B], noise [B,3,H,W] standard normal (patchified into the token-layout prior) -> pixels."""
        o = self._sampler(sampler)
        m = self.model
        y = self._labels(labels)
        t0 = time.perf_counter()
        stats: list[DecodeStats] = []
        x = m.reverse(
            m.patchify(noise.float()),
            y,
            o["guidance"],
            o["guide_what"],
            o["attn_temp"],
            o["annealed_guidance"],
            mode=o["mode"],
            jacobi_block=o["jacobi_block"],
            jacobi_tol=o["jacobi_tol"],
            jacobi_max_iters=o["jacobi_max_iters"],
            stats=stats,
        )
        if o["denoise"]:
            x = m.denoise(x, y, o["noise_std"], o["denoise_lr"])
        wall = time.perf_counter() - t0
        fwd = sum(s.tokens * s.rows for s in stats) / (len(m.blocks) * m.num_patches)
        self.last_sample_stats = SampleStats(
            stats,
            wall,
            self.nfe(**sampler)
            if o["mode"] == "sequential"
            else sum(s.passes * s.rows for s in stats) + (2 if o["denoise"] else 0),
            fwd + (3.0 if o["denoise"] else 0.0),
        )
        return x

    def nfe(self, **sampler) -> int:
        o = self._sampler(sampler)
        T, rows = self.model.num_patches, 2 if o["guidance"] > 0 else 1
        n = T - 1
        per_block = (
            n
            if o["mode"] == "sequential"
            else _jacobi_worst_passes(n, o["jacobi_block"], o["jacobi_max_iters"])
        )
        return len(self.model.blocks) * per_block * rows + (
            2 if o["denoise"] else 0
        )  # denoise: forward + backward

    def flops_per_image(self) -> float:
        return self.model.flops_per_image()

    @torch.no_grad()
    def eval_metrics(
        self, latents: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
    ) -> dict[str, float]:
        """Exact likelihood on held-out pixels in [-1, 1] (8-bit images), conditional on the labels.

        - bits_per_dim: uniform dequantisation x = (x_int + u) / 256 * 2 - 1 with u ~ U[0,1)^D (fixed seed), as the
          official evaluate_bpd.py: -log2 p(x)/D + log2(128). For any continuous density this upper-bounds the
          discrete 8-bit NLL and is the number comparable with the pixel-space literature (ImageNet 64: about 2.99).
          A model trained with Gaussian noise augmentation (the generation setting) is scored off its training
          distribution here, so its value is worse than one trained with uniform noise (the density setting).
        - bits_per_dim_noisy: the training objective on held-out data, -log2 p(x + sigma eps)/D (fixed seed): the
          density of the Gaussian-smoothed data that the model actually fits; not a bound on the discrete NLL.
        """
        m = self.model
        was_training = m.training
        m.eval()
        g = torch.Generator(device=latents.device).manual_seed(0)
        bpd_u, bpd_n = [], []
        for i in range(0, latents.shape[0], batch_size):
            x = latents[i : i + batch_size].float()
            y = self._labels(labels[i : i + batch_size]) if labels is not None else None
            x_int = ((x + 1) * (255 / 2)).round()
            x_deq = (x_int + torch.rand(x.shape, generator=g, device=x.device)) / 256 * 2 - 1
            bpd_u.append(self._nll(x_deq, y) + math.log(128) / math.log(2))
            x_noisy = x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device)
            bpd_n.append(self._nll(x_noisy, y))
        m.train(was_training)
        return {
            "bits_per_dim": float(torch.cat(bpd_u).mean()),
            "bits_per_dim_noisy": float(torch.cat(bpd_n).mean()),
        }

    def _nll(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Per-sample -log2 p(x) / D of the continuous density."""
        z, _, logdets = self.model(x, y)
        nats = 0.5 * z.pow(2).flatten(1).mean(1) + 0.5 * math.log(2 * math.pi) - logdets
        return nats / math.log(2)


def _jacobi_worst_passes(n: int, block: int, max_iters: int) -> int:
    full, rest = divmod(n, int(block))
    return full * min(int(max_iters), int(block)) + (min(int(max_iters), rest) if rest else 0)


# Presets: official constructor kwargs (apple/ml-tarflow README commands) + training noise level.
TARFLOW_PRESETS: dict[str, dict[str, Any]] = {
    # CPU smoke suites: 32x32 pixels, patch 4 -> 64 tokens of 48 features, 8 embedded classes
    "tiny": dict(
        model=dict(
            in_channels=3,
            img_size=32,
            patch_size=4,
            channels=64,
            num_blocks=4,
            layers_per_block=2,
            nvp=True,
            num_classes=8,
        ),
        noise_std=0.05,
    ),
    "imagenet64": dict(
        model=dict(
            in_channels=3,
            img_size=64,
            patch_size=2,
            channels=768,
            num_blocks=8,
            layers_per_block=8,
            nvp=True,
            num_classes=1000,
        ),
        noise_std=0.05,
    ),
    "imagenet128": dict(
        model=dict(
            in_channels=3,
            img_size=128,
            patch_size=4,
            channels=1024,
            num_blocks=8,
            layers_per_block=8,
            nvp=True,
            num_classes=1000,
        ),
        noise_std=0.15,
    ),
    "afhq256": dict(
        model=dict(
            in_channels=3,
            img_size=256,
            patch_size=8,
            channels=768,
            num_blocks=8,
            layers_per_block=8,
            nvp=True,
            num_classes=3,
        ),
        noise_std=0.07,
    ),
}

_TARFLOW_SOURCE = (
    "apple/ml-tarflow @313120e: train.py (AdamW betas (0.9, 0.95), weight_decay 1e-4, CosineLRSchedule with one "
    "epoch of linear warmup from 1e-6 and cosine to min lr 1e-6, no EMA, no grad clipping, bf16 autocast); README "
    "commands (lr 1e-4, batch 256 (768 for ImageNet 128), drop_label 0.1, noise_std 0.05 / 0.15 / 0.07, ImageNet 64 "
    "cond: 200 epochs, evaluate_fid --cfg 2.3); evaluate_fid.py (annealed_guidance=True, attn_temp 1, "
    "self_denoising_lr 1); guidance for ImageNet 128 / AFHQ is not in the README (0 here). tiny preset: our size "
    "(width 64, 4x2 layers), lr 1e-3 for CPU smoke runs, the ImageNet-64 sampler (guidance 2.3, annealed)."
)


def build_model(preset: str = "tiny", **overrides: Any) -> TarFlow:
    if preset not in TARFLOW_PRESETS:
        raise OptionError(f"unknown TARFlow preset {preset!r}; known: {', '.join(TARFLOW_PRESETS)}")
    return parity_model({**TARFLOW_PRESETS[preset]["model"], **overrides})


def build_backbone(
    preset: str = "tiny",
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    noise_std: float | None = None,
    **options: Any,
) -> Backbone:
    """Registry entry "tarflow": PixelTokenizer + TarFlowGenerator + the official recipe."""
    if options:
        raise ValueError(f"unknown TARFlow backbone option(s) {sorted(options)}")
    if preset not in TARFLOW_PRESETS:
        raise OptionError(f"unknown TARFlow preset {preset!r}; known: {', '.join(TARFLOW_PRESETS)}")
    spec = TARFLOW_PRESETS[preset]
    over = {}
    if num_classes is not None:
        over["num_classes"] = num_classes
    if image_size is not None:
        over["img_size"] = image_size
    model = build_model(preset, **over)
    gen = TarFlowGenerator(model, spec["noise_std"] if noise_std is None else noise_std, label_drop=0.1)
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
            sampler=dict(
                guidance=2.3,
                annealed_guidance=True,
                attn_temp=1.0,
                mode="sequential",
                denoise=True,
                denoise_lr=1.0,
            ),
            source=_TARFLOW_SOURCE,
        )
    else:
        big = preset == "imagenet128"
        recipe = Recipe(
            lr=1e-4,
            betas=(0.9, 0.95),
            weight_decay=1e-4,
            batch_size=768 if big else 256,
            epochs=320 if big else 200,
            lr_schedule="cosine",
            warmup_steps=0,
            min_lr=1e-6,
            ema_decay=0.0,
            grad_clip=None,
            label_drop=0.1,
            mixed_precision="bf16",
            sampler=dict(
                guidance=2.3 if preset == "imagenet64" else 0.0,
                annealed_guidance=True,
                attn_temp=1.0,
                mode="sequential",
                denoise=True,
                denoise_lr=1.0,
            ),
            source=_TARFLOW_SOURCE + " warmup_steps=0 here stands for 'one epoch' (set by the suite).",
        )
    return Backbone(
        name="tarflow",
        family="normalizing_flow",
        tokenizer=PixelTokenizer(),
        generator=gen,
        recipe=recipe,
        notes={"space": "pixel", "noise_std": gen.noise_std, "preset": preset},
    )
