"""Triton implementations of the fused ops: launch plans, autograd, and the public functions.

Same names, signatures and semantics as `reference.py`; `baselines.ops` dispatches here for the triton
backend. Each kernel launch is first described as a `Launch` by a `plan_*` function (kernel, grid, runtime
args, constexprs, warps) and then run. The static gate (`bench/kernels.py --static`) compiles the very same
plans for sm_90 on the CPU, so what it measures is what runs.

CUDA tensors run compiled kernels. CPU tensors run only under TRITON_INTERPRET=1 (set before triton is
imported: it decides at decoration time, also for triton.language's own helpers), float32 only since the
interpreter mishandles bfloat16. Training: the norms, SwiGLU, the affine step and RoPE have Triton backward
kernels behind `torch.autograd.Function`; `kv_attention` is a sampling kernel and hands calls that need
gradients to the reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from triton.runtime.interpreter import InterpretedFunction

from baselines.ops import reference
from baselines.ops import triton_kernels as K
from baselines.ops.reference import SOFTPLUS_OFFSET, _log_scale

H100_SMS = 132  # planning default off-GPU (CPU interpreter, static gate): the sm_90 part the gate targets


@dataclass
class Launch:
    """One kernel launch: `kernel[grid](*args, **constexprs, num_warps=...)`."""

    kernel: Any  # a @triton.jit kernel from triton_kernels (JITFunction, or InterpretedFunction)
    grid: tuple[int, ...]
    args: tuple  # runtime arguments, in the kernel's parameter order (tensors, ints, floats)
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4


def run(launch: Launch) -> None:
    tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
    if tensors[0].device.type == "cpu":
        if not isinstance(launch.kernel, InterpretedFunction):
            raise RuntimeError(
                "Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before triton is imported "
                "(float32 only) or use the torch ops backend"
            )
        bad = sorted({str(t.dtype) for t in tensors if t.is_floating_point() and t.dtype != torch.float32})
        if bad:
            raise ValueError(
                f"the Triton interpreter supports float32 only (got {', '.join(bad)}); "
                "use the torch ops backend or a CUDA device"
            )
    launch.kernel[launch.grid](*launch.args, **launch.constexprs, num_warps=launch.num_warps)


def _pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to plan grids for; off-GPU an H100's, so plans there are deterministic."""
    if device.type != "cuda":
        return H100_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --- modulated norms -----------------------------------------------------------------------------------------
def _norm_warps(block_d: int) -> int:
    return 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16


def _check_norm(x, weight, shift, scale):
    if x.ndim != 3:
        raise ValueError(f"modulated norm expects x [B,T,D], got shape {tuple(x.shape)}")
    B, _, D = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        if tuple(t.shape) != (B, D):
            raise ValueError(f"{name} must be [B,D] = {(B, D)}, got {tuple(t.shape)}")
    if weight is not None and tuple(weight.shape) != (D,):
        raise ValueError(f"weight must be [D] = {(D,)}, got {tuple(weight.shape)}")


def plan_mod_norm_fwd(x, weight, shift, scale, eps: float, is_rms: bool):
    B, T, D = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(B * T, device=x.device, dtype=torch.float32)
    rstd = torch.empty(B * T, device=x.device, dtype=torch.float32)
    w = weight if weight is not None else x  # a placeholder pointer when HAS_W is False (never read)
    block_d = _pow2(D)
    launch = Launch(
        K.mod_norm_fwd_kernel,
        (B * T,),
        (x, w, shift, scale, y, mean, rstd, T, D, float(eps)),
        dict(IS_RMS=is_rms, HAS_W=weight is not None, BLOCK_D=block_d),
        _norm_warps(block_d),
    )
    return launch, (y, mean, rstd)


def plan_mod_norm_bwd(dy, x, weight, scale, mean, rstd, is_rms: bool):
    """dx, plus per-(sample, chunk of rows) partial sums of dweight, dscale, dshift in `part` [3,B,C,D]."""
    B, T, D = x.shape
    n_chunks = max(1, min(T, _cdiv(4 * sm_count(x.device), B)))  # ~4 programs per SM
    rows = _cdiv(T, n_chunks)
    n_chunks = _cdiv(T, rows)
    dx = torch.empty_like(x)
    part = torch.empty(3, B * n_chunks, D, device=x.device, dtype=torch.float32)
    w = weight if weight is not None else x
    block_d = _pow2(D)
    launch = Launch(
        K.mod_norm_bwd_kernel,
        (B, n_chunks),
        (dy, x, w, scale, mean, rstd, dx, part[0], part[1], part[2], T, D, rows),
        dict(IS_RMS=is_rms, HAS_W=weight is not None, BLOCK_D=block_d),
        _norm_warps(block_d),
    )
    return launch, (dx, part.view(3, B, n_chunks, D))


