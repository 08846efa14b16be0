"""What the two autoregressive flows (TARFlow `baselines/tarflow.py`, STARFlow `baselines/starflow.py`) share.

- the key/value cache, causal attention with a cache, and the sequential / block-wise Jacobi decoder of one
  affine autoregressive block (`autoregressive_decode`), with its cost accounting (DecodeStats, SampleStats);
- the pre-norm causal transformer layer of both official `transformer_flow.py` files (`AttentionBlock`: the same
  key names `attention.{norm,qkv,proj}`, `mlp.{norm,main}`; STARFlow's extra switches default to TARFlow's layer);
- `FlowGenerator`: the uniform Generator around such a flow (noise-augmented NLL loss, label dropout, sampler
  defaults, timed sampling + optional Tweedie denoising, NFE, held-out bits/dim loop).
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
from baselines.api import FlowSampler, Generator, check_decode_options
from baselines.layers import UnitOffsetRMSNorm

# ----------------------------------------------------------------------------------------------------------------
# Key/value cache, causal attention, sequential and block-wise Jacobi decoding
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


def score_step(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step: float) -> torch.Tensor:
    """x - step * d loss(x) / dx: the flows' self-denoising (one Tweedie step x + sigma^2 grad log p(x) when loss
    is the per-dimension NLL mean and step = lr * numel(x) * sigma^2; each caller keeps its release's product order)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        grad = torch.autograd.grad(loss(x), [x])[0]
    return (x - step * grad).detach()


def jacobi_worst_passes(n: int, block: int, max_iters: int) -> int:
    """Sequential network calls of block-wise Jacobi over n targets in the worst case (no early convergence)."""
    full, rest = divmod(n, int(block))
    return full * min(int(max_iters), int(block)) + (min(int(max_iters), rest) if rest else 0)


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if num_classes and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )


def drop_mask(labels: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B] bool: which labels the training step replaces by the null condition (prob. p, seeded)."""
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


# ----------------------------------------------------------------------------------------------------------------
# The causal transformer layer of both flows (official transformer_flow.{Attention, MLP, AttentionBlock})
# ----------------------------------------------------------------------------------------------------------------


def flow_norm(norm_type: str, dim: int) -> nn.Module:
    """STARFlow's norm_type switch (TARFlow: always layer_norm); rms_norm is the (1 + weight) RMSNorm."""
    if norm_type == "layer_norm":
        return nn.LayerNorm(dim)
    if norm_type == "rms_norm":
        return UnitOffsetRMSNorm(dim)
    if norm_type == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm_type {norm_type!r}; expected layer_norm, rms_norm or none")


def _pre_norm(norm: nn.Module, x: torch.Tensor, fp32: bool) -> torch.Tensor:
    # TARFlow normalises in float32 and casts back (official `self.norm(x.float()).type(x.dtype)`); STARFlow
    # normalises in the input dtype. Identical in float32.
    return norm(x.float()).type(x.dtype) if fp32 else norm(x)


