"""Triton flow affine step: forward with per-sample log-determinant, its backward, and the inverse.

TARFlow: log s = a; STARFlow: s = softplus(a + 0.5413). z = (x - b) / s, logdet = -mean(log s) per sample.
softplus(u) = max(u, 0) + log1p(exp(-|u|)); log1p(e) = e * log(1 + e) / ((1 + e) - 1) (Goldberg) keeps
full precision for tiny e, where a plain log(1 + e) would round to 0 and log s to -inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from baselines.ops import runtime
from baselines.ops.op_affine.reference import SOFTPLUS_OFFSET, log_scale
from baselines.ops.runtime import Launch, cdiv, needs_grad, pow2


@triton.jit
def affine_fwd_kernel(
    X, A, Bv, Z, LOGDET_PART, N, chunk, offset,
    SOFTPLUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # Program (s, c) handles elements [c*chunk, (c+1)*chunk) of sample s (flattened T*D = N); writes z and
    # its share of the per-sample log-determinant -sum(log s) / N.
    s = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    start = c * chunk
    end = tl.minimum(start + chunk, N)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        mask = offs < end
        x = tl.load(X + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(A + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(Bv + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        if SOFTPLUS:
            u = a + offset
            e = tl.exp(-tl.abs(u))
            w = 1.0 + e
            l1p = tl.log(w) * e / tl.where(w == 1.0, 1.0, w - 1.0)
            sp = tl.maximum(u, 0.0) + tl.where(w == 1.0, e, l1p)
            log_s = tl.log(sp)
            z = (x - bias) / sp
        else:
            log_s = a
            z = (x - bias) * tl.exp(-a)
        tl.store(Z + s * N + offs, z.to(Z.dtype.element_ty), mask=mask)
        acc += tl.where(mask, log_s, 0.0)
    tl.store(LOGDET_PART + s * n_chunks + c, -tl.sum(acc, axis=0) / N)


@triton.jit
def affine_bwd_kernel(
    DZ, DLOGDET, X, A, Bv, DX, DA, DB, N, chunk, offset,
    SOFTPLUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # Gradients of (z, logdet) = affine_forward(x, a, b): with r = 1/s, dx = dz*r, db = -dz*r,
    # d log s = -dz*z - dlogdet/N, and da = d log s (TARFlow) or d log s * sigmoid(u)/softplus(u) (STARFlow).
    s = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    start = c * chunk
    end = tl.minimum(start + chunk, N)
    dld = tl.load(DLOGDET + s).to(tl.float32) / N
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        mask = offs < end
        x = tl.load(X + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(A + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(Bv + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        dz = tl.load(DZ + s * N + offs, mask=mask, other=0.0).to(tl.float32)
        if SOFTPLUS:
            u = a + offset
            e = tl.exp(-tl.abs(u))
            w = 1.0 + e
            l1p = tl.log(w) * e / tl.where(w == 1.0, 1.0, w - 1.0)
            sp = tl.maximum(u, 0.0) + tl.where(w == 1.0, e, l1p)
            r = 1.0 / sp
            sig = tl.where(u >= 0, 1.0 / w, e / w)
            dlog_da = tl.where(u < -20.0, 1.0, sig * r)  # sigmoid/softplus -> 1 as u -> -inf
        else:
            r = tl.exp(-a)
            dlog_da = 1.0
        dx = dz * r
        z = (x - bias) * r
        da = (-dz * z - dld) * dlog_da
        tl.store(DX + s * N + offs, dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(DB + s * N + offs, (-dx).to(DB.dtype.element_ty), mask=mask)
        tl.store(DA + s * N + offs, da.to(DA.dtype.element_ty), mask=mask)


@triton.jit
def affine_inv_kernel(Z, A, Bv, X, numel, offset, SOFTPLUS: tl.constexpr, BLOCK: tl.constexpr):
    # x = z * s + b, elementwise over all B*T*D elements (sampling; no log-determinant needed).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(Bv + offs, mask=mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        u = a + offset
        e = tl.exp(-tl.abs(u))
        w = 1.0 + e
        l1p = tl.log(w) * e / tl.where(w == 1.0, 1.0, w - 1.0)
        s = tl.maximum(u, 0.0) + tl.where(w == 1.0, e, l1p)
    else:
        s = tl.exp(a)
    tl.store(X + offs, (z * s + bias).to(X.dtype.element_ty), mask=mask)


AFFINE_BLOCK = 1024


def _affine_chunks(batch: int, n: int, device) -> tuple[int, int]:
    """Split each sample's n elements into chunks so that about 4 programs per SM run."""
    block = min(AFFINE_BLOCK, pow2(n))
    n_chunks = max(1, min(cdiv(n, block), cdiv(4 * runtime.sm_count(device), batch)))
    chunk = cdiv(cdiv(n, n_chunks), block) * block
    return chunk, cdiv(n, chunk)


