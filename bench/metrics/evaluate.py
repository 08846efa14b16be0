"""Score a sample batch against a reference the way the ADM evaluator does, plus KID, bootstrap intervals and
FID-infinity. One entry point, `evaluate`, used by `invoke fid` and by the harness's suites.

ADM semantics kept: a reference npz with `mu`/`sigma` (`mu_s`/`sigma_s`) uses those statistics for FID (sFID)
and its images (if any) only for precision/recall; statistics without an `extractor` tag are ADM's TF
Inception statistics and are used only with `inception-v3-compat`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import CorruptInputError, OptionError
from bench.metrics.adm_npz import (
    DEFAULT_UINT8,
    AdmBatch,
    NonFiniteSamplesError,
    read_npz,
    sample_sources,
    to_uint8_counted,
    write_stats_npz,
)
from bench.metrics.extractors import FeatureExtractor, get_extractor
from bench.metrics.frechet import covariance_problem, frechet_distance_to_features, statistics
from bench.metrics.kid import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS

METRICS = ("fid", "sfid", "is", "precision", "recall", "kid", "fid_ci", "fid_inf")
ALIASES = {
    "prec": "precision",
    "rec": "recall",
    "isc": "is",
    "fd": "fid",
    "fd_dinov2": "fid",
    "pr": ("precision", "recall"),
}
ADM_METRICS = ("fid", "sfid", "is", "precision", "recall")
_NEEDS_KEY = {
    "fid": "pool",
    "sfid": "spatial",
    "is": "logits",
    "precision": "pool",
    "recall": "pool",
    "kid": "pool",
}


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """'fid,sfid,prec' or a list -> canonical names in a stable order; unknown names are an error."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for raw in names:
        m = raw.strip().lower()
        if not m:
            continue
        canon = ALIASES.get(m, m)
        for c in canon if isinstance(canon, tuple) else (canon,):
            if c not in METRICS:
                raise OptionError(
                    f"unknown metric {raw!r}; known: {', '.join(METRICS)} (aliases: {', '.join(ALIASES)})"
                )
            if c not in out:
                out.append(c)
    if not out:
        raise ValueError("no metrics requested")
    return tuple(out)


@dataclass
class Reference:
    """A reference set in one extractor's feature space: statistics, and features when images were given."""

    extractor: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # mu, sigma, mu_s, sigma_s
    features: dict[str, np.ndarray] | None = None  # pool, spatial, logits
    n: int | None = None  # number of reference images (None: statistics only)
    source: str = "array"

    def save(self, path: str | os.PathLike) -> Path:
        """Statistics as a reference npz tagged with the extractor (reusable as `reference=`)."""
        return write_stats_npz(path, self.stats, extractor=self.extractor)


def _as_extractor(extractor, weights, device, cache_dir) -> FeatureExtractor:
    if isinstance(extractor, FeatureExtractor):
        if weights is not None:
            raise ValueError("pass weights when naming the extractor, not with an extractor object")
        return extractor
    return get_extractor(extractor, weights=weights, device=device, cache_dir=cache_dir)


