"""Triton SwiGLU gate: out = SiLU(h[:, :N]) * h[:, N:], forward and backward kernels, autograd."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from baselines.ops import runtime
from baselines.ops.runtime import Launch, cdiv, needs_grad, pow2


@triton.jit
def swiglu_fwd_kernel(Hin, OUT, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    a = tl.load(Hin + row * 2 * N + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(Hin + row * 2 * N + N + cols, mask=mask, other=0.0).to(tl.float32)
    out = a * tl.sigmoid(a) * g
    tl.store(OUT + row * N + cols, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(DOUT, Hin, DH, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    a = tl.load(Hin + row * 2 * N + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(Hin + row * 2 * N + N + cols, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(DOUT + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    da = dout * g * sig * (1.0 + a * (1.0 - sig))  # d silu(a)/da = sig * (1 + a * (1 - sig))
    dg = dout * a * sig
    tl.store(DH + row * 2 * N + cols, da.to(DH.dtype.element_ty), mask=mask)
    tl.store(DH + row * 2 * N + N + cols, dg.to(DH.dtype.element_ty), mask=mask)


def _swiglu_shape(h):
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu expects an even last dimension (2H), got {h.shape[-1]}")
    n = h.shape[-1] // 2
    return h.numel() // max(2 * n, 1), n


def plan_swiglu_fwd(h):
    rows, n = _swiglu_shape(h)
    out = torch.empty(*h.shape[:-1], n, device=h.device, dtype=h.dtype)
    block = min(1024, pow2(n))
    return Launch(swiglu_fwd_kernel, (rows, cdiv(n, block)), (h, out, n), dict(BLOCK=block)), out


def plan_swiglu_bwd(dout, h):
    rows, n = _swiglu_shape(h)
    dh = torch.empty_like(h)
    block = min(1024, pow2(n))
    return Launch(swiglu_bwd_kernel, (rows, cdiv(n, block)), (dout, h, dh, n), dict(BLOCK=block)), dh


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        launch, out = plan_swiglu_fwd(h)
        runtime.run(launch)
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, dout):
        (h,) = ctx.saved_tensors
        launch, dh = plan_swiglu_bwd(dout.contiguous(), h)
        runtime.run(launch)
        return dh


def swiglu(h):
    if needs_grad(h):
        return _SwiGLU.apply(h)
    launch, out = plan_swiglu_fwd(h.contiguous())
    runtime.run(launch)
    return out
