"""Triton kernels of the fused ops. Launch logic, autograd and the public functions live in `triton_impl.py`.

Every kernel computes in float32 and rounds once on store, like the references in `reference.py`. Kernels
take only runtime ints/floats/pointers plus `tl.constexpr` block sizes and switches, so the static gate
(`bench/kernels.py --static`) can compile exactly the configuration a launch would use. There are no nested
`@triton.jit` helpers on purpose: a kernel can then be re-wrapped for the interpreter (CPU) or the compiler
(static gate) without re-importing this module.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# --- adaLN-modulated RMSNorm / LayerNorm -------------------------------------------------------------------
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


# --- SwiGLU: out = SiLU(h[:, :N]) * h[:, N:] ----------------------------------------------------------------
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


# --- flow affine step ---------------------------------------------------------------------------------------
# TARFlow: log s = a; STARFlow: s = softplus(a + 0.5413). z = (x - b) / s, logdet = -mean(log s) per sample.
# softplus(u) = max(u, 0) + log1p(exp(-|u|)); log1p(e) = e * log(1 + e) / ((1 + e) - 1) (Goldberg) keeps
# full precision for tiny e, where a plain log(1 + e) would round to 0 and log s to -inf.
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


# --- single-query attention over a KV cache (flash-decoding) -------------------------------------------------
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


# --- rotary embedding on interleaved pairs -----------------------------------------------------------------
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
