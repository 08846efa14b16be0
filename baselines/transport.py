"""Linear-interpolant flow matching shared by REPA/SiT, LightningDiT and FAE generators.

Convention of the common protocol (REPA's): t = 1 is pure noise, t = 0 is data.
    x_t = (1 - t) x0 + t eps,     v = d x_t / d t = eps - x0          (alpha_t = 1 - t, sigma_t = t)
Nets that follow LightningDiT's rectified-flow convention (t = 0 noise, predicting x0 - eps) are wrapped with
`net_time="data_at_1"`: they are called at 1 - t and their output is negated.

Samplers integrate from t = 1 to t = 0: Euler / Heun ODE (REPA samplers.euler_sampler) and Euler-Maruyama SDE
(REPA samplers.euler_maruyama_sampler: diffusion g = 2 t, score from the velocity, last step noise-free).
Classifier-free guidance acts on every channel unless `guidance_channels` asks for the DiT/LightningDiT quirk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from baselines.api import FlowMatchingSampler, Generator, randn_per_sample


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (
        t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        if torch.is_tensor(t) and t.ndim
        else torch.as_tensor(t, dtype=x.dtype)
    )


def interpolant(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - t) x0 + t eps and the velocity target eps - x0. t [B] broadcast over the other axes."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps, eps - x0


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift on the noise-at-1 grid: t' = s t / (1 + (s - 1) t) (SD3 / RAE form). s > 1 spends more of
    the steps near noise, s < 1 near data; s = 1 is the identity and the end points 0 and 1 are fixed."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of the linear path from its velocity: s = ((alpha / alpha') v - x) / (sigma^2 - (alpha / alpha')
    sigma' sigma) with alpha = 1 - t, sigma = t, alpha' = -1, sigma' = 1, i.e. s = ((t - 1) v - x) / t."""
    tb = _bcast(t, x)
    return ((tb - 1) * v - x) / tb


def guidance_scale_at(
    t: float, guidance: float, interval: Sequence[float] | None, schedule: Sequence[Sequence[float]] | None
) -> float:
    """Guidance scale at time t (t = 1 noise). A schedule [(lo, hi, w), ...] wins over (guidance, interval);
    outside every segment / the interval the scale is 1 (no guidance)."""
    if schedule:
        for lo, hi, w in schedule:
            if lo <= t <= hi:
                return float(w)
        return 1.0
    if interval is not None and not (interval[0] <= t <= interval[1]):
        return 1.0
    return float(guidance)


VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]  # (x float64 state, t) -> velocity


def euler_ode(
    velocity: VelocityFn,
    x: torch.Tensor,
    steps: int,
    *,
    heun: bool = False,
    shift: float = 1.0,
    heun_guidance_at_t_cur: bool = False,
) -> torch.Tensor:
    """Euler (or Heun) integration of dx/dt = v from t = 1 to 0 on linspace(1, 0, steps + 1) (shifted).
    State kept in float64 as in the official sampler. With `heun_guidance_at_t_cur`, Heun's second evaluation
    (at t_next) is called as velocity(x, t_next, guide_t=t_cur): REPA decides guidance there by t_cur
    (sihyun-yu/REPA samplers.py:84, 97)."""
    ts = shift_time(torch.linspace(1, 0, steps + 1, dtype=torch.float64), shift).tolist()
    x = x.double()
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v = velocity(x, t_cur)
        x_next = x + (t_next - t_cur) * v
        if heun and i < steps - 1:
            v2 = (
                velocity(x_next, t_next, guide_t=t_cur)
                if heun_guidance_at_t_cur
                else velocity(x_next, t_next)
            )
            x_next = x + (t_next - t_cur) * (0.5 * v + 0.5 * v2)
        x = x_next
    return x


