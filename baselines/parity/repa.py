"""Parity adapters for family "REPA": REPA's SiT, its projection loss, the interpolant and the samplers."""

from __future__ import annotations

from typing import Any

import torch

from baselines.sit import SiT
from baselines.transport import euler_maruyama, euler_ode, interpolant, projection_loss, score_from_velocity


def parity_model(kwargs: dict[str, Any]) -> SiT:
    return SiT(**kwargs)


def _forward(model, io, call, config):
    x, t, y = (io[k] for k in call["inputs"])
    out, zs = model(x, t, y)
    return {"forward.out": out, "forward.zs": torch.stack(zs)}


def _proj_loss(model, io, call, config):
    zs, zs_tilde = io["proj_loss.zs"], io["proj_loss.zs_tilde"]
    return {"proj_loss.loss": projection_loss(list(zs), list(zs_tilde))}


def _interpolant(model, io, call, config):
    x_t, v = interpolant(io["interpolant.x0"], io["interpolant.noise"], io["interpolant.t"])
    return {"interpolant.x_t": x_t, "interpolant.v_target": v}


def _siloss(model, io, call, config):
    x_t, v_target = interpolant(io["siloss.x0"], io["siloss.noise"], io["siloss.t"])
    v, zs = model(x_t, io["siloss.t"], io["siloss.y"])
    return {
        "siloss.denoising_loss": (v - v_target).pow(2).flatten(1).mean(1),
        "siloss.proj_loss": projection_loss(zs, list(io["siloss.zs_target"])),
    }


def _em_step(model, io, call, config):
    x, t_cur, t_next, v, eps = (io[f"em_step.{k}"].double() for k in ("x", "t_cur", "t_next", "v", "eps"))
    t_cur, t_next = float(t_cur), float(t_next)
    dt = t_next - t_cur
    s = score_from_velocity(v, x, torch.tensor(t_cur, dtype=torch.float64))
    d = v - 0.5 * (2 * t_cur) * s
    return {
        "em_step.score": s,
        "em_step.drift": d,
        "em_step.x_next": x + d * dt + (2 * t_cur) ** 0.5 * (eps * abs(dt) ** 0.5),
        "em_step.x_mean": x + dt * d,
    }


def _velocity_fn(model, y):
    def velocity(x, t):
        return model(x.float(), torch.full((x.shape[0],), t, dtype=torch.float32), y)[0].double()

    return velocity


def _euler(prefix: str):
    def run(model, io, call, config):
        args = call.get("args", {})
        x = euler_ode(
            _velocity_fn(model, io[f"{prefix}.y"]),
            io[f"{prefix}.latents"],
            int(args.get("num_steps", 4)),
            heun=bool(args.get("heun", False)),
        )
        return {f"{prefix}.out": x.float()}

    return run


def _em_sample(model, io, call, config):
    steps = int(call.get("args", {}).get("num_steps", 4))
    noise = io["em_sample.noise"]
    x = euler_maruyama(
        _velocity_fn(model, io["em_sample.y"]), io["em_sample.latents"], steps, lambda i: noise[i]
    )
    return {"em_sample.out": x.float()}


PARITY_CALLS = {
    "forward": _forward,
    "proj_loss": _proj_loss,
    "interpolant": _interpolant,
    "siloss": _siloss,
    "em_step": _em_step,
    "euler_sample": _euler("euler_sample"),
    "heun_sample": _euler("heun_sample"),
    "em_sample": _em_sample,
}
