"""Frechet distance between Gaussians, in float64, through symmetric eigen-decompositions.

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})   (Dowson & Landau 1982; FID, Heusel et al. 2017)

pytorch-fid, clean-fid and the ADM evaluator take tr((S1 S2)^{1/2}) with `scipy.linalg.sqrtm` of the
non-symmetric product (a complex Schur decomposition). For PSD S1, S1 S2 is similar to S1^{1/2} S2 S1^{1/2},
which is symmetric PSD, so the trace is the sum of square roots of the eigenvalues of a symmetric matrix:
one `eigh` (for S1^{1/2}) and one `eigvalsh`, several times faster at the same precision, and negative
round-off eigenvalues of (nearly) singular covariances are clipped to zero instead of turning complex.
"""

from __future__ import annotations

import numpy as np


def statistics(features: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mu [D], sigma [D, D]) in float64; sigma is unbiased (N - 1), as np.cov and ADM."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"statistics need at least 2 feature vectors, got {n}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    mu = x.mean(axis=0, dtype=np.float64)
    sigma = np.zeros((d, d), dtype=np.float64)
    for i in range(0, n, chunk):  # centred float64 chunks: exact like np.cov, without an [N, D] float64 copy
        c = x[i : i + chunk].astype(np.float64) - mu
        sigma += c.T @ c
    sigma /= n - 1
    return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{which}: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{which}: statistics contain NaN or Inf")
    return mu, 0.5 * (sigma + sigma.T)  # exact symmetry for eigh


def covariance_problem(sigma: np.ndarray, rtol: float = 1e-6) -> str | None:
    """Why `sigma` is not a covariance matrix (symmetric positive semi-definite within round-off), or None.

    Tolerances are relative to the trace, which bounds the spectral norm of a PSD matrix: |S - S^T| <= rtol *
    tr(S) entrywise, and the smallest eigenvalue >= -rtol * tr(S), tested by a Cholesky factorisation of
    S + rtol * tr(S) * I. Round-off of a float32-stored covariance (~6e-8 * tr(S) in norm) passes; I against
    -I, which every sqrtm-based FID accepts (and scores 0), does not."""
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        return f"shape {s.shape} is not square"
    if not np.isfinite(s).all():
        return "contains NaN or Inf"
    tr = float(np.trace(s))
    if tr < 0 or np.diag(s).min(initial=0.0) < -rtol * abs(tr):
        return f"has negative variances (trace {tr:g}); not a covariance"
    if tr == 0:
        return None if not np.any(s) else "has zero trace but non-zero entries; not a covariance"
    asym = float(np.abs(s - s.T).max())
    if asym > rtol * tr:
        return f"is not symmetric (max |S - S^T| = {asym:.3g}, trace {tr:.3g})"
    try:
        np.linalg.cholesky(0.5 * (s + s.T) + (rtol * tr) * np.eye(len(s)))
    except np.linalg.LinAlgError:
        w = np.linalg.eigvalsh(0.5 * (s + s.T))
        return f"is not positive semi-definite (smallest eigenvalue {w[0]:.3g}, trace {tr:.3g})"
    return None


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sqrt1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) given S1^{1/2}: eigenvalues of the symmetric PSD S1^{1/2} S2 S1^{1/2}."""
    m = sqrt1 @ sigma2 @ sqrt1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "first")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(sqrt_psd(sigma1), sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_to_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """frechet_distance(*statistics(features), mu2, sigma2), exactly, without a D x D decomposition when the
    N features are fewer than their dimension D: sigma1 = A A^T with A = centred features^T / sqrt(N - 1)
    [D, N], and the non-zero eigenvalues of sigma2 sigma1 are those of the N x N PSD matrix A^T sigma2 A."""
    x = np.asarray(features)
    n, d = x.shape
    if n - 1 >= d:
        return frechet_distance(*statistics(x), mu2, sigma2)
    mu2, sigma2 = _check_stats(mu2, sigma2, "reference")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    if mu2.shape[0] != d:
        raise ValueError(f"dimension mismatch: {d} vs {mu2.shape[0]}")
    mu1 = x.mean(axis=0, dtype=np.float64)
    a = (x.astype(np.float64) - mu1).T / np.sqrt(n - 1)  # [D, N]
    m = a.T @ sigma2 @ a  # [N, N]
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", a, a) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_scipy(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The scipy `sqrtm` path of pytorch-fid / clean-fid / the ADM evaluator (for benchmarks and checks only)."""
    from scipy import linalg

    mu1, sigma1 = np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64)
    mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # the same fallback as those tools: a small ridge
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real)
