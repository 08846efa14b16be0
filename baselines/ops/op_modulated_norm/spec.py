"""Registry entries of the modulated norms: inputs at paper shapes, ideal bytes/flops, launches."""

from __future__ import annotations

import torch

from baselines.ops.op_modulated_norm import reference
from baselines.ops.spec import DIT, make_op, randn

KERNEL = "baselines.ops.op_modulated_norm.kernel"


def _inputs(weight: bool):
    def make(s, dtype, device, gen):
        B, T, D = s["B"], s["T"], s["D"]
        w = [randn((D,), dtype, device, gen, 0.1) + 1] if weight else []
        x = randn((B, T, D), dtype, device, gen)
        return [x, *w, randn((B, D), dtype, device, gen, 0.1), randn((B, D), dtype, device, gen, 0.1)]

    return make


def _bytes(weight: bool):
    def count(s, es):
        B, T, D = s["B"], s["T"], s["D"]
        io, mod, w = B * T * D * es, B * D * es, D * es if weight else 0
        return {"fwd": 2 * io + 2 * mod + w, "bwd": 3 * io + 8 * B * T + 3 * mod + 2 * w}

    return count


def _flops(s):
    n = s["B"] * s["T"] * s["D"]
    return {"fwd": 8 * n, "bwd": 16 * n}


def _launches(is_rms: bool):
    def launches(args):
        from baselines.ops.op_modulated_norm import kernel as K

        x, w = args[0], args[1] if is_rms else None
        shift, scale = args[-2], args[-1]
        fwd, (y, mean, rstd) = K.plan_mod_norm_fwd(x, w, shift, scale, 1e-6, is_rms)
        bwd, _ = K.plan_mod_norm_bwd(torch.empty_like(y), x, w, scale, mean, rstd, is_rms)
        return [("fwd", fwd), ("bwd", bwd)]

    return launches


OPS = [
    make_op("modulated_rmsnorm", reference.modulated_rmsnorm, KERNEL, _inputs(True), _bytes(True), _flops,
            _launches(True), [("lightningdit_xl1", DIT)], (0, 1, 2, 3)),
    make_op("modulated_layernorm", reference.modulated_layernorm, KERNEL, _inputs(False), _bytes(False), _flops,
            _launches(False), [("sit_xl2", DIT)], (0, 1, 2)),
]  # fmt: skip
