"""Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them.

Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
neighbour within the set (k = 3; the point itself is the 0-th). Precision = fraction of samples inside the
reference manifold; recall = fraction of reference points inside the sample manifold. Distances are squared,
|u|^2 - 2 u.v + |v|^2 clamped at 0, computed in blocks of 10000 x 10000 rows (memory O(block^2)).

`distances` (openai/guided-diffusion evaluations/evaluator.py at 22e0df8):
- "float16" (default, ADM-compatible): ADM's DistanceBlock (:369-384, :414-430) casts both feature blocks to
  float16 and evaluates the whole expression in float16; when any entry of a block is not finite (overflow)
  that block is recomputed in float32 (its tf.cond). The float16 rounding makes many distances tie with the
  radii, and ties count as inside (`<=`, :390-391, :310), so precision/recall come out 0.1-0.25 points higher
  than in float32. The squared norms and the Gram matrix are summed exactly (float64) from the float16
  values and rounded once (via float32) to float16; TF's GPU kernels accumulate in float32 before the same
  rounding, so the two can differ only where that accumulation error crosses a float16 rounding boundary.
- "float32": the same in float32 (torch-fidelity's and the paper's arithmetic); "float64" on request.
Radii are the k-th smallest of a row including the point itself (ADM's partition, :254-276), compared in
float32 (:389-391).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import OptionError

DISTANCES = ("float16", "float32", "float64")
ADM_BLOCK = 10000  # ManifoldEstimator row_batch_size = col_batch_size = 10000 (:215-216)


def _sq_dists(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    d = (u * u).sum(1, keepdim=True) - 2.0 * (u @ v.T) + (v * v).sum(1)[None, :]
    return d.clamp_min_(0.0)  # [len(u), len(v)]


def _round_f16(x: torch.Tensor) -> torch.Tensor:
    return x.float().half()  # exact sum -> float32 -> float16 (round to nearest even both times)


def _sq_dists_f16(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ADM's float16 block, returned as float32 [len(u), len(v)]; float32 when float16 overflows."""
    u16, v16 = u.half(), v.half()
    norm_u = _round_f16((u16 * u16).double().sum(1))[:, None]  # tf.reduce_sum(tf.square(U), 1)
    norm_v = _round_f16((v16 * v16).double().sum(1))[None, :]
    gram = _round_f16(u16.double() @ v16.double().T)  # tf.matmul(U, V, transpose_b=True)
    d = (norm_u - 2 * gram + norm_v).clamp_min_(0.0)  # float16 arithmetic, as the graph
    if not torch.isfinite(d).all():
        return _sq_dists(u.float(), v.float())
    return d.float()


def _block_dists(u: torch.Tensor, v: torch.Tensor, distances: str) -> torch.Tensor:
    if distances == "float16":
        return _sq_dists_f16(u, v)
    return _sq_dists(u, v)


def manifold_radii(
    features: torch.Tensor, k: int = 3, block: int = ADM_BLOCK, distances: str = "float16"
) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (the point itself being
    the 0-th): [N]."""
    n = len(features)
    if n <= k:
        raise OptionError(f"precision/recall: need more than k={k} points for the k-NN radii, got {n}")
    radii = []
    for i in range(0, n, block):
        rows = features[i : i + block]
        best = None  # the k + 1 smallest squared distances so far (the point itself gives one ~0)
        for j in range(0, n, block):
            d = _block_dists(rows, features[j : j + block], distances)
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k])
    return torch.cat(radii)


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = ADM_BLOCK,
    device: str | torch.device = "cpu",
    distances: str = "float16",
) -> tuple[float, float]:
    """(precision, recall) of `samples` [N2, D] against `reference` [N1, D] features. `distances`: "float16"
    (ADM's evaluator, the default), "float32" or "float64" (see the module docstring)."""
    if distances not in DISTANCES:
        raise OptionError(f"unknown precision/recall distances {distances!r}; known: {', '.join(DISTANCES)}")
    dtype = torch.float64 if distances == "float64" else torch.float32  # float16 is applied per block
    ref = torch.as_tensor(np.asarray(reference)).to(device=device, dtype=dtype)
    smp = torch.as_tensor(np.asarray(samples)).to(device=device, dtype=dtype)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise OptionError(
            f"precision/recall: features must be [N, D] with equal D, got {tuple(ref.shape)} and {tuple(smp.shape)}"
        )
    r_ref = manifold_radii(ref, k, block, distances)
    r_smp = manifold_radii(smp, k, block, distances)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)  # ref point inside sample manifold
    smp_in = torch.zeros(len(smp), dtype=torch.bool, device=ref.device)  # sample inside reference manifold
    for i in range(0, len(ref), block):
        for j in range(0, len(smp), block):
            d = _block_dists(ref[i : i + block], smp[j : j + block], distances)
            smp_in[j : j + block] |= (d <= r_ref[i : i + block, None]).any(dim=0)
            ref_in[i : i + block] |= (d <= r_smp[None, j : j + block]).any(dim=1)
    return float(smp_in.double().mean()), float(ref_in.double().mean())
