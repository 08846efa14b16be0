"""Evaluation suite: ADM-compatible FID / sFID / IS / precision-recall, KID, FD-DINOv2, bootstrap intervals,
FID-infinity, and ADM npz I/O. See evaluate.py for the entry point and extractors.py for the feature spaces."""

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
