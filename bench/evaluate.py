"""Scoring generated images inside a suite run: the suite's reference set and extractor, through the same
`bench.metrics.evaluate` that `invoke fid` uses (reference features computed once per run), and the named
sampler protocols every family is evaluated under ("paper", "common")."""

from __future__ import annotations

import os

from bench.errors import OptionError
from bench.progress import log

_BOOKKEEPING = ("n_samples", "n_ref", "n_nonfinite", "extractor")


def sampler_protocols(
    bb, names=("paper", "common"), steps: int | None = None
) -> dict[str, tuple[dict, dict]]:
    """The ONE place that reads a backbone's sampler: protocol name -> (keyword arguments for `sample_images`,
    description for the metric row: sampler, steps, nfe, guidance in the one convention of
    `SamplerSettings.describe`). "paper" is the recipe's sampler (the release's, after suite overrides), "common"
    `Backbone.protocols["common"]` (one setting shared by every family). `steps` replaces the integration steps
    of step-based samplers (CPU dry runs)."""
    out = {}
    for name in names:
        if name == "paper":
            settings = bb.sampler
        elif name in bb.protocols:
            settings = bb.generator.settings(bb.protocols[name])
        else:
            known = ", ".join(["paper", *(k for k in bb.protocols if k != "paper")])
            raise OptionError(f"{bb.name}: unknown sampler protocol {name!r}; known: {known}")
        if steps and "steps" in settings.field_names():
            settings = settings.replace(steps=int(steps))
        d = bb.generator.describe(settings)
        desc = {"sampler": d["sampler"], "steps": d["steps"], "guidance": d["guidance"], "nfe": bb.generator.nfe(settings)}  # fmt: skip
        out[name] = ({"settings": settings}, desc)
    return out


def suite_reference(suite, extractor, reference):
    """The suite's reference in the extractor's feature space (features kept for P/R, KID): `reference` is real
    held-out images (uint8 NHWC, embedded suites) or the ADM reference batch's path (imagenet256)."""
    from bench.metrics import compute_reference

    need = any(m in ("precision", "recall", "kid") for m in suite.metrics)
    what = (
        f"ADM batch {reference}"
        if isinstance(reference, str | os.PathLike)
        else f"{len(reference)} real held-out crops"
    )
    log.info(f"reference: {what}, extractor {extractor.name}")
    return compute_reference(reference, extractor, need_features=need)


def score(
    images, reference, extractor, metrics=("fid",), n_nonfinite: int = 0, n: int | None = None
) -> dict[str, float]:
    """Metrics of samples (uint8 NHWC, or an ADM npz path). Refuses (NonFiniteSamplesError) when any sample was non-finite; any
    other error (unknown metric, wrong reference) propagates: a run never "succeeds" without its FID."""
    from bench.metrics import NonFiniteSamplesError, evaluate

    if n_nonfinite:
        raise NonFiniteSamplesError(
            f"{n_nonfinite} of {n or len(images)} samples are NaN/Inf; refusing to compute {', '.join(metrics)}",
            n_nonfinite,
            n or len(images),
        )
    out = evaluate(images, reference, extractor=extractor, metrics=metrics)
    return {k: float(v) for k, v in out.items() if k not in _BOOKKEEPING and v is not None}
