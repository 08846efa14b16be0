"""Checks of a suite run that need its built parts and take seconds, run by bench.runner before any family
trains, so that a bad setting fails now with one line (a UserError, exit 2) and not hours and checkpoints later:
`check_recipe` (each backbone's overridden recipe: what the trainer reads only at stage 2) and `check_scoring`
(the extractor and the reference set: the checks `bench.metrics.evaluate` makes at the first evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import CorruptInputError, OptionError
from bench.progress import log

_STATS_OF = {"pool": "mu", "spatial": "mu_s"}
# the values bench.train accepts (it reads them at stage 2, after stage 1 has trained: too late to refuse them)
POSTERIORS = ("mean", "sample", "sample_once")
LATENT_NORMS = ("per_channel", "scale", "released")


def check_recipe(name: str, recipe) -> None:
    """A backbone's (overridden) recipe: every enumerated field known, every number in its range. One
    OptionError naming the backbone, the field and the value, before any training (the trainer would find an
    unknown posterior or schedule only at stage 2, a negative learning rate as an optimizer exception)."""
    from bench.metrics.adm_npz import check_uint8_convention
    from bench.optimise import autocast_for, lr_at

    r = recipe
    for field, value, known in (
        ("posterior", r.posterior, POSTERIORS),
        ("latent_norm", r.latent_norm, LATENT_NORMS),
    ):
        if value not in known:
            raise OptionError(f"{name}: unknown {field} {value!r}; known: {', '.join(known)}")
    for field in ("lr_schedule", "stage1_lr_schedule"):
        try:
            lr_at(0, 1, 1.0, getattr(r, field), 0, 0.0)
        except OptionError as e:
            raise OptionError(f"{name}.{field}: {e}") from None
    try:
        autocast_for("cpu", r.mixed_precision)
        check_uint8_convention(r.release_uint8)
    except OptionError as e:
        raise OptionError(f"{name}: {e}") from None
    bad = []
    ranges = {  # field -> (test, what it must be)
        "lr": (lambda v: v > 0, "> 0"), "min_lr": (lambda v: v >= 0, ">= 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"), "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "warmup_steps": (lambda v: v >= 0, ">= 0"), "warmup_epochs": (lambda v: v >= 0, ">= 0"),
        "grad_clip": (lambda v: v is None or v > 0, "> 0 (or None: off)"),
        "label_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"), "hflip": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "betas": (lambda v: all(0 <= b < 1 for b in v), "in [0, 1)"),
        "stage1_epochs": (lambda v: v >= 0, ">= 0 (0: no stage 1)"),
    }  # fmt: skip
    if r.stage1_epochs:
        ranges |= {"stage1_lr": ranges["lr"], "stage1_min_lr": ranges["min_lr"],
                   "stage1_warmup_steps": ranges["warmup_steps"], "stage1_grad_clip": ranges["grad_clip"],
                   "stage1_betas": ranges["betas"]}  # fmt: skip
    for field, (ok, must) in ranges.items():
        value = getattr(r, field)
        if not ok(value):
            bad.append(f"{name}.{field}={value!r} (must be {must})")
    if bad:
        raise OptionError(f"recipe values out of range: {', '.join(bad)}")


def check_scoring(suite, extractor, reference, *, strict_resolution: bool = True) -> None:
    """`reference` is the run's `bench.metrics.Reference` (suite_reference). Refuses: a metric whose features
    the extractor does not give; reference statistics of another feature dimension than the extractor's; sFID
    without spatial statistics; sample counts too small for KID, precision/recall or FID-infinity; and, with
    `strict_resolution` (every run but the tiny dry run, which crops to any size), a reference batch whose
    images are not the suite's resolution."""
    from bench.metrics.evaluate import _NEEDS_KEY, parse_metrics
    from bench.metrics.kid import KID_SUBSET_SIZE

    metrics = parse_metrics(suite.metrics)
    where = f"suite {suite.name}"
    for m in metrics:
        key = _NEEDS_KEY.get(m, "pool")
        if key not in extractor.keys:
            raise OptionError(f"{where}: metric {m!r} needs {key!r} features, which extractor {extractor.name!r} does not give")  # fmt: skip
    size = suite.image_size
    # two blank images give the feature widths (no total: no progress line, not an extraction)
    probe = extractor.features_iter([np.zeros((2, size, size, 3), np.uint8)])
    for key, stat in _STATS_OF.items():
        if key in probe and stat in reference.stats:
            want, got = probe[key].shape[1], reference.stats[stat].shape[0]
            if want != got:
                raise CorruptInputError(
                    f"reference ({reference.source}) {key} statistics have dimension {got}, extractor "
                    f"{extractor.name} gives {want}: statistics of another feature space"
                )
    if "sfid" in metrics and "mu_s" not in reference.stats:
        raise CorruptInputError(f"reference ({reference.source}) has no spatial statistics (mu_s, sigma_s) for the sFID {where} reports")  # fmt: skip
    n = suite.n_eval_samples
    if "kid" in metrics:
        for what, count in (("samples", n), ("reference images", reference.n)):
            if count is not None and count < KID_SUBSET_SIZE:
                raise OptionError(f"{where}: KID needs >= {KID_SUBSET_SIZE} {what} (its subset size), got {count}")  # fmt: skip
    if ("precision" in metrics or "recall" in metrics) and n <= 3:
        raise OptionError(f"{where}: precision/recall need more than k=3 samples for the k-NN radii, got {n}")
    if "fid_inf" in metrics:
        from bench.metrics.fid_infinity import subset_sizes

        subset_sizes(n, reference.stats["mu"].shape[0])
    _check_resolution(reference, size, strict_resolution)


def _check_resolution(reference, size: int, strict: bool) -> None:
    from bench.metrics import read_npz

    path = Path(reference.source)
    if reference.source in ("array", "stats") or not path.is_file():
        return
    batch = read_npz(path)
    if not batch.has_images or batch.image_shape[:2] == (size, size):
        return
    h, w = batch.image_shape[:2]
    msg = f"{path}: reference images are {h}x{w}, the run samples {size}x{size}"
    if strict:
        raise CorruptInputError(msg + "; use the reference batch of the samples' resolution")
    log.info(f"note: {msg} (dry run: scored anyway)")
