"""Registry entries of KV-cache attention at STARFlow's deep block (sampling batch, CFG doubling it)."""

from __future__ import annotations

from baselines.ops.op_kv_attention import reference
from baselines.ops.spec import make_op, randn


def _inputs(s, dtype, device, gen):
    B, H, L, d = s["B"], s["H"], s["L"], s["d"]
    q = randn((B, H, 1, d), dtype, device, gen)
    k, v = randn((B, H, L, d), dtype, device, gen), randn((B, H, L, d), dtype, device, gen)
    return [q, k, v, s["length"]]


def _bytes(s, es):
    B, H, d = s["B"], s["H"], s["d"]
    return {"fwd": B * H * (2 * s["length"] * d + 2 * d) * es}


def _flops(s):
    return {"fwd": 4 * s["B"] * s["H"] * s["length"] * s["d"]}


def _launches(args):
    from baselines.ops.op_kv_attention import kernel as K

    launches, _ = K.plan_kv_attention(*args)
    return [("fwd", launches[0])] + [("fwd.combine", rest) for rest in launches[1:]]


OPS = [
    make_op("kv_attention", reference.kv_attention, "baselines.ops.op_kv_attention.kernel", _inputs, _bytes,
            _flops, _launches,
            [  # STARFlow deep block (width 3072, head dim 64 -> 48 heads), last token of 1024, CFG doubles B
                ("starflow_deep_cfg_b64", dict(B=64, H=48, L=1024, d=64, length=1024)),
                ("starflow_deep_cfg_b2", dict(B=2, H=48, L=1024, d=64, length=1024)),
            ]),
]  # fmt: skip
