"""Parity adapters for family "normalizing_flow/starflow" (apple/ml-starflow transformer_flow.Model, image path)."""

from __future__ import annotations

from typing import Any

import torch

from baselines.starflow import LATENT_NORM_REG, StarFlow


def parity_model(kwargs: dict[str, Any]) -> StarFlow:
    return StarFlow(**kwargs)


def _forward_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    with torch.no_grad():
        z, y_out, outputs, logdets = model(x, y)
        flow = model.get_loss(z, logdets)
        loss = flow["loss"] + LATENT_NORM_REG * model.latent_norm(outputs)
    return {
        "z": z,
        "y_out": y_out,
        "logdets": torch.stack(logdets),
        "outputs": torch.stack(outputs),
        "loss": loss,
        "loss_flow": flow["loss"],
        "loss_z": flow["loss_z"],
        "loss_logdet": flow["loss_logdet"],
    }


def _reverse_call(model, io, call, config, key: str, convention: str):
    z, y = (io[k] for k in call["inputs"])
    opts = config.get("conventions", {}).get(convention, {})
    seq = model.reverse(
        z, y, float(opts.get("guidance", 0.0)), float(opts.get("attn_temp", 1.0)), return_sequence=True
    )
    return {key: seq[-1], f"{key}_seq": torch.stack(seq)}


def _denoise_call(model, io, call, config):
    x, y = (io[k] for k in call["inputs"])
    opts = config["conventions"]["denoise"]
    return {"x_denoised": model.denoise(x, y, float(opts["noise_std"]), float(opts.get("lr", 1.0)))}


PARITY_CALLS = {
    "forward": _forward_call,
    "reverse": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample", "reverse"),
    "reverse_cfg": lambda m, io, c, cfg: _reverse_call(m, io, c, cfg, "x_sample_cfg", "reverse_cfg"),
    "denoise": _denoise_call,
}
