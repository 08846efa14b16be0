"""`invoke fid SAMPLES.npz REF.npz [--extractor NAME] [--weights PATH] [--metrics fid,sfid,is,prec,rec]`:
the standalone counterpart of the ADM evaluator (note the order: samples first). Prints one JSON line.

Exit codes: 0 ok (the JSON line on stdout); 2 bad input, one `fid: error: ...` line on stderr naming the file or
the value and nothing on stdout: a missing file, a malformed npz, NaN/Inf samples, labels outside
[0, --num-classes), an unknown name, missing weights. Every check on the files runs before the extractor loads.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.errors import OptionError, UserError
from bench.metrics.adm_npz import DEFAULT_NUM_CLASSES, check_finite, check_labels, read_npz, sample_sources
from bench.metrics.evaluate import ADM_METRICS, evaluate, parse_metrics
from bench.metrics.extractors import EXTRACTORS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fid", description=__doc__.split("\n\n")[0])
    p.add_argument("samples", help="sample batch: ADM npz (arr_0 uint8 NHWC), or a folder of npz shards")
    p.add_argument("reference", help="reference batch: ADM npz with arr_0 and/or mu, sigma, mu_s, sigma_s")
    p.add_argument("--extractor", default="inception-v3-compat", choices=EXTRACTORS)
    p.add_argument(
        "--weights", default=None, help="extractor weights file (else GENBENCH_WEIGHTS / torch hub cache)"
    )
    p.add_argument(
        "--metrics",
        default="auto",
        help="comma list of fid,sfid,is,prec,rec,kid,fid_ci,fid_inf; 'auto' = the ADM set the reference allows",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=DEFAULT_NUM_CLASSES,
        help="labels (arr_1) must lie in [0, N) (default 1000, ImageNet's)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--boot", type=int, default=200, help="bootstrap replicates for fid_ci")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for opt in ("batch_size", "boot", "num_classes"):
            if getattr(args, opt) < 1:
                raise OptionError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
        # the files' own checks, before any extractor is built (headers and labels only: cheap)
        for batch in sample_sources(args.samples):
            check_labels(batch, args.num_classes)
            check_finite(batch)
        ref = read_npz(args.reference)
        check_labels(ref, args.num_classes)
        check_finite(ref, "reference images")
        if args.metrics == "auto":
            metrics, skipped = list(ADM_METRICS), []
            if not ref.has_images:  # statistics-only reference: precision/recall impossible, as in ADM
                skipped = ["precision", "recall"]
            if "mu_s" not in ref.stats and not ref.has_images:
                skipped.append("sfid")
            metrics = [m for m in metrics if m not in skipped]
        else:
            metrics, skipped = list(parse_metrics(args.metrics)), []
        out = evaluate(
            args.samples,
            args.reference,
            extractor=args.extractor,
            metrics=metrics,
            weights=args.weights,
            device=args.device,
            batch_size=args.batch_size,
            n_boot=args.boot,
            seed=args.seed,
        )
        if skipped:
            out["skipped"] = skipped
    except (UserError, FileNotFoundError, ValueError) as e:  # NaN/Inf samples too (NonFiniteSamplesError)
        print(f"fid: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
