"""FID-infinity (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them",
CVPR 2020): FID_N is, to first order, linear in 1/N (FID_N = FID_inf + k / N); compute FID on random subsets
of several sizes N, fit a line against 1/N by least squares and report its intercept at 1/N = 0."""

from __future__ import annotations

import numpy as np

from bench.metrics.frechet import sqrt_psd, statistics, trace_sqrt_product


def fid_infinity(
    sample_features: np.ndarray,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    num_points: int = 15,
    min_n: int | None = None,
    seed: int = 0,
) -> dict:
    """{fid_inf, slope, r2, ns, fids}. Sizes: `num_points` evenly spaced from `min_n` (default N/10, the
    paper's 5k of 50k) to N; each subset is the first n of one random permutation, as the paper's code."""
    x = np.asarray(sample_features)
    n = len(x)
    min_n = max(2, n // 10) if min_n is None else min_n
    if not 2 <= min_n < n or num_points < 2:
        raise ValueError(
            f"need 2 <= min_n < N and num_points >= 2, got min_n={min_n}, N={n}, num_points={num_points}"
        )
    ns = np.unique(np.linspace(min_n, n, num_points).astype(np.int64))
    if len(ns) < 2:
        raise ValueError(f"too few distinct subset sizes between {min_n} and {n}")
    ref_mu, ref_sigma = np.asarray(ref_mu, np.float64), np.asarray(ref_sigma, np.float64)
    sqrt_ref = sqrt_psd(0.5 * (ref_sigma + ref_sigma.T))  # reused for every subset
    tr_ref = float(np.trace(ref_sigma))
    perm = np.random.default_rng(seed).permutation(n)
    fids = []
    for m in ns:
        mu, sigma = statistics(x[perm[:m]])
        d = mu - ref_mu
        fids.append(float(d @ d + np.trace(sigma) + tr_ref - 2 * trace_sqrt_product(sqrt_ref, sigma)))
    fids = np.asarray(fids)
    slope, intercept = np.polyfit(1.0 / ns, fids, 1)
    pred = intercept + slope / ns
    ss_res, ss_tot = float(((fids - pred) ** 2).sum()), float(((fids - fids.mean()) ** 2).sum())
    return {
        "fid_inf": float(intercept),
        "slope": float(slope),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "ns": ns.tolist(),
        "fids": fids.tolist(),
    }
