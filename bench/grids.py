"""What an evaluation leaves to look at: a PNG grid of fixed-seed samples and the samples as an ADM npz.

- <run>/<backbone>/grids/epoch_XXXX.png (what bench.report reads): row c holds the first `per_class` samples of
  class c (by sample index) for the first `n_classes` classes. Sample i's noise and draws are seeded by
  (run seed, i) and its label is a function of (seed, i) (bench.sample), so the same cells show the same labels
  and the same starting noise for every backbone and epoch of a run. One grid per evaluated epoch: the first
  sampler protocol's.
- <run>/<backbone>/samples/epochXXXX_<protocol>/samples.npz (+ samples.json): the evaluation samples as
  guided-diffusion's evaluator reads them (arr_0 uint8 NHWC, arr_1 labels, the non-finite mask), so
  `invoke fid` can rescore them; the same layout and writer as bench.sample's sharded path, which already wrote it
  when the trainer sampled to an out_dir (paper scale), and is then left as it is.

Hook (bench/train.py, evaluation, after sampling): `record_evaluation(run, epoch, out, protocol, first)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PAD = 2  # px of white between cells


def grid_indices(labels: np.ndarray, n_classes: int = 8, per_class: int = 8) -> list[list[int]]:
    """Per class c < n_classes (that occurs), the first per_class sample indices whose label is c."""
    labels = np.asarray(labels)
    rows = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx):
            rows.append(idx.tolist())
    return rows


def sample_grid(images: np.ndarray, labels: np.ndarray, n_classes: int = 8, per_class: int = 8) -> np.ndarray:
    """uint8 NHWC samples -> one uint8 HWC grid (rows = classes, columns = samples; missing cells white)."""
    rows = grid_indices(labels, n_classes, per_class)
    if not rows:
        raise ValueError("no samples to put in a grid")
    h, w = images.shape[1:3]
    grid = np.full((len(rows) * (h + PAD) + PAD, per_class * (w + PAD) + PAD, 3), 255, np.uint8)
    for r, idx in enumerate(rows):
        for c, i in enumerate(idx):
            y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
            grid[y : y + h, x : x + w] = images[i]
    return grid


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def grid_path(backbone_dir: Path, epoch: int) -> Path:
    return Path(backbone_dir) / "grids" / f"epoch_{int(epoch):04d}.png"


def samples_path(backbone_dir: Path, epoch: int, protocol: str | None = None) -> Path:
    return Path(backbone_dir) / "samples" / f"epoch{int(epoch):04d}_{protocol or 'default'}" / "samples.npz"


def write_samples(path: Path, out: dict, seed: int, extra: dict | None = None) -> Path:
    """The in-memory evaluation samples of bench.sample.generate as an ADM npz + its json sidecar."""
    from bench.metrics import write_samples_npz

    write_samples_npz(
        path, out["images"], out["labels"], nonfinite=out["nonfinite"], uint8_convention=out["uint8"]
    )
    meta = {"seed": int(seed), "count": len(out["images"]), "uint8": out["uint8"],
            "n_nonfinite": int(out["n_nonfinite"]), "nonfinite_index": np.flatnonzero(out["nonfinite"]).tolist(),
            **(extra or {})}  # fmt: skip
    side = path.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(tmp, side)
    return path


def _head(path: Path, n: int) -> np.ndarray:
    """The first n images of an ADM npz, streamed (the file is not loaded whole)."""
    from bench.metrics import read_npz

    parts, got = [], 0
    for batch in read_npz(path).iter_images(256):
        parts.append(batch)
        got += len(batch)
        if got >= n:
            break
    return np.concatenate(parts)[:n]


def record_evaluation(run, epoch: int, out: dict, protocol: str | None = None, first: bool = True) -> None:
    """Grid PNG (first protocol only) and samples npz of one evaluation; rank 0 only."""
    d = __import__("torch").distributed
    if d.is_available() and d.is_initialized() and d.get_rank() != 0:
        return
    images, labels = out.get("images"), np.asarray(out["labels"])
    n_classes = min(8, run.suite.num_classes)
    if (
        images is None and out.get("path") is not None
    ):  # sharded sampling (50K at 256 px): read the grid's cells only
        images = _head(out["path"], max(i for row in grid_indices(labels, n_classes) for i in row) + 1)
        labels = labels[: len(images)]
    if images is None:
        return
    bdir = run.store.backbone_dir(run.name)
    if first:
        write_png(grid_path(bdir, epoch), sample_grid(images, labels, n_classes))
    if out.get("path") is None:
        write_samples(
            samples_path(bdir, epoch, protocol), out, run.seed, {"epoch": int(epoch), "protocol": protocol}
        )


__all__ = ["record_evaluation", "sample_grid", "grid_indices", "grid_path", "samples_path", "write_samples"]
