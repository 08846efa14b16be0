"""Parity adapters for family "normalizing_flow/tarflow" (apple/ml-tarflow transformer_flow.Model)."""

from __future__ import annotations

from typing import Any

import torch

from baselines.tarflow import TarFlow

_OFFICIAL_KWARGS = (
    "in_channels",
    "img_size",
    "patch_size",
    "channels",
    "num_blocks",
    "layers_per_block",
    "nvp",
    "num_classes",
)


def parity_model(kwargs: dict[str, Any]) -> TarFlow:
    unknown = sorted(set(kwargs) - set(_OFFICIAL_KWARGS))
    if unknown:
        raise ValueError(f"unknown TARFlow constructor argument(s) {unknown}; official: {_OFFICIAL_KWARGS}")
    return TarFlow(**kwargs)


def _forward_call(model, io, call, config, suffix=""):
    x, y = (io[k] for k in call["inputs"])
    with torch.no_grad():
        z, outputs, logdets = model(x, y)
    out = {f"z{suffix}": z, f"logdets{suffix}": logdets, f"loss{suffix}": model.get_loss(z, logdets)}
    if not suffix:
        out["block_outputs"] = torch.stack(outputs)
    return out


def _reverse_call(model, io, call, config, key: str, convention: str | None, uncond: bool = False):
    z = io[call["inputs"][0]]
    y = None if uncond else io[call["inputs"][1]]
    opts = dict(config.get("conventions", {}).get(convention, {})) if convention else {}
    kw = {k: opts[k] for k in ("guidance", "guide_what", "attn_temp", "annealed_guidance") if k in opts}
    return {key: model.reverse(z, y, **kw)}


def _denoise_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    opts = config["conventions"]["denoise"]
    return {
        "x_denoised": model.denoise(x, y, float(opts["noise_std"]), float(opts.get("self_denoising_lr", 1.0)))
    }


PARITY_CALLS = {
    "forward": lambda m, io, c, cfg: _forward_call(m, io, c, cfg),
    "forward_drop": lambda m, io, c, cfg: _forward_call(m, io, c, cfg, "_drop"),
    "reverse": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample", None),
    "reverse_uncond": lambda m, io, c, cfg: _reverse_call(
        m, io, c, cfg, "x_sample_uncond", None, uncond=True
    ),
    "reverse_cfg": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample_cfg", "reverse_cfg"),
    "reverse_cfg_annealed": lambda m, io, c, cfg: _reverse_call(
        m, io, c, cfg, "x_sample_cfg_annealed", "reverse_cfg_annealed"
    ),
    "denoise": _denoise_call,
}