class _ModNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, shift, scale, eps, is_rms):
        x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
        weight = weight.contiguous() if weight is not None else None
        launch, (y, mean, rstd) = plan_mod_norm_fwd(x, weight, shift, scale, eps, is_rms)
        run(launch)
        ctx.save_for_backward(x, weight, scale, mean, rstd)
        ctx.is_rms, ctx.shift_dtype = is_rms, shift.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, scale, mean, rstd = ctx.saved_tensors
        launch, (dx, part) = plan_mod_norm_bwd(dy.contiguous(), x, weight, scale, mean, rstd, ctx.is_rms)
        run(launch)
        dshift = part[2].sum(1).to(ctx.shift_dtype)
        dscale = part[1].sum(1).to(scale.dtype)
        dweight = part[0].sum((0, 1)).to(weight.dtype) if weight is not None else None
        return dx, dweight, dshift, dscale, None, None


def _mod_norm(x, weight, shift, scale, eps, is_rms):
    _check_norm(x, weight, shift, scale)
    if _needs_grad(x, weight, shift, scale):
        return _ModNorm.apply(x, weight, shift, scale, eps, is_rms)
    weight = weight.contiguous() if weight is not None else None
    launch, (y, _, _) = plan_mod_norm_fwd(
        x.contiguous(), weight, shift.contiguous(), scale.contiguous(), eps, is_rms
    )
    run(launch)
    return y


def modulated_rmsnorm(x, weight, shift, scale, eps=1e-6):
    return _mod_norm(x, weight, shift, scale, eps, True)


def modulated_layernorm(x, shift, scale, eps=1e-6):
    return _mod_norm(x, None, shift, scale, eps, False)


# --- SwiGLU ----------------------------------------------------------------------------------------------------
def _swiglu_shape(h):
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu expects an even last dimension (2H), got {h.shape[-1]}")
    n = h.shape[-1] // 2
    return h.numel() // max(2 * n, 1), n


def plan_swiglu_fwd(h):
    rows, n = _swiglu_shape(h)
    out = torch.empty(*h.shape[:-1], n, device=h.device, dtype=h.dtype)
    block = min(1024, _pow2(n))
    return Launch(K.swiglu_fwd_kernel, (rows, _cdiv(n, block)), (h, out, n), dict(BLOCK=block)), out


def plan_swiglu_bwd(dout, h):
    rows, n = _swiglu_shape(h)
    dh = torch.empty_like(h)
    block = min(1024, _pow2(n))
    return Launch(K.swiglu_bwd_kernel, (rows, _cdiv(n, block)), (dout, h, dh, n), dict(BLOCK=block)), dh


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        launch, out = plan_swiglu_fwd(h)
        run(launch)
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, dout):
        (h,) = ctx.saved_tensors
        launch, dh = plan_swiglu_bwd(dout.contiguous(), h)
        run(launch)
        return dh


def swiglu(h):
    if _needs_grad(h):
        return _SwiGLU.apply(h)
    launch, out = plan_swiglu_fwd(h.contiguous())
    run(launch)
    return out


# --- flow affine step --------------------------------------------------------------------------------------
AFFINE_BLOCK = 1024


def _affine_chunks(batch: int, n: int, device) -> tuple[int, int]:
    """Split each sample's n elements into chunks so that about 4 programs per SM run."""
    block = min(AFFINE_BLOCK, _pow2(n))
    n_chunks = max(1, min(_cdiv(n, block), _cdiv(4 * sm_count(device), batch)))
    chunk = _cdiv(_cdiv(n, n_chunks), block) * block
    return chunk, _cdiv(n, chunk)


def plan_affine_fwd(x, a, b, softplus: bool):
    B, n = x.shape[0], x[0].numel()
    chunk, n_chunks = _affine_chunks(B, n, x.device)
    z = torch.empty_like(x)
    part = torch.empty(B, n_chunks, device=x.device, dtype=torch.float32)
    launch = Launch(
        K.affine_fwd_kernel,
        (B, n_chunks),
        (x, a, b, z, part, n, chunk, SOFTPLUS_OFFSET),
        dict(SOFTPLUS=softplus, BLOCK=min(AFFINE_BLOCK, _pow2(n))),
    )
    return launch, (z, part)


