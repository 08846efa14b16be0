"""Scoring generated images against a suite's reference: the suite's feature extractor, Frechet distance in
float64 (bench.metrics), plus the extras a suite asks for. Reference features are computed once per run."""

from __future__ import annotations

import numpy as np

from bench.data import embedded_images
from bench.progress import log


class Reference:
    """Real-image features of a suite under one extractor: pool features and their (mu, sigma)."""

    def __init__(self, extractor_name: str, features: dict[str, np.ndarray]):
        from bench.metrics import statistics

        self.extractor_name = extractor_name
        self.features = features
        self.mu, self.sigma = statistics(features["pool"])

    @classmethod
    def for_suite(cls, suite, extractor) -> Reference:
        if suite.data != "embedded":
            raise ValueError(f"suite {suite.name}: reference statistics come from its ADM reference batch, not embedded data")
        images, _ = embedded_images(suite.image_size, suite.n_ref_per_class, "ref", num_classes=suite.num_classes)
        log.info(f"reference: {len(images)} real held-out crops, extractor {extractor.name}")
        return cls(extractor.name, extractor.features(images))


def score(images: np.ndarray, reference: Reference, extractor, metrics=("fid",), n_nonfinite: int = 0) -> dict[str, float]:
    """Metrics of uint8 NHWC samples. Refuses (ValueError) when any sample was non-finite."""
    from bench.metrics import frechet_distance, statistics

    if n_nonfinite:
        raise ValueError(f"{n_nonfinite} of {len(images)} samples are NaN/Inf; refusing to compute {', '.join(metrics)}")
    feats = extractor.features(images)
    out: dict[str, float] = {}
    if "fid" in metrics:
        mu, sigma = statistics(feats["pool"])
        out["fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if "precision" in metrics or "recall" in metrics:
        from bench.metrics import precision_recall

        p, r = precision_recall(reference.features["pool"], feats["pool"])
        out.update(precision=p, recall=r)
    return out