def euler_maruyama(
    velocity: VelocityFn,
    x: torch.Tensor,
    steps: int,
    noise: Callable[[int], torch.Tensor],
    *,
    shift: float = 1.0,
    t_last: float = 0.04,
) -> torch.Tensor:
    """Euler-Maruyama for the reverse SDE with diffusion g = 2 t on grid linspace(1, t_last, steps) + [0];
    `noise(i)` gives the standard-normal draw of stochastic step i; the last step (t_last -> 0) is the mean."""
    grid = shift_time(torch.linspace(1, t_last, steps, dtype=torch.float64), shift).tolist() + [0.0]
    x = x.double()
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        dt = t_next - t_cur
        v = velocity(x, t_cur)
        s = score_from_velocity(v, x, torch.tensor(t_cur, dtype=torch.float64))
        g = 2.0 * t_cur
        d = v - 0.5 * g * s
        if i < len(grid) - 2:
            eps = noise(i).double() * math.sqrt(abs(dt))
            x = x + d * dt + math.sqrt(g) * eps
        else:
            x = x + dt * d
    return x


class FlowMatchingGenerator(Generator):
    """Generator = a velocity net + the linear interpolant. See the module docstring for the time convention."""

    settings_type = FlowMatchingSampler

    def __init__(
        self,
        net: torch.nn.Module,
        latent_shape: tuple[int, ...],
        num_classes: int,
        *,
        net_time: str = "noise_at_1",
        t_sampling: str = "uniform",
        loss_weight: str = "none",
        cos_loss_weight: float = 0.0,
        proj_coeff: float = 0.0,
        label_drop: float = 0.1,
    ):
        super().__init__()
        if net_time not in ("noise_at_1", "data_at_1"):
            raise ValueError(f"net_time must be 'noise_at_1' or 'data_at_1', got {net_time!r}")
        if t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {t_sampling!r}")
        if loss_weight not in ("none", "sigma"):
            raise ValueError(f"loss_weight must be 'none' or 'sigma', got {loss_weight!r}")
        self.net = net
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self.net_time = net_time
        self.t_sampling = t_sampling
        self.loss_weight = loss_weight
        self.cos_loss_weight = cos_loss_weight
        self.proj_coeff = proj_coeff
        self.label_drop = label_drop
        self.needs_features = proj_coeff > 0
        self._t_sampling_built = t_sampling  # what `apply_recipe` returns to before a logit-normal cut-off

    def apply_recipe(self, recipe, epoch: float = 0.0) -> None:
        """Label dropout from the recipe; with `recipe.logit_normal_until_epoch`, logit-normal t before that epoch
        and uniform t from it on (LightningDiT's 800-epoch recipe)."""
        super().apply_recipe(recipe, epoch)
        until = recipe.logit_normal_until_epoch
        if until is None:
            self.t_sampling = self._t_sampling_built
        else:
            self.t_sampling = "logit_normal" if epoch < until else "uniform"

    # --- the network in the common convention -------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_zs: bool = False):
        if self.net_time == "data_at_1":
            out = self.net(x, 1 - t, y)
            v, zs = out if isinstance(out, tuple) else (out, None)
            v = -v
        else:
            out = self.net(x, t, y)
            v, zs = out if isinstance(out, tuple) else (out, None)
        return (v, zs) if return_zs else v

    def _draw_t(self, n: int, device, generator) -> torch.Tensor:
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device, generator=generator))
        return torch.rand(n, device=device, generator=generator)

    def loss(self, latents, labels, features=None, generator=None):
        b = latents.shape[0]
        t = self._draw_t(b, latents.device, generator)
        eps = torch.randn(latents.shape, device=latents.device, generator=generator, dtype=latents.dtype)
        if self.training and self.label_drop > 0:
            drop = torch.rand(b, device=labels.device, generator=generator) < self.label_drop
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        x_t, v_target = interpolant(latents, eps, t)
        v, zs = self.velocity(x_t, t, labels, return_zs=True)
        per_sample = (v.float() - v_target.float()).pow(2).flatten(1).mean(1)
        if self.loss_weight == "sigma":
            per_sample = per_sample * t  # FAE: weight sigma_t = t
        denoise = per_sample.mean()
        out = {"denoise": denoise}
        total = denoise
        if self.cos_loss_weight > 0:
            cos = (1 - F.cosine_similarity(v.float(), v_target.float(), dim=1)).flatten(1).mean(1).mean()
            out["cos"] = cos
            total = total + self.cos_loss_weight * cos
        if self.proj_coeff > 0:
            if features is None or zs is None:
                raise ValueError("REPA alignment needs frozen-encoder features and a net returning (v, zs)")
            proj = projection_loss(zs, [features] if torch.is_tensor(features) else features)
            out["proj"] = proj
            total = total + self.proj_coeff * proj
        out["loss"] = total
        return out

    # --- sampling -------------------------------------------------------------------------------------
    def sample(self, labels, noise, generators=None, settings=None, **overrides):
        """labels [B], noise [B,*latent] (the t = 1 state) -> latents at t = 0 under `FlowMatchingSampler` settings."""
        s = self.settings(settings, **overrides)
        dtype = next(self.net.parameters()).dtype
        null = torch.full_like(labels, self.num_classes)

        def velocity(x: torch.Tensor, t: float, guide_t: float | None = None) -> torch.Tensor:
            w = guidance_scale_at(
                t if guide_t is None else guide_t, s.guidance, s.guidance_interval, s.guidance_schedule
            )
            xin = x.to(dtype)
            if w == 1.0:
                tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
                return self.velocity(xin, tt, labels).double()
            tt = torch.full((2 * x.shape[0],), t, device=x.device, dtype=dtype)
            v_c, v_u = self.velocity(torch.cat([xin, xin]), tt, torch.cat([labels, null])).double().chunk(2)
            guided = v_u + w * (v_c - v_u)
            c = s.guidance_channels
            if c is not None:  # DiT/LightningDiT quirk: guide the first channels only
                guided = torch.cat([guided[:, :c], v_c[:, c:]], dim=1)
            return guided

        if s.mode == "ode":
            x = euler_ode(velocity, noise, s.steps, heun=s.heun, shift=s.time_shift,
                          heun_guidance_at_t_cur=s.heun_guidance == "t_cur")  # fmt: skip
        else:
            if generators is None:
                raise ValueError("SDE sampling needs per-sample generators")
            x = euler_maruyama(
                velocity,
                noise,
                s.steps,
                lambda i: randn_per_sample(generators, tuple(noise.shape[1:]), device=noise.device),
                shift=s.time_shift,
                t_last=s.t_last,
            )
        return x.to(noise.dtype)

    def nfe(self, settings=None, **overrides) -> int:
        s = self.settings(settings, **overrides)
        if s.mode == "ode":
            ts = shift_time(torch.linspace(1, 0, s.steps + 1, dtype=torch.float64), s.time_shift).tolist()
            second = (
                0 if s.heun_guidance == "t_cur" else 1
            )  # the time that decides guidance of Heun's 2nd call
            evals = [ts[i] for i in range(s.steps)] + (
                [ts[i + second] for i in range(s.steps - 1)] if s.heun else []
            )
        else:
            evals = shift_time(
                torch.linspace(1, s.t_last, s.steps, dtype=torch.float64), s.time_shift
            ).tolist()
        return int(
            sum(
                2 if guidance_scale_at(t, s.guidance, s.guidance_interval, s.guidance_schedule) != 1.0 else 1
                for t in evals
            )
        )

    def flops_per_image(self) -> float:
        if hasattr(self.net, "flops_per_image"):
            return float(self.net.flops_per_image())
        return count_forward_flops(self.net, self.latent_shape, self.num_classes)


def projection_loss(zs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """REPA alignment loss: mean over projectors, batch and tokens of -cos(z, target) (loss.py SILoss)."""
    total = 0.0
    for z, f in zip(zs, targets):
        if z.shape[:2] != f.shape[:2]:
            raise ValueError(
                f"projected tokens {tuple(z.shape)} and encoder tokens {tuple(f.shape)} disagree in batch/token count"
            )
        total = total + (-(F.normalize(z.float(), dim=-1) * F.normalize(f.float(), dim=-1)).sum(-1)).mean()
    return total / len(zs)


@torch.no_grad()
def count_forward_flops(net: torch.nn.Module, latent_shape, num_classes: int) -> float:
    """FLOPs of one forward of one image, counted by torch's FlopCounterMode (matmuls/convs/attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *latent_shape)
    t = torch.full((1,), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        net(x, t, y)
    return float(fc.get_total_flops())
