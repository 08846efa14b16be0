"""Scoring generated images inside a suite run: the suite's reference set and extractor, through the same
`bench.metrics.evaluate` that `invoke fid` uses. Reference features are computed once per run."""

from __future__ import annotations

import numpy as np

from bench.data import embedded_images
from bench.progress import log

_BOOKKEEPING = ("n_samples", "n_ref", "n_nonfinite", "extractor")


def suite_reference(suite, extractor):
    """Real held-out images of an embedded suite in the extractor's feature space (features kept for P/R, KID)."""
    from bench.metrics import compute_reference

    if suite.data != "embedded":
        raise ValueError(
            f"suite {suite.name}: reference statistics come from its ADM reference batch, not embedded data"
        )
    images, _ = embedded_images(suite.image_size, suite.n_ref_per_class, "ref", num_classes=suite.num_classes)
    log.info(f"reference: {len(images)} real held-out crops, extractor {extractor.name}")
    need = any(m in ("precision", "recall", "kid") for m in suite.metrics)
    return compute_reference(images, extractor, need_features=need)


def score(
    images: np.ndarray, reference, extractor, metrics=("fid",), n_nonfinite: int = 0
) -> dict[str, float]:
    """Metrics of uint8 NHWC samples. Refuses (ValueError) when any sample was non-finite."""
    from bench.metrics import evaluate

    if n_nonfinite:
        raise ValueError(
            f"{n_nonfinite} of {len(images)} samples are NaN/Inf; refusing to compute {', '.join(metrics)}"
        )
    out = evaluate(images, reference, extractor=extractor, metrics=metrics)
    return {k: float(v) for k, v in out.items() if k not in _BOOKKEEPING}
