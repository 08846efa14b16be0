"""Triton rotary embedding on interleaved pairs, forward and its exact transpose (backward)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from baselines.ops import runtime
from baselines.ops.op_rope import reference
from baselines.ops.runtime import Launch, cdiv, needs_grad, pow2


@triton.jit
def rope_kernel(
    X, COS, SIN, Y, H, T, sx_b, sx_h, sx_t,
    HEAD_DIM: tl.constexpr, STRIDE_MULT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):  # fmt: skip
    # y = x * cos + rot(x) * sin with rot(x)[2i] = -x[2i+1], rot(x)[2i+1] = x[2i]. BACKWARD applies the
    # transpose: dx = dy * cos + rot^T(dy * sin), rot^T(u)[2i] = u[2i+1], rot^T(u)[2i+1] = -u[2i].
    # HEAD_DIM is a constexpr and the strides come in units of STRIDE_MULT elements, so the compiler knows
    # row starts are aligned and rows of a head dim like 72 (not a multiple of 16) still get 128-bit loads.
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    mask = (t < T)[:, None] & (cols < HEAD_DIM)[None, :]
    row = (b * sx_b + h * sx_h + t[:, None] * sx_t) * STRIDE_MULT
    x = tl.load(X + row + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    cs = tl.load(COS + t[:, None] * HEAD_DIM + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sn = tl.load(SIN + t[:, None] * HEAD_DIM + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # Deinterleave everything (full-row loads stay 128-bit), compute on pairs, interleave once for the store.
    xe, xo = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_D // 2, 2]))
    ce, co = tl.split(tl.reshape(cs, [BLOCK_T, BLOCK_D // 2, 2]))
    se, so = tl.split(tl.reshape(sn, [BLOCK_T, BLOCK_D // 2, 2]))
    if BACKWARD:
        ye = xe * ce + xo * so
        yo = xo * co - xe * se
    else:
        ye = xe * ce - xo * se
        yo = xo * co + xe * so
    y = tl.reshape(tl.join(ye, yo), [BLOCK_T, BLOCK_D])
    out = Y + (bh * T + t[:, None]) * HEAD_DIM + cols[None, :]
    tl.store(out, y.to(Y.dtype.element_ty), mask=mask)


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
    block_d = pow2(d)
    block_t = max(1, min(pow2(T), 2048 // block_d))
    strides = (x.stride(0), x.stride(1), x.stride(2))
    mult = math.gcd(16, *strides)  # strides are passed in units of `mult` elements (alignment hint)
    launch = Launch(
        rope_kernel,
        (B * H, cdiv(T, block_t)),
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
        runtime.run(launch)
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        launch, dx = plan_rope(dy if dy.stride(-1) == 1 else dy.contiguous(), cos, sin, backward=True)
        runtime.run(launch)
        return dx, None, None


def rope(x, cos, sin):
    if needs_grad(cos, sin):  # learned tables: the kernels treat them as constants, the reference does not
        return reference.rope(x, cos, sin)
    cos, sin = _rope_tables(x, cos, sin)
    x = x if x.stride(-1) == 1 else x.contiguous()
    if needs_grad(x):
        return _Rope.apply(x, cos, sin)
    launch, y = plan_rope(x, cos, sin)
    runtime.run(launch)
    return y