def plan_affine_bwd(dz, dlogdet, x, a, b, softplus: bool):
    B, n = x.shape[0], x[0].numel()
    chunk, n_chunks = _affine_chunks(B, n, x.device)
    dx, da, db = torch.empty_like(x), torch.empty_like(a), torch.empty_like(b)
    launch = Launch(
        K.affine_bwd_kernel,
        (B, n_chunks),
        (dz, dlogdet, x, a, b, dx, da, db, n, chunk, SOFTPLUS_OFFSET),
        dict(SOFTPLUS=softplus, BLOCK=min(AFFINE_BLOCK, _pow2(n))),
    )
    return launch, (dx, da, db)


def plan_affine_inv(z, a, b, softplus: bool):
    x = torch.empty_like(z)
    numel = z.numel()
    block = min(AFFINE_BLOCK, _pow2(numel))
    launch = Launch(
        K.affine_inv_kernel,
        (_cdiv(numel, block),),
        (z, a, b, x, numel, SOFTPLUS_OFFSET),
        dict(SOFTPLUS=softplus, BLOCK=block),
    )
    return launch, x


def _affine_inputs(x, a, b):
    if x.ndim < 2:
        raise ValueError(f"affine step expects x [B,...], got shape {tuple(x.shape)}")
    x, a, b = torch.broadcast_tensors(x, a, b)
    return x.contiguous(), a.contiguous(), b.contiguous()


def _affine_fwd(x, a, b, softplus):
    launch, (z, part) = plan_affine_fwd(x, a, b, softplus)
    run(launch)
    return z, part.sum(1) if part.shape[1] > 1 else part[:, 0]


class _AffineForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, softplus):
        z, logdet = _affine_fwd(x, a, b, softplus)
        ctx.save_for_backward(x, a, b)
        ctx.softplus = softplus
        return z, logdet

    @staticmethod
    def backward(ctx, dz, dlogdet):
        x, a, b = ctx.saved_tensors
        dz = torch.zeros_like(x) if dz is None else dz.contiguous()
        dlogdet = x.new_zeros(x.shape[0], dtype=torch.float32) if dlogdet is None else dlogdet.contiguous()
        launch, (dx, da, db) = plan_affine_bwd(dz, dlogdet, x, a, b, ctx.softplus)
        run(launch)
        return dx, da, db, None


class _AffineInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, a, b, softplus):
        launch, x = plan_affine_inv(z, a, b, softplus)
        run(launch)
        ctx.save_for_backward(z, a)
        ctx.softplus, ctx.b_dtype = softplus, b.dtype
        return x

    @staticmethod
    def backward(ctx, dx):
        # Sampling rarely differentiates through the inverse; plain torch keeps it correct when it does.
        z, a = ctx.saved_tensors
        with torch.enable_grad():
            af = a.detach().float().requires_grad_(True)
            s = torch.exp(_log_scale(af, ctx.softplus))
            (ds,) = torch.autograd.grad(s, af, dx.float() * z.float())
        return (dx.float() * s.detach()).to(z.dtype), ds.to(a.dtype), dx.to(ctx.b_dtype), None


def affine_forward(x, a, b, softplus=False):
    x, a, b = _affine_inputs(x, a, b)
    if _needs_grad(x, a, b):
        return _AffineForward.apply(x, a, b, softplus)
    return _affine_fwd(x, a, b, softplus)


def affine_inverse(z, a, b, softplus=False):
    z, a, b = _affine_inputs(z, a, b)
    if _needs_grad(z, a, b):
        return _AffineInverse.apply(z, a, b, softplus)
    launch, x = plan_affine_inv(z, a, b, softplus)
    run(launch)
    return x


# --- KV-cache attention ------------------------------------------------------------------------------------
KV_BLOCK_L = 64
KV_MIN_CHUNK = 128  # a split below this many cached positions costs more to combine than it saves


