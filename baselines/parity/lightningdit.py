"""Parity adapters for family "lightningdit": forward and the released forward_with_cfg."""

from __future__ import annotations

from typing import Any

import torch

from baselines.lightningdit import LightningDiT, official_forward_with_cfg


def parity_model(kwargs: dict[str, Any]) -> LightningDiT:
    return LightningDiT(**kwargs)


def _forward(model, io, call, config):
    x, t, y = (io[k] for k in call["inputs"][:3])
    with torch.no_grad():
        return {call["outputs"][0]: model(x, t, y)}


def _forward_with_cfg(model, io, call, config):
    x, t, y = (io[k] for k in call["inputs"][:3])
    args = call.get("scalar_args", {})
    with torch.no_grad():
        out = official_forward_with_cfg(model, x, t, y, float(args["cfg_scale"]), bool(args.get("cfg_interval", False)),
                                        float(args.get("cfg_interval_start", 0.0)))  # fmt: skip
    return {call["outputs"][0]: out}


PARITY_CALLS = {
    "forward": _forward,
    "forward_with_cfg": _forward_with_cfg,
    "forward_with_cfg_below_interval": _forward_with_cfg,
}
