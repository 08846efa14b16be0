"""Bootstrap confidence intervals for FID: resample the sample features with replacement (and optionally the
reference features), recompute the Frechet distance per replicate, in float64 on the given device.

Resampling with replacement repeats points, which shrinks the effective sample size and biases every
replicate's FID upward. The default interval ("centered") therefore shifts the bootstrap percentiles by the
bootstrap bias, mean(FID*) - FID, so it is centred on the point estimate with the bootstrap spread;
"percentile" gives the raw percentiles and "basic" the reverse-percentile interval 2 FID - q.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.metrics.frechet import frechet_distance, statistics


def _weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of the resample given by multiplicity weights w [N] (sum N)."""
    n = w.sum()
    mu = (w @ x) / n
    xc = x - mu
    sigma = (xc.T * w) @ xc / (n - 1)
    return mu, sigma


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _fd(mu1, sigma1, sqrt1, mu2, sigma2) -> float:
    m = sqrt1 @ sigma2 @ sqrt1
    tr = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    d = mu1 - mu2
    return float(d @ d + sigma1.trace() + sigma2.trace() - 2 * tr)


def bootstrap_fid(
    sample_features: np.ndarray,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    ref_features: np.ndarray | None = None,
    method: str = "centered",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """FID with a bootstrap interval: {fid, ci_low, ci_high, boot_std, boot_mean, n_boot, level}."""
    if method not in ("centered", "percentile", "basic"):
        raise ValueError(f"method must be centered, percentile or basic, got {method!r}")
    if n_boot < 2 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 2 and 0 < level < 1, got {n_boot}, {level}")
    mu, sigma = statistics(sample_features)
    point = frechet_distance(mu, sigma, ref_mu, ref_sigma)
    dev = torch.device(device)
    x = torch.as_tensor(np.asarray(sample_features), dtype=torch.float64, device=dev)
    r_mu = torch.as_tensor(ref_mu, dtype=torch.float64, device=dev)
    r_sigma = torch.as_tensor(ref_sigma, dtype=torch.float64, device=dev)
    r_x = (
        None
        if ref_features is None
        else torch.as_tensor(np.asarray(ref_features), dtype=torch.float64, device=dev)
    )
    r_sqrt = _sqrt_psd(r_sigma) if r_x is None else None  # fixed reference: its square root once
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        w = torch.as_tensor(
            np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)), dtype=torch.float64, device=dev
        )
        m_b, s_b = _weighted_stats(x, w)
        if r_x is None:
            vals.append(_fd(r_mu, r_sigma, r_sqrt, m_b, s_b))
        else:
            wr = np.bincount(rng.integers(0, len(r_x), len(r_x)), minlength=len(r_x))
            rm_b, rs_b = _weighted_stats(r_x, torch.as_tensor(wr, dtype=torch.float64, device=dev))
            vals.append(_fd(rm_b, rs_b, _sqrt_psd(rs_b), m_b, s_b))
    vals = np.asarray(vals)
    q_lo, q_hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    if method == "percentile":
        lo, hi = q_lo, q_hi
    elif method == "basic":
        lo, hi = 2 * point - q_hi, 2 * point - q_lo
    else:
        shift = vals.mean() - point
        lo, hi = q_lo - shift, q_hi - shift
    return {
        "fid": point,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "boot_std": float(vals.std(ddof=1)),
        "boot_mean": float(vals.mean()),
        "n_boot": n_boot,
        "level": level,
    }
