"""Kernel Inception Distance (Binkowski et al. 2018) through torch-fidelity: unbiased MMD^2 with the cubic
polynomial kernel (x.y / D + 1)^3, averaged over random subsets.

Defaults are torch-fidelity's (0.4: defaults.py:20-21 kid_subsets 100, kid_subset_size 1000; :56 rng_seed
2020), and, as torch-fidelity (metric_kid.py:106-111), a set smaller than the subset size is an error, not
a silently smaller subset: pass a smaller `subset_size` (it is recorded with the result)."""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import OptionError

KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020  # torch-fidelity's defaults


def kid(
    samples: np.ndarray,
    reference: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random subsets of `subset_size` features from each set; equal to
    torch-fidelity's KID on the same features with the same settings."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = np.asarray(samples), np.asarray(reference)
    if subset_size < 2 or subsets < 1:
        raise OptionError(f"KID: subset_size must be >= 2 and subsets >= 1, got {subset_size} and {subsets}")
    if len(f1) < subset_size or len(f2) < subset_size:
        raise OptionError(
            f"KID: subset size {subset_size} is larger than the sets ({len(f1)} samples, {len(f2)} reference); "
            f"pass a kid_subset_size <= {min(len(f1), len(f2))} (torch-fidelity refuses this too)"
        )
    out = kid_features_to_metric(
        torch.from_numpy(np.ascontiguousarray(f1)),
        torch.from_numpy(np.ascontiguousarray(f2)),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])
