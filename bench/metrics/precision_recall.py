"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them.

Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
neighbour within the set (k = 3; the point itself excluded). Precision = fraction of samples inside the
reference manifold; recall = fraction of reference points inside the sample manifold. Distances are computed
blockwise (memory O(block^2)), squared, with |u|^2 - 2 u.v + |v|^2 as ADM; ADM runs that product in float16
with a float32 fallback, we use float32 by default (float64 on request).
"""

from __future__ import annotations

import numpy as np
import torch


def _sq_dists(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    d = (u * u).sum(1, keepdim=True) - 2.0 * (u @ v.T) + (v * v).sum(1)[None, :]
    return d.clamp_min_(0.0)  # [len(u), len(v)]


def manifold_radii(features: torch.Tensor, k: int = 3, block: int = 4096) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self excluded): [N]."""
    n = len(features)
    if n <= k:
        raise ValueError(f"need more than k={k} points for the k-NN radii, got {n}")
    radii = []
    for i in range(0, n, block):
        rows = features[i : i + block]
        best = None  # the k + 1 smallest squared distances so far (the point itself gives one 0)
        for j in range(0, n, block):
            d = _sq_dists(rows, features[j : j + block])
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k])
    return torch.cat(radii)


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = 4096,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """(precision, recall) of `samples` [N2, D] against `reference` [N1, D] features."""
    ref = torch.as_tensor(np.asarray(reference)).to(device=device, dtype=dtype)
    smp = torch.as_tensor(np.asarray(samples)).to(device=device, dtype=dtype)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise ValueError(
            f"features must be [N, D] with equal D, got {tuple(ref.shape)} and {tuple(smp.shape)}"
        )
    r_ref, r_smp = manifold_radii(ref, k, block), manifold_radii(smp, k, block)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)  # ref point inside sample manifold
    smp_in = torch.zeros(len(smp), dtype=torch.bool, device=ref.device)  # sample inside reference manifold
    for i in range(0, len(ref), block):
        for j in range(0, len(smp), block):
            d = _sq_dists(ref[i : i + block], smp[j : j + block])
            smp_in[j : j + block] |= (d <= r_ref[i : i + block, None]).any(dim=0)
            ref_in[i : i + block] |= (d <= r_smp[None, j : j + block]).any(dim=1)
    return float(smp_in.double().mean()), float(ref_in.double().mean())
