"""Registry entries of RoPE at LightningDiT-XL/1 (2D, head dim 72) and STARFlow's deep block."""

from __future__ import annotations

import math

import torch

from baselines.ops.op_rope import reference
from baselines.ops.spec import make_op, randn


def _inputs(s, dtype, device, gen):
    B, H, T, d = s["B"], s["H"], s["T"], s["d"]
    x = randn((B, H, T, d), dtype, device, gen)
    if torch.device(device).type == "meta":
        table = torch.empty(T, d, dtype=dtype, device=device)
        return [x, table, torch.empty_like(table)]
    ang = torch.rand(T, d // 2, generator=gen) * math.pi * 2
    ang = ang.repeat_interleave(2, dim=-1).to(device)
    return [x, ang.cos().to(dtype), ang.sin().to(dtype)]


def _bytes(s, es):
    n, table = s["B"] * s["H"] * s["T"] * s["d"] * es, 2 * s["T"] * s["d"] * es
    return {"fwd": 2 * n + table, "bwd": 2 * n + table}


def _flops(s):
    n = s["B"] * s["H"] * s["T"] * s["d"]
    return {"fwd": 3 * n, "bwd": 3 * n}


def _launches(args):
    from baselines.ops.op_rope import kernel as K

    fwd, y = K.plan_rope(*args)
    bwd, _ = K.plan_rope(torch.empty_like(y), args[1], args[2], backward=True)
    return [("fwd", fwd), ("bwd", bwd)]


OPS = [
    make_op("rope", reference.rope, "baselines.ops.op_rope.kernel", _inputs, _bytes, _flops, _launches,
            [
                ("lightningdit_xl1", dict(B=32, H=16, T=256, d=72)),  # 1152 / 16 heads, 2D RoPE halves
                ("starflow_deep", dict(B=8, H=48, T=1024, d=64)),
            ], (0,)),
]  # fmt: skip
