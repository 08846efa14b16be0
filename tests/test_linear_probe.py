"""Linear probe: correctness against scipy's optimiser on the same objective, determinism, pooling, errors,
and a real use on the embedded data with the stand-in encoder."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.linear_probe import linear_probe, pool_features


def _blobs(n_per_class: int, dim: int, classes: int, sep: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * sep
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_separable_and_random_labels():
    xtr, ytr = _blobs(40, 16, 4, sep=4.0, seed=0)
    xte, yte = _blobs(20, 16, 4, sep=4.0, seed=0)  # same centres, fresh noise draw below
    xte = xte + 0.1 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(1))
    assert linear_probe(xtr, ytr, xte, yte) == 1.0
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(2))]
    acc = linear_probe(xtr, shuffled, xte, yte)
    assert acc < 0.6  # labels carry no signal: near chance (0.25), far from 1


def test_matches_scipy_on_the_same_objective():
    from scipy.optimize import minimize

    xtr, ytr = _blobs(30, 8, 3, sep=1.0, seed=3)  # overlapping classes: the optimum matters
    xte, yte = _blobs(30, 8, 3, sep=1.0, seed=4)
    wd = 1e-2
    acc = linear_probe(xtr, ytr, xte, yte, weight_decay=wd)

    mean, std = xtr.double().mean(0), xtr.double().std(0, unbiased=False)
    a, b = ((xtr.double() - mean) / std).numpy(), ((xte.double() - mean) / std).numpy()

    def objective(theta):
        t = torch.from_numpy(theta).requires_grad_(True)
        w, bias = t[: 8 * 3].view(8, 3), t[8 * 3 :]
        loss = F.cross_entropy(torch.from_numpy(a) @ w + bias, ytr) + wd * w.pow(2).sum()
        loss.backward()
        return loss.item(), t.grad.numpy().copy()

    res = minimize(
        objective, np.zeros(8 * 3 + 3), jac=True, method="L-BFGS-B", options=dict(gtol=1e-10, maxiter=1000)
    )
    w, bias = res.x[:24].reshape(8, 3), res.x[24:]
    ref = float(((b @ w + bias).argmax(1) == yte.numpy()).mean())
    assert acc == pytest.approx(ref)


def test_deterministic_and_scale_invariant():
    xtr, ytr = _blobs(25, 12, 5, sep=1.0, seed=5)
    xte, yte = _blobs(25, 12, 5, sep=1.0, seed=6)
    a = linear_probe(xtr, ytr, xte, yte)
    assert a == linear_probe(xtr, ytr, xte, yte)
    scale = torch.linspace(0.1, 10, 12)  # per-feature rescaling is undone by the standardisation
    assert a == pytest.approx(linear_probe(xtr * scale, ytr, xte * scale, yte))
    assert linear_probe(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy()) == a  # numpy input


def test_pooling():
    tokens = torch.randn(3, 5, 7)  # [N, T, D]
    torch.testing.assert_close(pool_features(tokens), tokens.double().mean(1))
    assert pool_features(tokens, "flatten").shape == (3, 35)
    latents = torch.randn(3, 4, 2, 2)  # [N, C, H, W]
    torch.testing.assert_close(pool_features(latents), latents.double().mean((2, 3)))
    assert pool_features(latents, "flatten").shape == (3, 16)
    with pytest.raises(ValueError, match="pool"):
        pool_features(tokens, "max")


def test_errors():
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="disagree"):
        linear_probe(x, y[:9], x, y)
    with pytest.raises(ValueError, match="differ in size"):
        linear_probe(x, y, torch.randn(10, 5), y)
    with pytest.raises(ValueError, match="non-empty"):
        linear_probe(x[:0], y[:0], x, y)


def test_stand_in_features_on_embedded_data():
    from baselines.encoders import build_encoder
    from bench.data import embedded_images, to_model_range

    enc = build_encoder("standin", dim=64, grid=4)
    xtr, ytr = embedded_images(32, 32, "train")
    xte, yte = embedded_images(32, 16, "test")
    with torch.no_grad():
        ftr, fte = enc(to_model_range(xtr)), enc(to_model_range(xte))
    acc = linear_probe(ftr, ytr, fte, yte)
    assert acc > 0.6  # 8 photo classes, chance 0.125: colour/texture statistics separate them
