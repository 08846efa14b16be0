"""Stand-in evaluation assets for the imagenet256 DRY RUN on a machine without the real ones:

    python -m bench.dry_run_assets --imagenet $GENBENCH_IMAGENET --out DIR [--n 256] [--size 256] [--seed 0]

writes DIR/VIRTUAL_imagenet256_labeled.npz, an ADM-format reference batch (arr_0 uint8 NHWC + arr_1 labels) of
`--n` images of the folder (evenly spaced over its sorted file list, ADM center crop at `--size`), and
DIR/weights-inception-2015-12-05-6726825d.pth, a RANDOM-weight InceptionV3 in torch-fidelity's format (same keys and
shapes as the real file), then prints the three `export` lines the dry run needs. FIDs computed with them test the
plumbing only; they are not comparable to any published number. A real run uses the real files (README)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_assets(imagenet: str | Path, out: str | Path, n: int = 256, size: int = 256, seed: int = 0) -> dict:
    from bench.data import ImageFolder
    from bench.errors import OptionError
    from bench.metrics import write_samples_npz
    from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

    if n < 1 or size < 8:
        raise OptionError(f"--n must be >= 1 and --size >= 8, got {n}, {size}")
    src = ImageFolder(imagenet, size)
    idx = np.unique(np.linspace(0, len(src) - 1, min(n, len(src))).round().astype(np.int64))
    images, labels = src.arrays(idx)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = write_samples_npz(out / "VIRTUAL_imagenet256_labeled.npz", images, labels)
    weights = make_random_inception_weights(out / INCEPTION_WEIGHTS_FILE, seed=seed)
    return {"GENBENCH_IMAGENET": str(Path(imagenet).resolve()), "GENBENCH_ADM_REF": str(Path(ref).resolve()),
            "GENBENCH_INCEPTION": str(Path(weights).resolve()), "n_reference": len(idx)}  # fmt: skip


def main(argv=None) -> int:
    import sys

    from bench.errors import UserError

    p = argparse.ArgumentParser(prog="python -m bench.dry_run_assets", description=__doc__.splitlines()[0])
    p.add_argument(
        "--imagenet", required=True, help="the ImageNet-layout train folder (one sub-folder per class)"
    )
    p.add_argument("--out", required=True, help="where to write the reference npz and the Inception file")
    p.add_argument("--n", type=int, default=256, help="reference images (default 256)")
    p.add_argument(
        "--size", type=int, default=256, help="center-crop size of the reference images (default 256)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random Inception weights")
    a = p.parse_args(argv)
    try:
        got = write_assets(a.imagenet, a.out, a.n, a.size, a.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# {got.pop('n_reference')} reference images; RANDOM Inception weights: for the dry run only")
    for k, v in got.items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