def _stats_of(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for mu_key, sigma_key, key in (("mu", "sigma", "pool"), ("mu_s", "sigma_s", "spatial")):
        if key in features:
            out[mu_key], out[sigma_key] = statistics(features[key])
    return out


def compute_reference(
    reference,
    extractor: str | FeatureExtractor = "inception-v3-compat",
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    need_features: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Reference:
    """Reference from an ADM npz path, uint8 NHWC images, a stats dict (mu, sigma[, mu_s, sigma_s]) in the
    extractor's space, or a `Reference` (returned as is after checking its extractor)."""
    ex = _as_extractor(extractor, weights, device, cache_dir)
    if isinstance(reference, Reference):
        if reference.extractor != ex.name:
            raise ValueError(f"reference was computed with {reference.extractor!r}, not {ex.name!r}")
        if need_features and reference.features is None:
            raise ValueError(
                f"reference ({reference.source}) holds statistics only; precision/recall/KID need its images"
            )
        return reference
    if isinstance(reference, dict):
        if "mu" not in reference or "sigma" not in reference:
            raise ValueError(f"a statistics reference needs mu and sigma, got keys {sorted(reference)}")
        if reference.get("extractor", ex.name) != ex.name:
            raise ValueError(f"reference statistics are for {reference['extractor']!r}, not {ex.name!r}")
        if need_features:
            raise ValueError("reference holds statistics only; precision/recall/KID need its images")
        stats = {
            k: np.asarray(v, np.float64)
            for k, v in reference.items()
            if k in ("mu", "sigma", "mu_s", "sigma_s")
        }
        for key in ("sigma", "sigma_s"):
            problem = covariance_problem(stats[key]) if key in stats else None
            if problem:
                raise CorruptInputError(f"reference statistics: {key} {problem}")
        return Reference(ex.name, stats, None, None, "stats")
    if isinstance(reference, str | os.PathLike):
        batch = read_npz(reference)
        stats_ok = bool(batch.stats) and (
            batch.extractor == ex.name or (batch.extractor is None and ex.name == "inception-v3-compat")
        )
        if batch.n_nonfinite:
            raise NonFiniteSamplesError(
                f"{batch.path}: reference has {batch.n_nonfinite} NaN/Inf images",
                batch.n_nonfinite,
                batch.n_images,
            )
        if not batch.has_images and not stats_ok:
            tag = batch.extractor or "ADM's TF Inception"
            raise CorruptInputError(
                f"{batch.path}: holds statistics for {tag} but no images; cannot evaluate with {ex.name!r}"
            )
        if not batch.has_images and need_features:
            raise CorruptInputError(
                f"{batch.path}: holds statistics only (no arr_0); precision/recall/KID need reference images"
            )
        features = None
        if batch.has_images and (
            need_features or not stats_ok or ("mu_s" not in batch.stats and "spatial" in ex.keys)
        ):
            features = ex.features_iter(batch.iter_images(batch_size), total=batch.n_images)
        stats = _stats_of(features) if features is not None else {}
        if stats_ok:  # ADM: the file's own statistics win over recomputed ones
            stats.update(batch.stats)
        return Reference(ex.name, stats, features, batch.n_images or None, str(batch.path))
    images = np.asarray(reference)
    features = ex.features(images, batch_size)
    return Reference(ex.name, _stats_of(features), features, len(images), "array")


def _open_samples(samples, uint8_convention: str = DEFAULT_UINT8) -> tuple[object, int, int]:
    """(source, n_samples, n_nonfinite) without extracting anything: the source is a list of AdmBatch or a
    uint8 array. Samples: a path / folder / list of npz paths, an AdmBatch, uint8 NHWC or float NCHW."""
    if isinstance(samples, AdmBatch):
        batches = [samples]
    elif isinstance(samples, str | os.PathLike) or (
        isinstance(samples, list | tuple) and samples and isinstance(samples[0], str | os.PathLike)
    ):
        batches = sample_sources(samples)
    else:
        u8, bad = to_uint8_counted(samples, uint8_convention)
        return u8, len(u8), int(bad.sum())
    missing = [str(b.path) for b in batches if not b.has_images]
    if missing:
        raise CorruptInputError(f"sample batches need images (arr_0): {', '.join(missing)}")
    return batches, sum(b.n_images for b in batches), sum(b.n_nonfinite for b in batches)


def _features_of(source, ex: FeatureExtractor, batch_size: int) -> dict[str, np.ndarray]:
    if isinstance(source, np.ndarray):
        return ex.features(source, batch_size)
    return ex.features_iter(
        (x for b in source for x in b.iter_images(batch_size)), total=sum(b.n_images for b in source)
    )


def evaluate(
    samples,
    reference,
    extractor: str | FeatureExtractor = "inception-v3-compat",
    metrics: str | Sequence[str] = ADM_METRICS,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    *,
    is_split_size: int = 5000,
    pr_k: int = 3,
    pr_distances: str = "float16",
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = KID_SEED,
    n_boot: int = 200,
    ci_level: float = 0.95,
    fid_inf_points: int = 15,
    fid_inf_min_n: int | None = None,
    seed: int = 0,
    uint8_convention: str = DEFAULT_UINT8,
    on_nonfinite: str = "raise",
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Metrics of `samples` against `reference` in `extractor`'s feature space.

    samples: ADM npz path, folder of npz shards, list of paths, uint8 [N, H, W, 3], or float [N, 3, H, W] in
    [-1, 1]. reference: ADM npz path (images and/or statistics), uint8 images, statistics dict or `Reference`.
    metrics (names or a comma list): fid (the Frechet distance in the extractor's space: FID, or FD-DINOv2 with a
    DINOv2 extractor, then also given as fd_dinov2), sfid, is, precision/prec, recall/rec, kid, fid_ci (bootstrap
    interval), fid_inf (FID-infinity). Returns the requested metrics plus n_samples, n_ref, n_nonfinite and the
    extractor's name, and the settings that shape a number: kid_subset_size / kid_subsets with kid,
    fid_inf_n_min / fid_inf_n_max / fid_inf_points (the subset sizes fitted) with fid_inf. Samples with NaN/Inf
    are never scored: on_nonfinite="raise" raises NonFiniteSamplesError, "report" returns the counts with every
    metric None.

    Settings and the libraries they reproduce (README "Metrics: which setting reproduces which library"):
    pr_distances "float16" (default) = ADM's evaluator, "float32" = torch-fidelity; kid_* defaults =
    torch-fidelity's (seed 2020, subsets of 1000, N below the subset size refused); uint8_convention (float
    samples only) "adm-truncate" = ADM's samplers, "round" the alternative; is_split_size 5000 = ADM.
    """
    if on_nonfinite not in ("raise", "report"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'report', got {on_nonfinite!r}")
    wanted = parse_metrics(metrics)
    ex = _as_extractor(extractor, weights, device, cache_dir)
    for m in wanted:
        key = _NEEDS_KEY.get(m, "pool")
        if key not in ex.keys:
            raise ValueError(
                f"metric {m!r} needs {key!r} features, which extractor {ex.name!r} does not give"
            )

    source, n, n_bad = _open_samples(
        samples, uint8_convention
    )  # NaN/Inf are known before any feature is computed
    result: dict = {"extractor": ex.name, "n_samples": n, "n_nonfinite": n_bad}
    if n_bad:
        msg = f"{n_bad} of {n} samples are NaN/Inf: refusing to compute {', '.join(wanted)} (it would be misleading)"
        if on_nonfinite == "raise":
            raise NonFiniteSamplesError(msg, n_bad, n)
        return result | {m: None for m in wanted} | {"error": msg}

    if "kid" in wanted and n < kid_subset_size:  # settings errors before any feature is computed
        raise OptionError(
            f"KID: subset size {kid_subset_size} is larger than the {n} samples; pass a smaller kid_subset_size"
        )
    _check_resolution(source, reference)  # before any feature is computed
    need_ref_features = any(m in ("precision", "recall", "kid") for m in wanted)
    ref = compute_reference(
        reference, ex, device=device, batch_size=batch_size, need_features=need_ref_features
    )
    result["n_ref"] = ref.n
    if "sfid" in wanted and "mu_s" not in ref.stats:
        raise CorruptInputError(
            f"reference ({ref.source}) has no spatial statistics (mu_s, sigma_s) for sFID"
        )
    if "kid" in wanted and ref.n is not None and ref.n < kid_subset_size:
        raise OptionError(
            f"KID: subset size {kid_subset_size} is larger than the {ref.n} reference images; pass a smaller kid_subset_size"
        )
    if "fid_inf" in wanted:
        from bench.metrics.fid_infinity import subset_sizes

        subset_sizes(n, ref.stats["mu"].shape[0], fid_inf_points, fid_inf_min_n)
    feats = _features_of(source, ex, batch_size)

    if "fid" in wanted or "fid_ci" in wanted:
        _check_dim(feats["pool"], ref.stats["mu"], "pool", ref)
        fid = frechet_distance_to_features(feats["pool"], ref.stats["mu"], ref.stats["sigma"])
        if "fid" in wanted:
            result["fid"] = fid
            if ex.name.startswith("dinov2"):
                result["fd_dinov2"] = fid
    if "sfid" in wanted:
        _check_dim(feats["spatial"], ref.stats["mu_s"], "spatial", ref)
        result["sfid"] = frechet_distance_to_features(
            feats["spatial"], ref.stats["mu_s"], ref.stats["sigma_s"]
        )
    if "is" in wanted:
        from bench.metrics.inception_score import inception_score

        result["is"] = inception_score(feats["logits"], split_size=is_split_size)
    if "precision" in wanted or "recall" in wanted:
        from bench.metrics.precision_recall import precision_recall

        prec, rec = precision_recall(
            ref.features["pool"], feats["pool"], k=pr_k, device=device, distances=pr_distances
        )
        if "precision" in wanted:
            result["precision"] = prec
        if "recall" in wanted:
            result["recall"] = rec
    if "kid" in wanted:
        from bench.metrics.kid import kid

        result["kid"], result["kid_std"] = kid(
            feats["pool"], ref.features["pool"], kid_subsets, kid_subset_size, kid_seed
        )
        result.update(kid_subset_size=kid_subset_size, kid_subsets=kid_subsets)
    if "fid_ci" in wanted:
        from bench.metrics.bootstrap import bootstrap_fid

        b = bootstrap_fid(
            feats["pool"],
            ref.stats["mu"],
            ref.stats["sigma"],
            n_boot=n_boot,
            level=ci_level,
            seed=seed,
            device=device,
        )
        result.update(
            fid_ci_low=b["ci_low"],
            fid_ci_high=b["ci_high"],
            fid_boot_std=b["boot_std"],
            n_boot=n_boot,
            ci_level=ci_level,
        )
    if "fid_inf" in wanted:
        from bench.metrics.fid_infinity import fid_infinity

        r = fid_infinity(
            feats["pool"],
            ref.stats["mu"],
            ref.stats["sigma"],
            num_points=fid_inf_points,
            min_n=fid_inf_min_n,
            seed=seed,
        )
        result.update(
            fid_inf=r["fid_inf"],
            fid_inf_r2=r["r2"],
            fid_inf_n_min=r["n_min"],
            fid_inf_n_max=r["n_max"],
            fid_inf_points=len(r["ns"]),
        )
    return result


def _check_resolution(source, reference) -> None:
    """A reference batch of another resolution than the samples gives a meaningless number: refuse it."""
    if isinstance(source, np.ndarray) or not isinstance(reference, str | os.PathLike):
        return
    ref = read_npz(reference)
    shapes = {b.image_shape for b in source}
    if ref.has_images and shapes != {ref.image_shape}:
        got = ", ".join(f"{h}x{w}" for h, w, _ in sorted(shapes))
        raise CorruptInputError(
            f"{ref.path}: reference images are {ref.image_shape[0]}x{ref.image_shape[1]}, samples are {got}; "
            "use the reference batch of the samples' resolution"
        )


def _check_dim(features: np.ndarray, ref_mu: np.ndarray, key: str, ref: Reference) -> None:
    if features.shape[1:] != ref_mu.shape:
        raise CorruptInputError(
            f"reference ({ref.source}) {key} statistics have dimension {ref_mu.shape[0]}, samples {features.shape[1]}"
        )
