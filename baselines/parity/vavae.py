"""Parity adapters for family "vavae": the LDM AutoencoderKL / VA-VAE encode, decode and VF loss."""

from __future__ import annotations

from typing import Any

import torch

from baselines.autoencoder import AutoencoderKL
from baselines.vavae import VAVAE, tokens_to_map, vf_loss


def parity_model(kwargs: dict[str, Any]) -> VAVAE:
    if kwargs.get("use_vf") is None:  # the plain LDM autoencoder: no linear_proj
        return AutoencoderKL(kwargs["ddconfig"], kwargs["embed_dim"])
    return VAVAE(kwargs["ddconfig"], kwargs["embed_dim"], int(kwargs.get("vf_feature_dim", 1024)),
                 bool(kwargs.get("reverse_proj", False)))  # fmt: skip


def _encode(model, io, call, config):
    with torch.no_grad():
        post = model.encode(io[call["inputs"][0]])
    return {"moments": post.moments, "mean": post.mean, "logvar": post.logvar}


def _decode(model, io, call, config):
    with torch.no_grad():
        return {"x_rec": model.decode(io[call["inputs"][0]])}


def _vf_loss(model, io, call, config):
    z, f = io[call["inputs"][0]], io[call["inputs"][1]]
    a = call.get("scalar_args", {})
    lp = config["kwargs"].get("lossconfig", {}).get("params", {})
    pick = lambda k, d: float(a.get(k, lp.get(k, d)))  # noqa: E731
    with torch.no_grad():
        zp, aux = model.project(z, tokens_to_map(f, z.shape[2], z.shape[3]))
        out = vf_loss(zp, aux, pick("distmat_margin", 0.0), pick("cos_margin", 0.0), pick("distmat_weight", 1.0),
                      pick("cos_weight", 1.0))  # fmt: skip
    return {
        "z_proj": zp,
        "vf_loss_distmat": out["vf_distmat"],
        "vf_loss_cos": out["vf_cos"],
        "vf_loss": out["vf_loss"],
    }


PARITY_CALLS = {"encode": _encode, "decode": _decode, "vf_loss": _vf_loss}