def plan_affine_fwd(x, a, b, softplus: bool):
    B, n = x.shape[0], x[0].numel()
    chunk, n_chunks = _affine_chunks(B, n, x.device)
    z = torch.empty_like(x)
    part = torch.empty(B, n_chunks, device=x.device, dtype=torch.float32)
    launch = Launch(
        affine_fwd_kernel,
        (B, n_chunks),
        (x, a, b, z, part, n, chunk, SOFTPLUS_OFFSET),
        dict(SOFTPLUS=softplus, BLOCK=min(AFFINE_BLOCK, pow2(n))),
    )
    return launch, (z, part)


def plan_affine_bwd(dz, dlogdet, x, a, b, softplus: bool):
    B, n = x.shape[0], x[0].numel()
    chunk, n_chunks = _affine_chunks(B, n, x.device)
    dx, da, db = torch.empty_like(x), torch.empty_like(a), torch.empty_like(b)
    launch = Launch(
        affine_bwd_kernel,
        (B, n_chunks),
        (dz, dlogdet, x, a, b, dx, da, db, n, chunk, SOFTPLUS_OFFSET),
        dict(SOFTPLUS=softplus, BLOCK=min(AFFINE_BLOCK, pow2(n))),
    )
    return launch, (dx, da, db)


def plan_affine_inv(z, a, b, softplus: bool):
    x = torch.empty_like(z)
    numel = z.numel()
    block = min(AFFINE_BLOCK, pow2(numel))
    launch = Launch(
        affine_inv_kernel,
        (cdiv(numel, block),),
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
    runtime.run(launch)
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
        runtime.run(launch)
        return dx, da, db, None


class _AffineInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, a, b, softplus):
        launch, x = plan_affine_inv(z, a, b, softplus)
        runtime.run(launch)
        ctx.save_for_backward(z, a)
        ctx.softplus, ctx.b_dtype = softplus, b.dtype
        return x

    @staticmethod
    def backward(ctx, dx):
        # Sampling rarely differentiates through the inverse; plain torch keeps it correct when it does.
        z, a = ctx.saved_tensors
        with torch.enable_grad():
            af = a.detach().float().requires_grad_(True)
            s = torch.exp(log_scale(af, ctx.softplus))
            (ds,) = torch.autograd.grad(s, af, dx.float() * z.float())
        return (dx.float() * s.detach()).to(z.dtype), ds.to(a.dtype), dx.to(ctx.b_dtype), None


def affine_forward(x, a, b, softplus=False):
    x, a, b = _affine_inputs(x, a, b)
    if needs_grad(x, a, b):
        return _AffineForward.apply(x, a, b, softplus)
    return _affine_fwd(x, a, b, softplus)


def affine_inverse(z, a, b, softplus=False):
    z, a, b = _affine_inputs(z, a, b)
    if needs_grad(z, a, b):
        return _AffineInverse.apply(z, a, b, softplus)
    launch, x = plan_affine_inv(z, a, b, softplus)
    runtime.run(launch)
    return x
