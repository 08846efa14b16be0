"""Kernel Inception Distance (Binkowski et al. 2018) through torch-fidelity: unbiased MMD^2 with the cubic
polynomial kernel (x.y / D + 1)^3, averaged over random subsets."""

from __future__ import annotations

import numpy as np
import torch


def kid(
    samples: np.ndarray, reference: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random subsets of min(subset_size, N1, N2) features each."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = np.asarray(samples), np.asarray(reference)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(f1)} and {len(f2)}")
    out = kid_features_to_metric(
        torch.from_numpy(np.ascontiguousarray(f1)),
        torch.from_numpy(np.ascontiguousarray(f2)),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])
