"""Triton single-query attention over a KV cache (flash-decoding): split kernel + combine kernel.

A sampling kernel: calls that need gradients go to the reference.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from baselines.ops import runtime
from baselines.ops.op_kv_attention import reference
from baselines.ops.runtime import Launch, cdiv, needs_grad, pow2

LOG2E = 1.4426950408889634


@triton.jit
def kv_attn_kernel(
    Q, K, V, O, M_PART, L_PART, ACC_PART, H, length, chunk, qk_scale,
    sq_b, sq_h, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    # Program (b*H + h, s) attends q[b, h] to cache positions [s*chunk, min((s+1)*chunk, length)) with an
    # online softmax in base 2 (qk_scale = log2(e) / sqrt(d)). Each of the BLOCK_L rows of the tile keeps
    # its own running max, sum and accumulator, so the loop has no cross-warp reduction (no barrier); the
    # rows are merged once at the end. SPLIT: write (max, sum, acc) partials that `kv_attn_combine_kernel`
    # merges; otherwise write the normalised output directly.
    bh = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    b = bh // H
    h = bh % H
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(Q + b * sq_b + h * sq_h + d, mask=dmask, other=0.0).to(tl.float32) * qk_scale
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    start = sp * chunk
    end = tl.minimum(start + chunk, length)
    m_r = tl.full([BLOCK_L], float("-inf"), tl.float32)
    l_r = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        pos = l0 + tl.arange(0, BLOCK_L)
        lmask = pos < end
        tile_mask = lmask[:, None] & dmask[None, :]
        # Both tiles are requested before any math: the loop is bound by memory latency, not arithmetic.
        k = tl.load(k_base + pos[:, None] * sk_l + d[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        v = tl.load(v_base + pos[:, None] * sv_l + d[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        s = tl.where(lmask, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m_r, s)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet: avoid inf - inf
        alpha = tl.exp2(m_r - m_ref)
        p = tl.exp2(s - m_ref)
        acc = acc * alpha[:, None] + p[:, None] * v
        l_r = l_r * alpha + p
        m_r = m_new
    m_i = tl.max(m_r, axis=0)
    w = tl.exp2(m_r - m_i)  # every split holds at least one valid position, so m_i is finite
    l_i = tl.sum(l_r * w, axis=0)
    out = tl.sum(acc * w[:, None], axis=0)
    if SPLIT:
        n_split = tl.num_programs(1)
        tl.store(M_PART + bh * n_split + sp, m_i)
        tl.store(L_PART + bh * n_split + sp, l_i)
        tl.store(ACC_PART + (bh * n_split + sp) * HEAD_DIM + d, out, mask=dmask)
    else:
        tl.store(O + bh * HEAD_DIM + d, (out / l_i).to(O.dtype.element_ty), mask=dmask)


@triton.jit
def kv_attn_combine_kernel(
    M_PART, L_PART, ACC_PART, O, n_split,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    sidx = tl.arange(0, BLOCK_S)
    smask = sidx < n_split
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    m = tl.load(M_PART + bh * n_split + sidx, mask=smask, other=float("-inf"))
    lsum = tl.load(L_PART + bh * n_split + sidx, mask=smask, other=0.0)
    acc = tl.load(
        ACC_PART + (bh * n_split + sidx[:, None]) * HEAD_DIM + d[None, :],
        mask=smask[:, None] & dmask[None, :],
        other=0.0,
    )
    m_all = tl.max(m, axis=0)
    wgt = tl.where(smask, tl.exp2(m - m_all), 0.0)
    out = tl.sum(acc * wgt[:, None], axis=0) / tl.sum(lsum * wgt, axis=0)
    tl.store(O + bh * HEAD_DIM + d, out.to(O.dtype.element_ty), mask=dmask)


KV_BLOCK_L = 64
KV_MIN_CHUNK = 128  # a split below this many cached positions costs more to combine than it saves


def plan_kv_attention(q, k_cache, v_cache, length: int):
    B, H, _, d = k_cache.shape
    out = torch.empty(B, H, 1, d, device=q.device, dtype=q.dtype)
    n_bh = B * H
    n_split = 1
    if n_bh < 2 * runtime.sm_count(
        q.device
    ):  # too few (batch, head) programs to fill the GPU: split the length
        n_split = max(1, min(cdiv(2 * runtime.sm_count(q.device), n_bh), length // KV_MIN_CHUNK))
    chunk = cdiv(cdiv(length, n_split), KV_BLOCK_L) * KV_BLOCK_L
    n_split = cdiv(length, chunk)
    block_d = pow2(d)
    strides = (q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3])
    common = dict(HEAD_DIM=d, BLOCK_D=block_d)
    scale = 1.0 / math.sqrt(d) * LOG2E
    if n_split == 1:
        main = Launch(
            kv_attn_kernel,
            (n_bh, 1),
            (q, k_cache, v_cache, out, out, out, out, H, length, chunk, scale, *strides),
            dict(common, BLOCK_L=KV_BLOCK_L, SPLIT=False),
        )
        return [main], out
    m_part = torch.empty(n_bh, n_split, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty(n_bh, n_split, d, device=q.device, dtype=torch.float32)
    main = Launch(
        kv_attn_kernel,
        (n_bh, n_split),
        (q, k_cache, v_cache, out, m_part, l_part, acc_part, H, length, chunk, scale, *strides),
        dict(common, BLOCK_L=KV_BLOCK_L, SPLIT=True),
    )
    combine = Launch(
        kv_attn_combine_kernel,
        (n_bh,),
        (m_part, l_part, acc_part, out, n_split),
        dict(common, BLOCK_S=pow2(n_split)),
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
    if needs_grad(q, k_cache, v_cache):
        # A sampling kernel without a backward: the reference keeps autograd correct.
        return reference.kv_attention(q, k_cache, v_cache, length)
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
    launches, out = plan_kv_attention(q, k_cache, v_cache, int(length))
    for launch in launches:
        runtime.run(launch)
    return out