def plan_kv_attention(q, k_cache, v_cache, length: int):
    B, H, _, d = k_cache.shape
    out = torch.empty(B, H, 1, d, device=q.device, dtype=q.dtype)
    n_bh = B * H
    n_split = 1
    if n_bh < 2 * sm_count(q.device):  # too few (batch, head) programs to fill the GPU: split the length
        n_split = max(1, min(_cdiv(2 * sm_count(q.device), n_bh), length // KV_MIN_CHUNK))
    chunk = _cdiv(_cdiv(length, n_split), KV_BLOCK_L) * KV_BLOCK_L
    n_split = _cdiv(length, chunk)
    block_d = _pow2(d)
    strides = (q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3])
    common = dict(HEAD_DIM=d, BLOCK_D=block_d)
    scale = 1.0 / math.sqrt(d) * K.LOG2E
    if n_split == 1:
        main = Launch(
            K.kv_attn_kernel,
            (n_bh, 1),
            (q, k_cache, v_cache, out, out, out, out, H, length, chunk, scale, *strides),
            dict(common, BLOCK_L=KV_BLOCK_L, SPLIT=False),
        )
        return [main], out
    m_part = torch.empty(n_bh, n_split, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty(n_bh, n_split, d, device=q.device, dtype=torch.float32)
    main = Launch(
        K.kv_attn_kernel,
        (n_bh, n_split),
        (q, k_cache, v_cache, out, m_part, l_part, acc_part, H, length, chunk, scale, *strides),
        dict(common, BLOCK_L=KV_BLOCK_L, SPLIT=True),
    )
    combine = Launch(
        K.kv_attn_combine_kernel,
        (n_bh,),
        (m_part, l_part, acc_part, out, n_split),
        dict(common, BLOCK_S=_pow2(n_split)),
    )
    return [main, combine], out


def kv_attention(q, k_cache, v_cache, length):
    if k_cache.ndim != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"caches must both be [B,H,L,d], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    B, H, L, d = k_cache.shape
    if tuple(q.shape) != (B, H, 1, d):
        raise ValueError(f"q must be [B,H,1,d] = {(B, H, 1, d)}, got {tuple(q.shape)}")
    if not 1 <= int(length) <= L:
        raise ValueError(f"length must be in [1, {L}], got {length}")
    if _needs_grad(q, k_cache, v_cache):
        # A sampling kernel without a backward: the reference keeps autograd correct.
        return reference.kv_attention(q, k_cache, v_cache, length)
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
    launches, out = plan_kv_attention(q, k_cache, v_cache, int(length))
    for launch in launches:
        run(launch)
    return out


# --- RoPE ----------------------------------------------------------------------------------------------------
def _rope_tables(x, cos, sin):
    if x.ndim != 4:
        raise ValueError(f"rope expects x [B,H,T,d], got shape {tuple(x.shape)}")
    T, d = x.shape[2], x.shape[3]
    if d % 2:
        raise ValueError(f"rope needs an even head dim, got {d}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.numel() != T * d or t.shape[-1] != d:
            raise ValueError(
                f"{name} must hold [T,d] = {(T, d)} values (broadcast over B,H), got {tuple(t.shape)}"
            )
    return cos.reshape(T, d).contiguous(), sin.reshape(T, d).contiguous()


def plan_rope(x, cos, sin, backward: bool = False):
    B, H, T, d = x.shape
    y = torch.empty(B, H, T, d, device=x.device, dtype=x.dtype)
    block_d = _pow2(d)
    block_t = max(1, min(_pow2(T), 2048 // block_d))
    strides = (x.stride(0), x.stride(1), x.stride(2))
    mult = math.gcd(16, *strides)  # strides are passed in units of `mult` elements (alignment hint)
    launch = Launch(
        K.rope_kernel,
        (B * H, _cdiv(T, block_t)),
        (x, cos, sin, y, H, T, *(s // mult for s in strides)),
        dict(
            HEAD_DIM=d,
            STRIDE_MULT=mult,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            BACKWARD=backward,
        ),
    )
    return launch, y


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        launch, y = plan_rope(x, cos, sin)
        run(launch)
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        launch, dx = plan_rope(dy if dy.stride(-1) == 1 else dy.contiguous(), cos, sin, backward=True)
        run(launch)
        return dx, None, None


def rope(x, cos, sin):
    if _needs_grad(cos, sin):  # learned tables: the kernels treat them as constants, the reference does not
        return reference.rope(x, cos, sin)
    cos, sin = _rope_tables(x, cos, sin)
    x = x if x.stride(-1) == 1 else x.contiguous()
    if _needs_grad(x):
        return _Rope.apply(x, cos, sin)
    launch, y = plan_rope(x, cos, sin)
    run(launch)
    return y
