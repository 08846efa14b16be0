"""Registry entry of the SwiGLU gate at LightningDiT-XL/1's shape."""

from __future__ import annotations

import torch

from baselines.ops.op_swiglu import reference
from baselines.ops.spec import make_op, randn


def _inputs(s, dtype, device, gen):
    return [randn((s["B"], s["T"], 2 * s["H"]), dtype, device, gen)]


def _bytes(s, es):
    n = s["B"] * s["T"] * s["H"] * es
    return {"fwd": 3 * n, "bwd": 5 * n}


def _flops(s):
    n = s["B"] * s["T"] * s["H"]
    return {"fwd": 6 * n, "bwd": 12 * n}


def _launches(args):
    from baselines.ops.op_swiglu import kernel as K

    fwd, out = K.plan_swiglu_fwd(args[0])
    bwd, _ = K.plan_swiglu_bwd(torch.empty_like(out), args[0])
    return [("fwd", fwd), ("bwd", bwd)]


OPS = [
    make_op("swiglu", reference.swiglu, "baselines.ops.op_swiglu.kernel", _inputs, _bytes, _flops, _launches,
            [("lightningdit_xl1", dict(B=32, T=256, H=3072))], (0,)),  # hidden int(2/3 * 4 * 1152) = 3072
]  # fmt: skip