class Attention(nn.Module):
    """Pre-norm multi-head causal self-attention; qkv laid out [all q heads | all k heads | all v heads]
    (GQA when num_kv_heads < num_heads). Keys `norm`, `qkv`, `proj` (+ `query_norm`, `key_norm`, `post_norm`)."""

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
        norm_fp32: bool = False,
    ):
        super().__init__()
        self.norm = flow_norm(norm_type, in_channels)
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
        self.query_norm = UnitOffsetRMSNorm(head_channels) if use_qk_norm else None
        self.key_norm = UnitOffsetRMSNorm(head_channels) if use_qk_norm else None
        self.post_norm = UnitOffsetRMSNorm(in_channels) if use_post_norm else None
        self.hf_style_rope, self.norm_fp32 = hf_style_rope, norm_fp32

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if not self.hf_style_rope:
            return ops.rope(x, cos, sin)
        d = x.shape[-1]  # half-split layout: rotate (x_i, x_{i+d/2}) pairs by moving them next to each other
        x = x.unflatten(-1, (2, d // 2)).transpose(-1, -2).flatten(-2)
        return ops.rope(x, cos, sin).unflatten(-1, (d // 2, 2)).transpose(-1, -2).flatten(-2)

    def forward(
        self, x, rope=None, cache: KVCache | None = None, keep=None, temp: float = 1.0, q_scale=None
    ) -> torch.Tensor:
        """x [B,T,C]; rope = (cos, sin) [T,d] for these T positions; cache/keep as in `causal_attention`.
        temp divides every query (STARFlow's attn_temp); q_scale [B,1,1,1] multiplies them per row (TARFlow's
        attention temperature of the unconditional CFG branch)."""
        B, T, _ = x.shape
        h = _pre_norm(self.norm, x, self.norm_fp32)
        q, k, v = self.qkv(h).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
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
        if q_scale is not None:
            q = q * q_scale
        o = causal_attention(q, k, v, cache, keep)
        o = self.proj(o.transpose(1, 2).reshape(B, T, self.q_size))
        return self.post_norm(o) if self.post_norm is not None else o


class MLP(nn.Module):
    """Pre-norm GELU MLP (keys `norm`, `main.{0,2}`) or STARFlow's gated variant (`gate_proj`, `up_proj`,
    `down_proj`, tanh-GELU gate)."""

    def __init__(
        self,
        channels: int,
        expansion: float = 4,
        use_swiglu: bool = False,
        norm_type: str = "layer_norm",
        use_post_norm: bool = False,
        use_bias: bool = True,
        norm_fp32: bool = False,
    ):
        super().__init__()
        self.norm = flow_norm(norm_type, channels)
        self.post_norm = UnitOffsetRMSNorm(channels) if use_post_norm else None
        self.use_swiglu, self.norm_fp32 = use_swiglu, norm_fp32
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
        h = _pre_norm(self.norm, x, self.norm_fp32)
        if self.use_swiglu:
            h = self.down_proj(F.gelu(self.gate_proj(h), approximate="tanh") * self.up_proj(h))
        else:
            h = self.main(h)
        return self.post_norm(h) if self.post_norm is not None else h


class AttentionBlock(nn.Module):
    """x + attention(x), then + mlp(x). Defaults = TARFlow's layer (with norm_fp32=True as TARFlow computes it)."""

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
        norm_fp32: bool = False,
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
            norm_fp32,
        )
        self.mlp = MLP(channels, expansion, use_swiglu, norm_type, use_post_norm, use_bias, norm_fp32)

    def forward(self, x, rope=None, cache=None, keep=None, temp: float = 1.0, q_scale=None) -> torch.Tensor:
        x = x + self.attention(x, rope, cache, keep, temp, q_scale)
        return x + self.mlp(x)


# ----------------------------------------------------------------------------------------------------------------
# The uniform Generator around an autoregressive flow
# ----------------------------------------------------------------------------------------------------------------


class FlowGenerator(Generator):
    """Shared loop of the flow generators; subclasses say how the model is conditioned and what a call costs.

    Training: x = latents + noise_std * eps, labels dropped to `null_label` with prob. label_drop (one seeded
    draw), loss from `_objective`; `nll` / `bits_per_dim_noisy` are per-dimension values of the noisy data.
    Sampling (`FlowSampler` settings): `_reverse` inverts the flow from the prior noise; `denoise` adds one
    Tweedie step at noise_std (default: the training noise; lr `denoise_lr`, 1 = optimal); the measured cost of
    the last call is in `last_sample_stats`.
    """

    NAME = "flow"
    settings_type = FlowSampler

    def __init__(self, model: nn.Module, num_classes: int, noise_std: float, label_drop: float):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.noise_std, self.label_drop = float(noise_std), float(label_drop)
        self.last_sample_stats = SampleStats()

    # --- hooks ----------------------------------------------------------------------------------------------
    null_label: int  # the label id of a dropped (unconditional) training label

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Validated training labels, or None for an unconditional model."""
        raise NotImplementedError

    def _objective(self, x: torch.Tensor, y: torch.Tensor | None):
        """-> (per-dimension flow NLL without the constant, total loss, extra parts to log)."""
        raise NotImplementedError

    def _condition(self, labels: torch.Tensor):
        """Sampling labels -> what the model's reverse/denoise take as condition."""
        raise NotImplementedError

    def _reverse(self, noise: torch.Tensor, cond, s: FlowSampler, stats: list[DecodeStats]) -> torch.Tensor:
        raise NotImplementedError

    def _measured_cost(self, stats: list[DecodeStats], s: FlowSampler) -> tuple[int, float]:
        """(sequential network calls, forward equivalents) of the reverse pass just run."""
        raise NotImplementedError

    @property
    def _targets(self) -> int:
        """Tokens each block generates sequentially."""
        raise NotImplementedError

    def _block_calls(self, per_block: int, s: FlowSampler) -> int:
        """Sequential network calls of the whole reverse pass given `per_block` calls per flow block."""
        raise NotImplementedError

    def _eval_batch(self, x, labels, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample held-out metrics of one batch (draws from g in a fixed order)."""
        raise NotImplementedError

    # --- the shared loop ------------------------------------------------------------------------------------
    def loss(self, latents, labels, features=None, generator=None) -> dict[str, torch.Tensor]:
        y = self._labels(labels)
        x = latents + self.noise_std * torch.randn(
            latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
        if y is not None and self.label_drop > 0:
            y = torch.where(drop_mask(y, self.label_drop, generator), torch.full_like(y, self.null_label), y)
        flow, total, parts = self._objective(x, y)
        nll = flow.detach() + 0.5 * math.log(2 * math.pi)  # nats per dimension of the noisy data
        return {"loss": total, "nll": nll, "bits_per_dim_noisy": nll / math.log(2), **parts}

    def _noise_std(self, s: FlowSampler) -> float:
        return self.noise_std if s.noise_std is None else s.noise_std

    @torch.no_grad()
    def sample(self, labels, noise, generators=None, settings=None, **overrides) -> torch.Tensor:
        """labels [B], noise [B,*latent] standard normal -> samples [B,*latent] (deterministic given noise)."""
        s = self.settings(settings, **overrides)
        cond = self._condition(labels)
        t0 = time.perf_counter()
        stats: list[DecodeStats] = []
        x = self._reverse(noise, cond, s, stats)
        if s.denoise:
            x = self.model.denoise(x, cond, self._noise_std(s), s.denoise_lr)
        wall = time.perf_counter() - t0
        calls, fwd = self._measured_cost(stats, s)
        d = bool(s.denoise)  # denoise: forward + backward = 2 calls, about 3 forward equivalents
        self.last_sample_stats = SampleStats(stats, wall, calls + (2 if d else 0), fwd + (3.0 if d else 0.0))
        return x

    def nfe(self, settings=None, **overrides) -> int:
        """Sequential network calls per image (a CFG pair counts 2; Jacobi: its worst case; denoise: 2)."""
        s = self.settings(settings, **overrides)
        n = self._targets
        per_block = (
            n if s.mode == "sequential" else jacobi_worst_passes(n, s.jacobi_block, s.jacobi_max_iters)
        )
        return self._block_calls(per_block, s) + (2 if s.denoise else 0)

    def describe(self, settings=None) -> dict[str, Any]:
        """steps = sequential network calls per image without CFG doubling or the denoise step."""
        s = self.settings(settings)
        return s.describe(steps=self.nfe(s.replace(guidance=0.0, denoise=False)))

    def flops_per_image(self) -> float:
        return self.model.flops_per_image()

    @torch.no_grad()
    def eval_metrics(
        self, latents: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
    ) -> dict[str, float]:
        """Held-out exact-likelihood metrics (see the subclass), averaged over samples; fixed seed 0."""
        m = self.model
        was_training = m.training
        m.eval()
        g = torch.Generator(device=latents.device).manual_seed(0)
        rows: dict[str, list[torch.Tensor]] = {}
        for i in range(0, latents.shape[0], batch_size):
            lab = labels[i : i + batch_size] if labels is not None else None
            for k, v in self._eval_batch(latents[i : i + batch_size].float(), lab, g).items():
                rows.setdefault(k, []).append(v)
        m.train(was_training)
        return {k: float(torch.cat(v).mean()) for k, v in rows.items()}
