"""Triton modulated RMSNorm / LayerNorm: kernels, launch plans, autograd, the public functions.

Kernels compute in float32 and round once on store, like the references; no nested @triton.jit helpers, so a
kernel can be re-wrapped for the interpreter (CPU) or the compiler (static gate) without re-importing this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from baselines.ops import runtime
from baselines.ops.runtime import Launch, cdiv, needs_grad, pow2


@triton.jit
def mod_norm_fwd_kernel(
    X, W, SHIFT, SCALE, Y, MEAN, RSTD, T, D, eps,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One program per row of x [B*T, D]; y = norm(x) * w * (1 + scale[b]) + shift[b].
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if IS_RMS:
        mean = 0.0
        xc = x
    else:
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * D + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(SHIFT + b * D + cols, mask=mask, other=0.0).to(tl.float32)
    y = y * (1.0 + scale) + shift
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def mod_norm_bwd_kernel(
    DY, X, W, SCALE, MEAN, RSTD, DX, DW_PART, DSCALE_PART, DSHIFT_PART, T, D, rows_per_prog,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Program (b, c) handles rows [c*rows_per_prog, ...) of sample b: writes dx for them and partial column
    # sums of dshift, dscale, dweight (summed over the chunks on the host: deterministic, no atomics).
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    scale1 = 1.0 + tl.load(SCALE + b * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_D], 1.0, tl.float32)
    g = w * scale1  # d y / d xhat
    acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_w = tl.zeros([BLOCK_D], dtype=tl.float32)
    t0 = c * rows_per_prog
    for t in range(t0, tl.minimum(t0 + rows_per_prog, T)):
        row = b * T + t
        x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        if IS_RMS:
            xhat = x * rstd
        else:
            xhat = tl.where(mask, (x - tl.load(MEAN + row)) * rstd, 0.0)
        dxhat = dy * g
        c1 = tl.sum(dxhat * xhat, axis=0) / D
        if IS_RMS:
            dx = (dxhat - xhat * c1) * rstd
        else:
            c2 = tl.sum(dxhat, axis=0) / D
            dx = (dxhat - c2 - xhat * c1) * rstd
        tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=mask)
        acc_shift += dy
        acc_scale += dy * xhat * w
        acc_w += dy * xhat * scale1
    part = (b * n_chunks + c) * D + cols
    tl.store(DSHIFT_PART + part, acc_shift, mask=mask)
    tl.store(DSCALE_PART + part, acc_scale, mask=mask)
    if HAS_W:
        tl.store(DW_PART + part, acc_w, mask=mask)


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
    block_d = pow2(D)
    launch = Launch(
        mod_norm_fwd_kernel,
        (B * T,),
        (x, w, shift, scale, y, mean, rstd, T, D, float(eps)),
        dict(IS_RMS=is_rms, HAS_W=weight is not None, BLOCK_D=block_d),
        _norm_warps(block_d),
    )
    return launch, (y, mean, rstd)


def plan_mod_norm_bwd(dy, x, weight, scale, mean, rstd, is_rms: bool):
    """dx, plus per-(sample, chunk of rows) partial sums of dweight, dscale, dshift in `part` [3,B,C,D]."""
    B, T, D = x.shape
    n_chunks = max(1, min(T, cdiv(4 * runtime.sm_count(x.device), B)))  # ~4 programs per SM
    rows = cdiv(T, n_chunks)
    n_chunks = cdiv(T, rows)
    dx = torch.empty_like(x)
    part = torch.empty(3, B * n_chunks, D, device=x.device, dtype=torch.float32)
    w = weight if weight is not None else x
    block_d = pow2(D)
    launch = Launch(
        mod_norm_bwd_kernel,
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
        runtime.run(launch)
        ctx.save_for_backward(x, weight, scale, mean, rstd)
        ctx.is_rms, ctx.shift_dtype = is_rms, shift.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, scale, mean, rstd = ctx.saved_tensors
        launch, (dx, part) = plan_mod_norm_bwd(dy.contiguous(), x, weight, scale, mean, rstd, ctx.is_rms)
        runtime.run(launch)
        dshift = part[2].sum(1).to(ctx.shift_dtype)
        dscale = part[1].sum(1).to(scale.dtype)
        dweight = part[0].sum((0, 1)).to(weight.dtype) if weight is not None else None
        return dx, dweight, dshift, dscale, None, None


def _mod_norm(x, weight, shift, scale, eps, is_rms):
    _check_norm(x, weight, shift, scale)
    if needs_grad(x, weight, shift, scale):
        return _ModNorm.apply(x, weight, shift, scale, eps, is_rms)
    weight = weight.contiguous() if weight is not None else None
    launch, (y, _, _) = plan_mod_norm_fwd(
        x.contiguous(), weight, shift.contiguous(), scale.contiguous(), eps, is_rms
    )
    runtime.run(launch)
    return y


def modulated_rmsnorm(x, weight, shift, scale, eps=1e-6):
    return _mod_norm(x, weight, shift, scale, eps, True)


def modulated_layernorm(x, shift, scale, eps=1e-6):
    return _mod_norm(x, None, shift, scale, eps, False)
