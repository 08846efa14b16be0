"""Sampling with per-sample seeds: sample i uses noise and SDE draws from a generator seeded by (run seed, i)
and label i % num_classes (equal labels), so the images do not depend on batch size or process count.
Under torch.distributed each rank takes the indices i = rank, rank + world, ... and rank 0 gathers them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from baselines.api import Backbone, randn_per_sample, sample_generators
from bench.data import to_uint8
from bench.progress import Progress


class NonFiniteSamplesError(RuntimeError):
    """Generated samples contain NaN/Inf; metrics must refuse rather than score clipped garbage."""


def equal_labels(indices: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.asarray(indices) % num_classes).astype(np.int64)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def generate(
    backbone: Backbone,
    n: int,
    num_classes: int,
    seed: int,
    image_size: int,
    *,
    batch_size: int = 128,
    device: str = "cpu",
    out_dir: Path | None = None,
    desc: str = "sample",
    **sampler,
) -> dict:
    """Generate n images. Returns dict(images uint8 [n,H,W,3], labels [n], n_nonfinite, seconds).
    With out_dir, writes ADM-format shards (arr_0 uint8 NHWC, arr_1 labels) named by their first index."""
    rank, world = _dist()
    latent_shape = backbone.tokenizer.latent_shape(image_size)
    mine = np.arange(rank, n, world)
    images, n_bad = [], 0
    t0 = time.perf_counter()
    backbone.generator.eval()
    backbone.tokenizer.eval()
    with Progress(desc, total=len(mine), unit="img") as prog:
        for s in range(0, len(mine), batch_size):
            idx = mine[s : s + batch_size]
            gens = sample_generators(seed, idx, device="cpu")
            noise = randn_per_sample(gens, latent_shape).to(device)
            labels = torch.from_numpy(equal_labels(idx, num_classes)).to(device)
            x = backbone.sample_images(labels, noise, gens, **sampler)
            finite = torch.isfinite(x.flatten(1)).all(1)
            n_bad += int((~finite).sum())
            imgs = to_uint8(torch.nan_to_num(x, nan=0.0))
            images.append(imgs)
            if out_dir is not None:
                from bench.metrics import write_samples_npz

                write_samples_npz(
                    Path(out_dir) / f"samples_{int(idx[0]):07d}.npz", imgs, labels.cpu().numpy()
                )
            prog.update(len(idx))
    local = np.concatenate(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    if world > 1:  # gather in index order: rank r holds indices r, r + world, ...
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (local, n_bad))
        full = np.zeros((n, *local.shape[1:]), np.uint8)
        for r, (arr, _) in enumerate(parts):
            full[r::world] = arr
        local, n_bad = full, sum(b for _, b in parts)
    return {
        "images": local,
        "labels": equal_labels(np.arange(n), num_classes),
        "n_nonfinite": n_bad,
        "seconds": time.perf_counter() - t0,
    }
