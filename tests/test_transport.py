import math

import pytest
import torch

from baselines.api import Recipe, build_backbone, randn_per_sample, sample_generators, sample_seed
from baselines.transport import (
    FlowMatchingGenerator,
    euler_maruyama,
    euler_ode,
    guidance_scale_at,
    interpolant,
    score_from_velocity,
    shift_time,
)


def test_interpolant_endpoints_and_velocity():
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.0, 1.0, 0.25])
    x_t, v = interpolant(x0, eps, t)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1])
    assert torch.allclose(x_t[2], 0.75 * x0[2] + 0.25 * eps[2])
    assert torch.equal(v, eps - x0)


def test_euler_ode_is_exact_for_a_point_mass():
    # Data = a single point c: the true velocity at (x, t) is (x - c) / t, straight lines; Euler is exact.
    c = torch.full((2, 3), 0.7, dtype=torch.float64)
    x1 = torch.randn(2, 3, dtype=torch.float64)
    out = euler_ode(lambda x, t: (x - c) / t, x1, 7, shift=3.0)
    assert torch.allclose(out, c, atol=1e-12)


def test_score_of_the_linear_path_matches_gaussian_score():
    # With x0 = 0, x_t = t eps ~ N(0, t^2): score = -x / t^2 and the velocity is x / t.
    x = torch.randn(4, 5, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    assert torch.allclose(score_from_velocity(x / t, x, t), -x / t**2)


def test_euler_maruyama_final_step_is_noise_free_and_uses_given_noise():
    x = torch.randn(2, 3, dtype=torch.float64)
    calls = []

    def noise(i):
        calls.append(i)
        return torch.zeros(2, 3)

    euler_maruyama(lambda x, t: x, x, 5, noise)
    assert calls == [0, 1, 2, 3]  # 5 grid points -> 4 stochastic steps, then the mean step to 0


def test_shift_time_fixes_endpoints_and_moves_mass():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s[1:-1] > t[1:-1]).all())
    assert torch.allclose(shift_time(s, 1 / 3.0), t)


def test_guidance_interval_and_schedule():
    assert guidance_scale_at(0.5, 1.8, (0.0, 0.7), None) == 1.8
    assert guidance_scale_at(0.8, 1.8, (0.0, 0.7), None) == 1.0
    sched = [(0.9, 1.0, 0.9), (0.0, 0.7, 2.5)]
    assert guidance_scale_at(0.95, 9, None, sched) == 0.9
    assert guidance_scale_at(0.8, 9, None, sched) == 1.0
    assert guidance_scale_at(0.3, 9, None, sched) == 2.5


class _Affine(torch.nn.Module):
    """A velocity net whose output depends on the label, so CFG changes the result."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.emb = torch.nn.Embedding(4, 1)

    def forward(self, x, t, y):
        return self.w * x + self.emb(y).view(-1, 1, 1, 1)


def test_nfe_counts_cfg_pairs_and_heun():
    g = FlowMatchingGenerator(_Affine(), (2, 2, 2), 3)
    assert g.nfe(mode="ode", steps=10) == 10
    assert g.nfe(mode="ode", steps=10, heun=True) == 19
    assert g.nfe(mode="sde", steps=10, guidance=2.0) == 20
    assert g.nfe(mode="sde", steps=10, guidance=2.0, guidance_interval=(0.0, 0.5)) < 20


def test_guidance_channels_quirk_only_touches_first_channels():
    torch.manual_seed(0)
    g = FlowMatchingGenerator(_Affine(), (4, 2, 2), 3).eval()
    labels, noise = torch.tensor([0, 1]), torch.randn(2, 4, 2, 2)
    plain = g.sample(labels, noise, steps=4)
    full = g.sample(labels, noise, steps=4, guidance=3.0)
    quirk = g.sample(labels, noise, steps=4, guidance=3.0, guidance_channels=3)
    assert not torch.allclose(full, plain)
    assert torch.allclose(quirk[:, :3], full[:, :3]) and torch.allclose(quirk[:, 3:], plain[:, 3:])


def test_samples_do_not_depend_on_batch_composition():
    torch.manual_seed(0)
    g = FlowMatchingGenerator(_Affine(), (2, 3, 3), 3).eval()
    gens = lambda idx: sample_generators(7, idx)
    idx = list(range(6))
    labels = torch.tensor([i % 3 for i in idx])
    full = g.sample(
        labels, randn_per_sample(gens(idx), (2, 3, 3)), gens(idx), mode="sde", steps=5, guidance=2.0
    )
    half = torch.cat([
        g.sample(labels[s:e], randn_per_sample(gens(idx[s:e]), (2, 3, 3)), gens(idx[s:e]), mode="sde", steps=5, guidance=2.0)
        for s, e in ((0, 4), (4, 6))
    ])  # fmt: skip
    assert torch.allclose(full, half, atol=1e-6)


def test_loss_is_seeded_and_has_parts():
    torch.manual_seed(0)
    g = FlowMatchingGenerator(
        _Affine(), (2, 3, 3), 3, t_sampling="logit_normal", cos_loss_weight=1.0, loss_weight="sigma"
    )
    lat, y = torch.randn(4, 2, 3, 3), torch.tensor([0, 1, 2, 0])
    a = g.loss(lat, y, generator=torch.Generator().manual_seed(1))
    b = g.loss(lat, y, generator=torch.Generator().manual_seed(1))
    assert set(a) == {"loss", "denoise", "cos"} and torch.equal(a["loss"], b["loss"])
    assert math.isclose(float(a["loss"].detach()), float((a["denoise"] + a["cos"]).detach()), rel_tol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="net_time"):
        FlowMatchingGenerator(_Affine(), (2, 2, 2), 3, net_time="sideways")
    with pytest.raises(ValueError, match="unknown recipe field"):
        Recipe().replace(learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("dalle")


def test_sample_seed_is_a_pure_function():
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(0, 6) != sample_seed(1, 5)
    a = randn_per_sample(sample_generators(3, [4, 9]), (5,))
    b = randn_per_sample(sample_generators(3, [9]), (5,))
    assert torch.equal(a[1], b[0])
