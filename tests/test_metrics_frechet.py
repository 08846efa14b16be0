"""Metric math against the reference implementations: Frechet distance (pytorch-fid, clean-fid, torchmetrics,
torch-fidelity), IS and precision/recall (torch-fidelity), plus KID, bootstrap intervals and FID-infinity."""

import warnings

import numpy as np
import pytest
import torch

from bench.metrics import (
    bootstrap_fid,
    fid_infinity,
    frechet_distance,
    frechet_distance_to_features,
    inception_score,
    kid,
    precision_recall,
    statistics,
)

RTOL = 1e-6


def _stats_pair(d, n, decay, seed=0):
    """Statistics of two sets of n features in d dims whose spectra span exp(-decay) (cond ~ exp(2 decay)),
    in a random basis; the second set is rescaled a little and shifted."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.exp(-decay * np.arange(d) / d)
    x1 = (rng.standard_normal((n, d)) * scales) @ q.T
    x2 = (rng.standard_normal((n, d)) * scales * rng.uniform(0.8, 1.2, d)) @ q.T + 0.02
    return (*statistics(x1), *statistics(x2))


def _scipy_fid(fn, *stats):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy deprecates sqrtm(disp=...), which both tools pass
        return float(fn(*stats))


def _torchmetrics_fid(mu1, s1, mu2, s2):
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))))


def _torch_fidelity_fid(mu1, s1, mu2, s2):
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)[
        KEY_METRIC_FID
    ]


@pytest.mark.parametrize(
    "name,n,decay",
    [("random", 600, 1.0), ("ill-conditioned", 600, 13.0), ("rank-deficient", 100, 2.0)],
)
def test_frechet_matches_all_references_small(name, n, decay):
    from cleanfid.fid import frechet_distance as cleanfid_fd

    pytorch_fid = pytest.importorskip("pytorch_fid.fid_score", reason="pytorch-fid not installed")
    stats = _stats_pair(192, n, decay)
    ours = frechet_distance(*stats)
    refs = {
        "clean-fid": _scipy_fid(cleanfid_fd, *stats),
        "pytorch-fid": _scipy_fid(pytorch_fid.calculate_frechet_distance, *stats),
        "torchmetrics": _torchmetrics_fid(*stats),
        "torch-fidelity": _torch_fidelity_fid(*stats),
    }
    for lib, ref in refs.items():
        assert ours == pytest.approx(ref, rel=RTOL), (name, lib, ours, ref)


def test_frechet_2048_random_vs_pytorch_fid_and_torchmetrics():
    pytorch_fid = pytest.importorskip("pytorch_fid.fid_score", reason="pytorch-fid not installed")
    stats = _stats_pair(2048, 4096, 1.0, seed=1)
    ours = frechet_distance(*stats)
    assert ours == pytest.approx(_scipy_fid(pytorch_fid.calculate_frechet_distance, *stats), rel=RTOL)
    assert ours == pytest.approx(_torchmetrics_fid(*stats), rel=RTOL)


def test_frechet_2048_nearly_singular_vs_clean_fid_and_torchmetrics():
    from cleanfid.fid import frechet_distance as cleanfid_fd

    stats = _stats_pair(2048, 4096, 9.0, seed=2)  # eigenvalues over ~8 decades (cond ~1e8)
    ours = frechet_distance(*stats)
    assert ours == pytest.approx(_scipy_fid(cleanfid_fd, *stats), rel=RTOL)
    assert ours == pytest.approx(_torchmetrics_fid(*stats), rel=RTOL)


def test_frechet_properties_and_errors():
    mu1, s1, mu2, s2 = _stats_pair(32, 200, 1.0)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    # identical covariances: only the mean term remains
    assert frechet_distance(mu1, s1, mu1 + 1.0, s1) == pytest.approx(32.0, rel=1e-8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(mu1, s1, mu2[:-1], s2[:-1, :-1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        frechet_distance(mu1, s1 * np.nan, mu2, s2)
    with pytest.raises(ValueError, match=r"\[D, D\]"):
        frechet_distance(mu1, s1[:-1], mu2, s2)


@pytest.mark.parametrize("n", [20, 300])
def test_frechet_to_features_equals_frechet_of_statistics(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    mu2, s2 = statistics(rng.standard_normal((500, 64)) * 1.3 + 0.2)
    expected = frechet_distance(*statistics(x), mu2, s2)
    assert frechet_distance_to_features(x, mu2, s2) == pytest.approx(expected, rel=RTOL)


def test_statistics_equal_numpy_cov_in_float64():
    x = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32) * 3 + 5
    mu, sigma = statistics(x, chunk=128)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        statistics(np.full((4, 3), np.nan))


def test_inception_score_equals_torch_fidelity_with_adm_splits():
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

    logits = np.random.default_rng(0).standard_normal((60, 50)) * 3
    ours = inception_score(logits, split_size=20)  # three consecutive splits, as ADM's split_size
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=3, shuffle=False)[KEY_METRIC_ISC_MEAN]
    assert ours == pytest.approx(ref, rel=1e-10)
    # one confident class per sample, uniform over classes -> IS = number of classes
    assert inception_score(np.eye(10)[np.arange(100) % 10] * 100.0) == pytest.approx(10.0, rel=1e-6)


def test_precision_recall_equal_torch_fidelity_on_same_features():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 32)).astype(np.float32)
    smp = (rng.standard_normal((250, 32)) * 0.7 + 0.4).astype(np.float32)
    # torch-fidelity computes in float32 (ADM's float16 blocks are tested against a port of ADM's code)
    prec, rec = precision_recall(ref, smp, k=3, block=64, distances="float32")  # blocks < N: tiling
    # torch-fidelity's convention: features_1 = generated, features_2 = real
    tf_prec, tf_rec = calculate_precision_recall_full(
        torch.from_numpy(smp), torch.from_numpy(ref), neighborhood=3
    )
    assert (prec, rec) == (
        pytest.approx(tf_prec, abs=1e-6),
        pytest.approx(tf_rec, abs=1e-6),
    )  # theirs: float32 mean
    assert 0.0 < rec < prec < 1.0  # a narrower, shifted sample set: high precision, lower recall


def test_kid_zero_for_same_distribution_positive_for_shift():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same, same_std = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * max(abs(same), 1e-4)


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    d = 16
    x = rng.standard_normal((400, d)) + 0.1
    mu, sigma = np.zeros(d), np.eye(d)
    b = bootstrap_fid(x, mu, sigma, n_boot=100, seed=0)
    assert b["ci_low"] < b["fid"] < b["ci_high"]
    assert b["boot_mean"] > b["fid"]  # resampling repeats points: replicates are biased upward
    assert bootstrap_fid(x, mu, sigma, n_boot=100, seed=0) == b  # seeded
    pct = bootstrap_fid(x, mu, sigma, n_boot=100, seed=0, method="percentile")
    assert pct["ci_low"] > b["ci_low"]
    big = bootstrap_fid(rng.standard_normal((1600, d)) + 0.1, mu, sigma, n_boot=100, seed=0)
    assert big["ci_high"] - big["ci_low"] < 0.7 * (b["ci_high"] - b["ci_low"])  # ~1/sqrt(N) narrower


def test_fid_infinity_removes_the_1_over_n_bias():
    rng = np.random.default_rng(0)
    d = 32
    x = rng.standard_normal((4000, d))  # drawn from exactly the reference Gaussian: true FID = 0
    r = fid_infinity(x, np.zeros(d), np.eye(d), num_points=8, seed=0)
    assert r["fids"][0] > r["fids"][-1] > 0  # FID_N shrinks with N but stays biased
    assert r["slope"] > 0 and r["r2"] > 0.9
    assert abs(r["fid_inf"]) < 0.2 * r["fids"][-1]
