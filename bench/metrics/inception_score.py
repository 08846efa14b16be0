"""Inception Score as the ADM evaluator computes it: softmax of the unbiased logits (pool_3 @ W, no bias),
consecutive splits of `split_size` samples (5000), exp(mean KL(p(y|x) || p(y))) per split, mean over splits."""

from __future__ import annotations

import numpy as np
import torch


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"logits must be [N, K] with N > 0, got {tuple(x.shape)}")
    log_p = torch.log_softmax(x, dim=1)  # log-space: no log(0) for confident rows
    scores = []
    for i in range(0, len(x), split_size):
        lp = log_p[i : i + split_size]
        log_marginal = torch.logsumexp(lp, dim=0) - np.log(len(lp))  # log mean_x p(y|x)
        kl = (lp.exp() * (lp - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores))
