"""The one registry of fused ops: reference + Triton implementation + input generator at paper shapes +
bytes moved and flops (for the roofline) + the kernel launches (for the static gate).

`bench/kernels.py` reads only this file: `--static` compiles `op.launches(...)` of every case and dtype for
sm_90, `--latency` times `op.triton` against `op.reference` (eager and torch.compile) on `op.inputs(...)`.
Batch sizes are per-GPU training batches of the papers' recipes (sampling batches for the KV-cache op, CFG
doubling them); the other dimensions are the published architectures'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from baselines.ops import reference

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    name: str  # which model (and phase) the shape is taken from
    shape: dict  # the op's dimensions, e.g. dict(B=32, T=256, D=1152)


@dataclass(frozen=True)
class Op:
    name: str
    reference: Callable
    triton: Callable
    inputs: Callable  # (shape, dtype, device, generator) -> positional args of reference/triton
    bytes: Callable  # (shape, element size) -> {"fwd": bytes, "bwd": bytes}: ideal DRAM traffic
    flops: Callable  # shape -> {"fwd": flops, "bwd": flops}
    launches: Callable  # args -> [(name, triton_impl.Launch)]: every kernel the op runs, forward and backward
    cases: tuple[Case, ...]
    grad_args: tuple[int, ...] = ()  # positional args differentiated in training; () = forward only


def _randn(shape, dtype, device, gen, scale=1.0):
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _triton():
    from baselines.ops import triton_impl  # imports triton: only when a Triton path is actually wanted

    return triton_impl


# --- modulated norms ----------------------------------------------------------------------------------------
def _norm_inputs(weight: bool):
    def make(s, dtype, device, gen):
        B, T, D = s["B"], s["T"], s["D"]
        w = [_randn((D,), dtype, device, gen, 0.1) + 1] if weight else []
        x = _randn((B, T, D), dtype, device, gen)
        return [x, *w, _randn((B, D), dtype, device, gen, 0.1), _randn((B, D), dtype, device, gen, 0.1)]

    return make


def _norm_bytes(weight: bool):
    def count(s, es):
        B, T, D = s["B"], s["T"], s["D"]
        io, mod, w = B * T * D * es, B * D * es, D * es if weight else 0
        return {"fwd": 2 * io + 2 * mod + w, "bwd": 3 * io + 8 * B * T + 3 * mod + 2 * w}

    return count


def _norm_flops(s):
    n = s["B"] * s["T"] * s["D"]
    return {"fwd": 8 * n, "bwd": 16 * n}


def _norm_launches(is_rms: bool):
    def launches(args):
        T = _triton()
        x, w = args[0], args[1] if is_rms else None
        shift, scale = args[-2], args[-1]
        fwd, (y, mean, rstd) = T.plan_mod_norm_fwd(x, w, shift, scale, 1e-6, is_rms)
        bwd, _ = T.plan_mod_norm_bwd(torch.empty_like(y), x, w, scale, mean, rstd, is_rms)
        return [("fwd", fwd), ("bwd", bwd)]

    return launches


# --- SwiGLU --------------------------------------------------------------------------------------------------
def _swiglu_inputs(s, dtype, device, gen):
    return [_randn((s["B"], s["T"], 2 * s["H"]), dtype, device, gen)]


def _swiglu_bytes(s, es):
    n = s["B"] * s["T"] * s["H"] * es
    return {"fwd": 3 * n, "bwd": 5 * n}


def _swiglu_flops(s):
    n = s["B"] * s["T"] * s["H"]
    return {"fwd": 6 * n, "bwd": 12 * n}


def _swiglu_launches(args):
    T = _triton()
    fwd, out = T.plan_swiglu_fwd(args[0])
    bwd, _ = T.plan_swiglu_bwd(torch.empty_like(out), args[0])
    return [("fwd", fwd), ("bwd", bwd)]


# --- flow affine step ------------------------------------------------------------------------------------------
def _affine_inputs(s, dtype, device, gen):
    shape = (s["B"], s["T"], s["D"])
    x, a, b = (_randn(shape, dtype, device, gen, sc) for sc in (1.0, 0.5, 0.5))
    return [x, a, b, bool(s["softplus"])]


def _affine_bytes(s, es):
    n = s["B"] * s["T"] * s["D"] * es
    return {"fwd": 4 * n + 4 * s["B"], "bwd": 7 * n + 4 * s["B"]}


def _affine_inv_bytes(s, es):
    return {"fwd": 4 * s["B"] * s["T"] * s["D"] * es}


def _affine_flops(s):
    n = s["B"] * s["T"] * s["D"]
    per = 12 if s["softplus"] else 4
    return {"fwd": per * n, "bwd": 2 * per * n}


def _affine_launches(args):
    T = _triton()
    x, a, b, softplus = args
    fwd, (z, _) = T.plan_affine_fwd(x, a, b, softplus)
    dlogdet = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    bwd, _ = T.plan_affine_bwd(torch.empty_like(z), dlogdet, x, a, b, softplus)
    return [("fwd", fwd), ("bwd", bwd)]


def _affine_inv_launches(args):
    fwd, _ = _triton().plan_affine_inv(*args)
    return [("fwd", fwd)]


# --- KV-cache attention ----------------------------------------------------------------------------------------
def _kv_inputs(s, dtype, device, gen):
    B, H, L, d = s["B"], s["H"], s["L"], s["d"]
    q = _randn((B, H, 1, d), dtype, device, gen)
    k, v = _randn((B, H, L, d), dtype, device, gen), _randn((B, H, L, d), dtype, device, gen)
    return [q, k, v, s["length"]]


def _kv_bytes(s, es):
    B, H, d = s["B"], s["H"], s["d"]
    return {"fwd": B * H * (2 * s["length"] * d + 2 * d) * es}


def _kv_flops(s):
    return {"fwd": 4 * s["B"] * s["H"] * s["length"] * s["d"]}


def _kv_launches(args):
    launches, _ = _triton().plan_kv_attention(*args)
    return [("fwd", launches[0])] + [("fwd.combine", rest) for rest in launches[1:]]


# --- RoPE ----------------------------------------------------------------------------------------------------
def _rope_inputs(s, dtype, device, gen):
    B, H, T, d = s["B"], s["H"], s["T"], s["d"]
    x = _randn((B, H, T, d), dtype, device, gen)
    if torch.device(device).type == "meta":
        return [
            x,
            torch.empty(T, d, dtype=dtype, device=device),
            torch.empty(T, d, dtype=dtype, device=device),
        ]
    ang = torch.rand(T, d // 2, generator=gen) * math.pi * 2
    ang = ang.repeat_interleave(2, dim=-1).to(device)
    return [x, ang.cos().to(dtype), ang.sin().to(dtype)]


def _rope_bytes(s, es):
    n, table = s["B"] * s["H"] * s["T"] * s["d"] * es, 2 * s["T"] * s["d"] * es
    return {"fwd": 2 * n + table, "bwd": 2 * n + table}


def _rope_flops(s):
    n = s["B"] * s["H"] * s["T"] * s["d"]
    return {"fwd": 3 * n, "bwd": 3 * n}


def _rope_launches(args):
    T = _triton()
    fwd, y = T.plan_rope(*args)
    bwd, _ = T.plan_rope(torch.empty_like(y), args[1], args[2], backward=True)
    return [("fwd", fwd), ("bwd", bwd)]


# --- the registry -------------------------------------------------------------------------------------------
_DIT = dict(B=32, T=256, D=1152)  # LightningDiT-XL/1 and SiT-XL/2: 16x16 tokens, width 1152, 32 images/GPU


def _op(name, inputs, nbytes, flops, launches, cases, grad_args=()):
    return Op(
        name,
        getattr(reference, name),
        lambda *a, _n=name: getattr(_triton(), _n)(*a),
        inputs,
        nbytes,
        flops,
        launches,
        tuple(Case(n, s) for n, s in cases),
        grad_args,
    )


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        _op(
            "modulated_rmsnorm",
            _norm_inputs(True),
            _norm_bytes(True),
            _norm_flops,
            _norm_launches(True),
            [("lightningdit_xl1", _DIT)],
            (0, 1, 2, 3),
        ),
        _op(
            "modulated_layernorm",
            _norm_inputs(False),
            _norm_bytes(False),
            _norm_flops,
            _norm_launches(False),
            [("sit_xl2", _DIT)],
            (0, 1, 2),
        ),
        _op(
            "swiglu",
            _swiglu_inputs,
            _swiglu_bytes,
            _swiglu_flops,
            _swiglu_launches,
            [("lightningdit_xl1", dict(B=32, T=256, H=3072))],  # hidden int(2/3 * 4 * 1152) = 3072
            (0,),
        ),
        _op(
            "affine_forward",
            _affine_inputs,
            _affine_bytes,
            _affine_flops,
            _affine_launches,
            [
                ("tarflow_imagenet64", dict(B=64, T=256, D=48, softplus=0)),  # 64x64 px, patch 4: 256 x 48
                ("starflow_imagenet256", dict(B=32, T=1024, D=4, softplus=1)),  # SD-VAE 32x32x4, patch 1
            ],
            (0, 1, 2),
        ),
        _op(
            "affine_inverse",
            _affine_inputs,
            _affine_inv_bytes,
            _affine_flops,
            _affine_inv_launches,
            [
                ("tarflow_imagenet64", dict(B=64, T=256, D=48, softplus=0)),
                ("starflow_imagenet256", dict(B=32, T=1024, D=4, softplus=1)),
            ],
        ),
        _op(
            "kv_attention",
            _kv_inputs,
            _kv_bytes,
            _kv_flops,
            _kv_launches,
            [  # STARFlow deep block (width 3072, head dim 64 -> 48 heads), last token of 1024, CFG doubles B
                ("starflow_deep_cfg_b64", dict(B=64, H=48, L=1024, d=64, length=1024)),
                ("starflow_deep_cfg_b2", dict(B=2, H=48, L=1024, d=64, length=1024)),
            ],
        ),
        _op(
            "rope",
            _rope_inputs,
            _rope_bytes,
            _rope_flops,
            _rope_launches,
            [
                ("lightningdit_xl1", dict(B=32, H=16, T=256, d=72)),  # 1152 / 16 heads, 2D RoPE halves
                ("starflow_deep", dict(B=8, H=48, T=1024, d=64)),
            ],
            (0,),
        ),
    )
}


def element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
