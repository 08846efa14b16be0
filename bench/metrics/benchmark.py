"""`python -m bench.metrics.benchmark`: our Frechet distance against the scipy `sqrtm` path (pytorch-fid,
clean-fid and the ADM evaluator) on two 2048-d statistics, side by side in one run, plus CPU feature-extraction
throughput (img/s) of every extractor. Writes reports/metrics/benchmark.json and benchmark.md.

"Equal precision": both results are compared with a third float64 route (the eigenvalues of S1 S2 from a
general eigen-solver, as torch-fidelity and torchmetrics do); the relative deviations are reported.
Extraction throughput does not depend on weight values, so extractors whose weights are not on this machine
are timed with random weights of the same architecture (said so in the report).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.metrics.frechet import frechet_distance, statistics

REPO = Path(__file__).resolve().parents[2]


def make_statistics(dim: int, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Two statistics of `n` features each with a decaying spectrum (condition number ~1e6, like Inception
    pool_3 statistics), the second one shifted and rotated a little."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.exp(-7.0 * np.arange(dim) / dim)
    x1 = (rng.standard_normal((n, dim)) * scales) @ q.T
    x2 = (rng.standard_normal((n, dim)) * scales * 1.05) @ q.T + 0.01
    return (*statistics(x1), *statistics(x2))


def eigvals_route(mu1, sigma1, mu2, sigma2) -> float:
    d = mu1 - mu2
    tr = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real.sum()
    return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - 2 * tr)


def bench_frechet(dim: int, n: int, repeats: int, with_scipy: bool) -> dict:
    import warnings

    from cleanfid.fid import frechet_distance as scipy_path  # the sqrtm path, as pytorch-fid and ADM

    mu1, s1, mu2, s2 = make_statistics(dim, n)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ours = frechet_distance(mu1, s1, mu2, s2)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = eigvals_route(mu1, s1, mu2, s2)
    t_eig = time.perf_counter() - t
    out = {
        "dim": dim,
        "n_features": n,
        "cond_sigma1": float(np.linalg.cond(s1)),
        "ours_s": float(np.median(times)),
        "ours_s_all": times,
        "ours_value": ours,
        "eigvals_route_s": t_eig,
        "eigvals_route_value": ref,
        "ours_rel_dev": abs(ours - ref) / abs(ref),
    }
    if with_scipy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's deprecation of sqrtm(disp=...) that clean-fid passes
            t = time.perf_counter()
            sc = float(scipy_path(mu1, s1, mu2, s2))
            out["scipy_sqrtm_s"] = time.perf_counter() - t
        out.update(
            scipy_sqrtm_value=sc,
            scipy_rel_dev=abs(sc - ref) / abs(ref),
            ours_vs_scipy_rel=abs(ours - sc) / abs(sc),
            speedup=out["scipy_sqrtm_s"] / out["ours_s"],
        )
        out["ok"] = bool(
            out["speedup"] >= 3.0 and out["ours_rel_dev"] <= max(10 * out["scipy_rel_dev"], 1e-9)
        )
    return out


def _extractor(name: str, tmp: Path):
    """(extractor, weights description) with real weights when found, else random weights."""
    from bench.metrics.extractors import (
        DINOv2,
        find_inception_weights,
        get_extractor,
        make_random_inception_weights,
    )

    if name == "inception-v3-compat":
        try:
            return get_extractor(name), str(find_inception_weights())
        except FileNotFoundError:
            return get_extractor(name, weights=make_random_inception_weights(tmp / "inception.pth")), "random"
    if name.startswith("dinov2"):
        try:
            return get_extractor(name), "found"
        except FileNotFoundError:
            return DINOv2(name, random_weights=True), "random"
    return get_extractor(name), "trained (cached)"


def bench_extractors(
    names: list[str], image_size: int, n_images: dict[str, int], batch_size: int
) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t = time.perf_counter()
            ex, weights = _extractor(name, Path(tmp))
            t_load = time.perf_counter() - t
            n = n_images.get(name, 16)
            images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
            ex.features(images[: min(batch_size, n)], batch_size=batch_size)  # warm-up
            t = time.perf_counter()
            feats = ex.features(images, batch_size=batch_size)
            dt = time.perf_counter() - t
            rows.append(
                {
                    "extractor": name,
                    "weights": weights,
                    "image_size": image_size,
                    "n_images": n,
                    "batch_size": batch_size,
                    "img_per_s": n / dt,
                    "load_s": t_load,
                    "dims": {k: int(v.shape[1]) for k, v in feats.items()},
                }
            )
            print(
                f"  {name:22s} {n / dt:9.2f} img/s  ({n} images {image_size}px, batch {batch_size}, weights {weights})"
            )
    return rows


def write_reports(result: dict, out_dir: Path) -> None:
    from tabulate import tabulate

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    f = result["frechet"]
    lines = [
        "# Evaluation suite benchmark",
        "",
        f"`python -m bench.metrics.benchmark` on {result['machine']['host']} ({result['machine']['cpu_count']} CPUs, "
        f"torch threads {result['machine']['torch_threads']}, load average {result['machine']['load_avg_1m']:.1f} "
        f"at the end), {result['time']}. Both Frechet routes run in the same process, one after the other.",
        "",
        f"## Frechet distance, {f['dim']}-d statistics (cond(sigma1) = {f['cond_sigma1']:.2e})",
        "",
    ]
    rows = [["ours (eigh + eigvalsh)", f["ours_s"], f["ours_value"], f["ours_rel_dev"]]]
    if "scipy_sqrtm_s" in f:
        rows.append(
            [
                "scipy sqrtm (clean-fid / pytorch-fid / ADM)",
                f["scipy_sqrtm_s"],
                f["scipy_sqrtm_value"],
                f["scipy_rel_dev"],
            ]
        )
    rows.append(
        ["eigvals of S1 S2 (torch-fidelity route)", f["eigvals_route_s"], f["eigvals_route_value"], 0.0]
    )
    lines.append(
        tabulate(
            rows,
            headers=["method", "seconds", "value", "rel. dev. from eigvals route"],
            tablefmt="github",
            floatfmt=".6g",
        )
    )
    if "speedup" in f:
        lines += [
            "",
            f"Speed-up over the scipy path: **{f['speedup']:.1f}x** (target >= 3x: {'ok' if f['ok'] else 'FAILED'}).",
        ]
    lines += ["", "## Feature extraction throughput (CPU)", ""]
    lines.append(
        tabulate(
            [
                [
                    r["extractor"],
                    r["img_per_s"],
                    r["image_size"],
                    r["batch_size"],
                    r["n_images"],
                    r["weights"],
                ]
                for r in result["extraction"]
            ],
            headers=["extractor", "img/s", "input px", "batch", "images", "weights"],
            tablefmt="github",
            floatfmt=".2f",
        )
    )
    (out_dir / "benchmark.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.metrics.benchmark", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--n-features", type=int, default=4096, help="features behind each statistic")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-scipy", action="store_true", help="skip the (slow) scipy sqrtm path")
    p.add_argument("--extractors", default="smoke,inception-v3-compat,dinov2-vit-l14")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=str(REPO / "reports" / "metrics"))
    p.add_argument(
        "--check", action="store_true", help="exit 1 unless ours is >= 3x faster at equal precision"
    )
    args = p.parse_args(argv)

    print(f"Frechet distance, {args.dim}-d: ours vs the scipy sqrtm path")
    fr = bench_frechet(args.dim, args.n_features, args.repeats, not args.no_scipy)
    print(f"  ours  {fr['ours_s']:.2f} s  value {fr['ours_value']:.10g}  rel. dev. {fr['ours_rel_dev']:.1e}")
    if "speedup" in fr:
        print(
            f"  scipy {fr['scipy_sqrtm_s']:.2f} s  value {fr['scipy_sqrtm_value']:.10g}  rel. dev. {fr['scipy_rel_dev']:.1e}"
        )
        print(
            f"  speed-up {fr['speedup']:.1f}x  ({'ok' if fr['ok'] else 'FAILED'}: target >= 3x at equal precision)"
        )
    print("Feature extraction throughput (CPU)")
    names = [n.strip() for n in args.extractors.split(",") if n.strip()]
    n_images = {"smoke": 512, "inception-v3-compat": 32, "dinov2-vit-l14": 8}
    ex = bench_extractors(names, args.image_size, n_images, args.batch_size)
    result = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0],  # other jobs on the machine slow both sides alike
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "scipy": __import__("scipy").__version__,
            "torch": torch.__version__,
        },
        "frechet": fr,
        "extraction": ex,
    }
    write_reports(result, Path(args.out))
    print(f"wrote {Path(args.out) / 'benchmark.json'} and benchmark.md")
    return 1 if args.check and not fr.get("ok", False) else 0


if __name__ == "__main__":
    sys.exit(main())
