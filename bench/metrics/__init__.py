"""Evaluation suite: ADM-compatible FID / sFID / IS / precision-recall, KID, FD-DINOv2, bootstrap intervals,
FID-infinity, and ADM npz I/O. See evaluate.py for the entry point and extractors.py for the feature spaces.

Which setting reproduces which library (each row is a test on the same inputs; README "Metrics"):
- ADM evaluator (guided-diffusion evaluations/): the defaults. FID / sFID / IS (split_size 5000) with
  `inception-v3-compat`; precision/recall with `pr_distances="float16"` (ADM's float16 distance blocks, port in
  tests/test_metrics_adm_ports.py); sample npz written with `uint8_convention="adm-truncate"` (its samplers).
- torch-fidelity: FID equal; IS equal with `isc_splits = N / 5000` and `samples_shuffle=False` (its defaults,
  10 shuffled splits, differ); precision/recall equal with `pr_distances="float32"`; KID equal with our
  defaults (its seed 2020, 100 subsets of 1000; N below the subset size is refused by both).
- torchmetrics FID: equal only with `FrechetInceptionDistance(antialias=False)` and float64 (`set_dtype`);
  its default antialiased resize is not ADM's.
- clean-fid, pytorch-fid: the Frechet distance of given statistics agrees (to 1e-6); their features do not
  (clean-fid resizes with PIL, pytorch-fid uses other Inception weights).
- dgm-eval FD-DINOv2: the `dinov2-vit-*` extractors (hub DINOv2's position-table resampling, PIL bicubic
  224 px, CLS token), then our Frechet distance.
- FID-infinity (Chong & Forsyth's code): equal for the same seed; subsets below 2 x D or a fit over less than
  a factor 5 in N are refused.
"""

from bench.metrics.adm_npz import (
    AdmBatch,
    NonFiniteSamplesError,
    NpzFormatError,
    NpzShardWriter,
    merge_shards,
    read_npz,
    to_uint8_counted,
    write_samples_npz,
    write_stats_npz,
)
from bench.metrics.bootstrap import bootstrap_fid
from bench.metrics.evaluate import METRICS, Reference, compute_reference, evaluate, parse_metrics
from bench.metrics.extractors import EXTRACTORS, FeatureExtractor, find_inception_weights, get_extractor
from bench.metrics.fid_infinity import fid_infinity
from bench.metrics.frechet import frechet_distance, frechet_distance_to_features, statistics
from bench.metrics.inception_score import inception_score
from bench.metrics.kid import kid
from bench.metrics.precision_recall import precision_recall

__all__ = [
    "EXTRACTORS",
    "METRICS",
    "AdmBatch",
    "FeatureExtractor",
    "NonFiniteSamplesError",
    "NpzFormatError",
    "NpzShardWriter",
    "Reference",
    "bootstrap_fid",
    "compute_reference",
    "evaluate",
    "fid_infinity",
    "find_inception_weights",
    "frechet_distance",
    "frechet_distance_to_features",
    "get_extractor",
    "inception_score",
    "kid",
    "merge_shards",
    "parse_metrics",
    "precision_recall",
    "read_npz",
    "statistics",
    "to_uint8_counted",
    "write_samples_npz",
    "write_stats_npz",
]
