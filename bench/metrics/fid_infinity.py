"""FID-infinity (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them",
CVPR 2020): FID_N is, to first order, linear in 1/N (FID_N = FID_inf + k / N); compute FID on random subsets
of several sizes N, fit a line against 1/N by least squares and report its intercept at 1/N = 0.

The authors' code (mchong6/FID_IS_infinity, score_infinity.py:117-170 at 2cbf52e) takes 15 sizes evenly
spaced from 5000 to N (for D = 2048 features), asserts N > 5000 (:149), and draws each subset as the first n
rows after another in-place `np.random.shuffle` of the activations (:155-161). We do the same, shuffling an
index array in place with `np.random.RandomState(seed)`: for a given seed the subsets are the paper's code's
after `np.random.seed(seed)`. The first-order expansion only holds when every subset has clearly
more samples than dimensions: below D the subset covariance is singular and FID_N bends away from the line
(D = 128, N = 1000 with subsets from 100 gave -0.11 for a true 0.70, at r^2 = 0.99). So the smallest subset
is at least 2 x D (the paper's floor is 5000 = 2.4 x 2048), and the sizes must span at least a factor of 5
(the paper: 10); anything else raises OptionError rather than return a number that looks fine and is not.
"""

from __future__ import annotations

import numpy as np

from bench.errors import OptionError
from bench.metrics.frechet import sqrt_psd, statistics, trace_sqrt_product

MIN_N_PER_DIM = 2  # smallest subset >= 2 x D
MIN_SPAN = 5  # largest subset >= 5 x smallest


def subset_sizes(n: int, d: int, num_points: int = 15, min_n: int | None = None) -> np.ndarray:
    """The subset sizes fitted for N samples of D-dim features, or OptionError (see the module docstring)."""
    floor = MIN_N_PER_DIM * d
    min_n = max(n // 10, floor) if min_n is None else int(min_n)
    if num_points < 2:
        raise OptionError(f"FID-infinity: num_points must be >= 2, got {num_points}")
    if min_n < floor:
        raise OptionError(
            f"FID-infinity: smallest subset {min_n} is below 2 x D = {floor} for D = {d} features; FID_N is not "
            f"linear in 1/N there (Chong & Forsyth use >= 5000 for D = 2048)"
        )
    if n < MIN_SPAN * min_n:
        raise OptionError(
            f"FID-infinity: {n} samples are too few for D = {d} features: the fit needs subsets from "
            f"{min_n} (>= 2 x D) up to N >= {MIN_SPAN} x {min_n} = {MIN_SPAN * min_n} "
            f"(Chong & Forsyth: 5000 to 50000 for D = 2048)"
        )
    return np.unique(np.linspace(min_n, n, num_points).astype(np.int64))


def fid_infinity(
    sample_features: np.ndarray,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    num_points: int = 15,
    min_n: int | None = None,
    seed: int = 0,
) -> dict:
    """{fid_inf, slope, r2, ns, fids, n_min, n_max}: FID on `num_points` subset sizes `ns`, evenly spaced from
    `min_n` (default max(N / 10, 2 x D): the paper's 5000 of 50000) to N, each subset the first n rows after
    another shuffle; least-squares line against 1/n. OptionError when min_n < 2 x D or N < 5 x min_n."""
    x = np.asarray(sample_features)
    if x.ndim != 2:
        raise OptionError(f"FID-infinity: features must be [N, D], got shape {x.shape}")
    n = len(x)
    ns = subset_sizes(n, x.shape[1], num_points, min_n)
    ref_mu, ref_sigma = np.asarray(ref_mu, np.float64), np.asarray(ref_sigma, np.float64)
    sqrt_ref = sqrt_psd(0.5 * (ref_sigma + ref_sigma.T))  # reused for every subset
    tr_ref = float(np.trace(ref_sigma))
    rng, order = np.random.RandomState(seed), np.arange(n)
    fids = []
    for m in ns:
        rng.shuffle(order)  # reshuffled for each size, as the paper's code
        mu, sigma = statistics(x[order[:m]])
        diff = mu - ref_mu
        fids.append(float(diff @ diff + np.trace(sigma) + tr_ref - 2 * trace_sqrt_product(sqrt_ref, sigma)))
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
        "n_min": int(ns[0]),
        "n_max": int(ns[-1]),
    }
