"""Registry entries of the flow affine step at TARFlow ImageNet-64 and STARFlow ImageNet-256 shapes."""

from __future__ import annotations

import torch

from baselines.ops.op_affine import reference
from baselines.ops.spec import make_op, randn

KERNEL = "baselines.ops.op_affine.kernel"
CASES = [
    ("tarflow_imagenet64", dict(B=64, T=256, D=48, softplus=0)),  # 64x64 px, patch 4: 256 x 48
    ("starflow_imagenet256", dict(B=32, T=1024, D=4, softplus=1)),  # SD-VAE 32x32x4, patch 1
]


def _inputs(s, dtype, device, gen):
    shape = (s["B"], s["T"], s["D"])
    x, a, b = (randn(shape, dtype, device, gen, sc) for sc in (1.0, 0.5, 0.5))
    return [x, a, b, bool(s["softplus"])]


def _bytes(s, es):
    n = s["B"] * s["T"] * s["D"] * es
    return {"fwd": 4 * n + 4 * s["B"], "bwd": 7 * n + 4 * s["B"]}


def _inv_bytes(s, es):
    return {"fwd": 4 * s["B"] * s["T"] * s["D"] * es}


def _flops(s):
    n = s["B"] * s["T"] * s["D"]
    per = 12 if s["softplus"] else 4
    return {"fwd": per * n, "bwd": 2 * per * n}


def _launches(args):
    from baselines.ops.op_affine import kernel as K

    x, a, b, softplus = args
    fwd, (z, _) = K.plan_affine_fwd(x, a, b, softplus)
    dlogdet = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    bwd, _ = K.plan_affine_bwd(torch.empty_like(z), dlogdet, x, a, b, softplus)
    return [("fwd", fwd), ("bwd", bwd)]


def _inv_launches(args):
    from baselines.ops.op_affine import kernel as K

    fwd, _ = K.plan_affine_inv(*args)
    return [("fwd", fwd)]


OPS = [
    make_op("affine_forward", reference.affine_forward, KERNEL, _inputs, _bytes, _flops, _launches, CASES,
            (0, 1, 2)),
    make_op("affine_inverse", reference.affine_inverse, KERNEL, _inputs, _inv_bytes, _flops, _inv_launches,
            CASES),
]  # fmt: skip
