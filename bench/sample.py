"""Sampling for evaluation, from a smoke run's 256 images to FID-50K: per-sample seeds, equal or random labels,
sharded across ranks, written as checksummed, resumable ADM-format npz shards merged into one npz.

API (what the trainer calls):
    out = generate(backbone, n, num_classes, seed, image_size, *, batch_size=128, device="cpu",
                   out_dir=None, shard_size=1000, labels="equal", uint8=None, return_images=None, desc="sample",
                   **sampler)
        -> dict(images uint8 [n, H, W, 3] | None, labels int64 [n], n_nonfinite, nonfinite bool [n], seconds,
                path: merged npz | None, shards: [paths], uint8: the conversion used)
    sample_labels(indices, num_classes, seed, mode="equal"|"random") -> int64 labels
    read_samples_meta(npz_path) -> dict  (the sidecar: sha256, label mode, uint8 convention, n_nonfinite, ...)

Determinism: sample i draws its noise and every sampler draw from generators seeded by (seed, i)
(`baselines.api.sample_generators`); its label is i % num_classes ("equal": 50 per class for 50K samples over
1000 classes, the ADM/DiT evaluation protocol) or a draw seeded by (seed, i) ("random": REPA generate.py and
LightningDiT inference.py sample torch.randint labels). So the images depend neither on the batch size nor on
the number of processes.

Without out_dir (embedded suites) the images stay in memory; under torch.distributed each rank takes indices
rank, rank + world, ... and all ranks receive all images. With out_dir (paper scale) shard k holds indices
[k * shard_size, (k + 1) * shard_size) and rank r makes shards r, r + world, ...; each is an ADM npz
(`out_dir/shards/samples_00000.npz`: arr_0 uint8 NHWC, arr_1 labels, the non-finite mask as bench.metrics
writes it) with a sidecar json (sha256, index range, seed, label mode, uint8 convention, sampler, n_nonfinite and the
non-finite indices). A rerun keeps every shard whose checksum and settings match and makes only the rest; rank
0 then merges the shards into `out_dir/samples.npz` (what guided-diffusion's evaluations/evaluator.py reads) with
its own sidecar `samples.json`. Use one out_dir per evaluation (epoch, protocol).

Non-finite samples (issue 13 item 6) are counted on the decoded images BEFORE any clamp or uint8 conversion and
the count and per-sample mask travel with every shard and the merged file (bench.metrics refuses to score them).
`Backbone.sample_images` is meant to return unclamped images; if one clamps, a +/-inf sample is clamped before it
reaches us and only NaN is seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from baselines.api import Backbone, randn_per_sample, sample_generators, sample_seed
from bench.errors import OptionError
from bench.latent_cache import wait_on_files
from bench.progress import Progress, log

LABEL_MODES = ("equal", "random")
_LABEL_STREAM = 0x1ABE1


def equal_labels(indices: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.asarray(indices) % num_classes).astype(np.int64)


def random_labels(indices: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Label of sample i drawn uniformly from a generator seeded by (seed, label stream, i) alone."""
    base = sample_seed(seed, _LABEL_STREAM)
    return np.asarray(
        [np.random.default_rng(sample_seed(base, int(i))).integers(num_classes) for i in np.asarray(indices)],
        dtype=np.int64,
    )


def sample_labels(indices, num_classes: int, seed: int, mode: str = "equal") -> np.ndarray:
    if mode == "equal":
        return equal_labels(indices, num_classes)
    if mode == "random":
        return random_labels(indices, num_classes, seed)
    raise OptionError(f"unknown label mode {mode!r}; known: {', '.join(LABEL_MODES)}")


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _accepts(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


def uint8_convention(requested: str | None = None) -> str:
    """The uint8 conversion for samples: `requested` (canonical name or alias, e.g. a Recipe's "truncate"), else
    bench.metrics' default (ADM's truncation). Recorded with every sample file."""
    from bench.metrics.adm_npz import DEFAULT_UINT8, check_uint8_convention

    return check_uint8_convention(requested or DEFAULT_UINT8)


def _convert(x: torch.Tensor, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded float images [B, 3, H, W] -> (uint8 NHWC, non-finite mask [B]) through bench.metrics' converter,
    which flags NaN/Inf samples before it clamps (and stores them as zeros)."""
    from bench.metrics.adm_npz import to_uint8_counted

    x = x.detach().float().cpu()
    if _accepts(to_uint8_counted, "convention"):
        return to_uint8_counted(x, convention=convention)
    return to_uint8_counted(x)


def _write_shard(path: Path, images, labels, bad, convention: str) -> None:
    from bench.metrics import write_samples_npz

    extra = {"uint8_convention": convention} if _accepts(write_samples_npz, "uint8_convention") else {}
    write_samples_npz(path, images, labels, nonfinite=bad, **extra)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    from bench.store import atomic_write_bytes  # fsync'd; a full disk is one DiskFullError

    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_samples_meta(npz_path: str | Path) -> dict:
    """The sidecar json of a sample shard or merged samples file."""
    return json.loads(Path(npz_path).with_suffix(".json").read_text())


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if hasattr(v, "describe"):
        return _jsonable(v.describe())
    return repr(v)


@torch.no_grad()
def _sample_batch(backbone, idx, num_classes, seed, label_mode, latent_shape, device, sampler, convention):
    gens = sample_generators(seed, idx, device="cpu")
    noise = randn_per_sample(gens, latent_shape).to(device)
    labels = sample_labels(idx, num_classes, seed, label_mode)
    x = backbone.sample_images(torch.from_numpy(labels).to(device), noise, gens, **sampler)
    u8, bad = _convert(x, convention)
    return u8, labels, bad


def _sidecar_matches(path: Path, settings: dict) -> dict | None:
    meta_p = path.with_suffix(".json")
    if not (path.is_file() and meta_p.is_file()):
        return None
    try:
        meta = json.loads(meta_p.read_text())
    except (OSError, ValueError):
        return None
    return meta if all(meta.get(k) == v for k, v in settings.items()) else None


def _shard_ok(path: Path, settings: dict) -> bool:
    meta = _sidecar_matches(path, settings)
    if meta is None:
        return False
    if _sha256(path) != meta.get("sha256"):
        log.info(f"samples: {path.name} does not match its checksum; regenerating it")
        return False
    return True


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
    shard_size: int = 1000,
    labels: str = "equal",
    uint8: str | None = None,
    return_images: bool | None = None,
    desc: str = "sample",
    **sampler,
) -> dict:
    """Generate n images (see the module docstring). Returns dict(images, labels, n_nonfinite, nonfinite,
    seconds, path, shards); `images` is None with out_dir unless return_images=True (50K images at 256 px are
    9.8 GB: score the merged npz instead)."""
    if labels not in LABEL_MODES:
        raise OptionError(f"unknown label mode {labels!r}; known: {', '.join(LABEL_MODES)}")
    if n < 1 or batch_size < 1 or shard_size < 1:
        raise OptionError(f"n, batch_size and shard_size must be >= 1, got {n}, {batch_size}, {shard_size}")
    convention = uint8_convention(uint8)
    rank, world = _dist()
    latent_shape = backbone.tokenizer.latent_shape(image_size)
    backbone.generator.eval()
    backbone.tokenizer.eval()
    t0 = time.perf_counter()
    if out_dir is None:
        out = _generate_in_memory(backbone, n, num_classes, seed, labels, latent_shape, batch_size, device,
                                  desc, rank, world, sampler, convention)  # fmt: skip
    else:
        out = _generate_shards(backbone, n, num_classes, seed, image_size, labels, latent_shape, batch_size,
                               device, Path(out_dir), shard_size, desc, rank, world, sampler,
                               bool(return_images), convention)  # fmt: skip
    out["labels"] = sample_labels(np.arange(n), num_classes, seed, labels)
    out["n_nonfinite"] = int(out["nonfinite"].sum())
    out["seconds"] = time.perf_counter() - t0
    out["uint8"] = convention
    return out


def _generate_in_memory(backbone, n, num_classes, seed, label_mode, latent_shape, batch_size, device, desc,
                        rank, world, sampler, convention) -> dict:  # fmt: skip
    mine = np.arange(rank, n, world)
    images, bads = [], []
    with Progress(desc, total=len(mine), unit="img") as prog:
        for s in range(0, len(mine), batch_size):
            idx = mine[s : s + batch_size]
            u8, _, bad = _sample_batch(backbone, idx, num_classes, seed, label_mode, latent_shape, device, sampler,
                                       convention)  # fmt: skip
            images.append(u8)
            bads.append(bad)
            prog.update(len(idx))
    local = np.concatenate(images) if images else None
    local_bad = np.concatenate(bads) if bads else np.zeros(0, bool)
    if world > 1:  # gather in index order: rank r holds indices r, r + world, ...
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (local, local_bad))
        shape = next(p[0].shape[1:] for p in parts if p[0] is not None)
        full, full_bad = np.zeros((n, *shape), np.uint8), np.zeros(n, bool)
        for r, (arr, bad) in enumerate(parts):
            if arr is not None:
                full[r::world], full_bad[r::world] = arr, bad
        local, local_bad = full, full_bad
    return {"images": local, "nonfinite": local_bad, "path": None, "shards": []}


def _generate_shards(backbone, n, num_classes, seed, image_size, label_mode, latent_shape, batch_size, device,
                     out_dir, shard_size, desc, rank, world, sampler, return_images, convention) -> dict:  # fmt: skip
    from bench.metrics import merge_shards, read_npz

    # shards in a sub-folder: a scorer given out_dir (bench.metrics.sample_sources globs *.npz) sees only the merge
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(n / shard_size)
    common = {"seed": int(seed), "labels": label_mode, "num_classes": int(num_classes), "image_size": int(image_size),
              "uint8": convention, "sampler": _jsonable(sampler), "n_total": int(n)}  # fmt: skip
    paths = [out_dir / "shards" / f"samples_{k:05d}.npz" for k in range(n_shards)]

    def settings(k):
        start = k * shard_size
        return {**common, "start": start, "count": min(shard_size, n - start)}

    todo = [k for k in range(rank, n_shards, world) if not _shard_ok(paths[k], settings(k))]
    skipped = len(range(rank, n_shards, world)) - len(todo)
    if skipped:
        log.info(f"{desc}: rank {rank} keeps {skipped} finished shard(s) in {out_dir}")
    for k in todo:  # from here on, a sidecar with matching settings means a finished shard
        paths[k].with_suffix(".json").unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()
    with Progress(desc, total=sum(settings(k)["count"] for k in todo), unit="img") as prog:
        for k in todo:
            st = settings(k)
            idx_all = np.arange(st["start"], st["start"] + st["count"])
            u8s, labs, bads = [], [], []
            for s in range(0, len(idx_all), batch_size):
                idx = idx_all[s : s + batch_size]
                u8, lab, bad = _sample_batch(backbone, idx, num_classes, seed, label_mode, latent_shape, device,
                                             sampler, convention)  # fmt: skip
                u8s.append(u8)
                labs.append(lab)
                bads.append(bad)
                prog.update(len(idx))
            bad = np.concatenate(bads)
            _write_shard(paths[k], np.concatenate(u8s), np.concatenate(labs), bad, convention)
            _write_json(paths[k].with_suffix(".json"), {**st, "sha256": _sha256(paths[k]), "n_nonfinite": int(bad.sum()),
                        "nonfinite_index": (np.flatnonzero(bad) + st["start"]).tolist()})  # fmt: skip
    merged = out_dir / "samples.npz"

    def all_written() -> bool:
        return all(_sidecar_matches(p, settings(k)) for k, p in enumerate(paths))

    if world > 1:  # meet on the file system: a rank that is done early must not time out in a collective
        wait_on_files(all_written, f"the other ranks' sample shards in {out_dir}")
    if rank == 0:
        missing = [p.name for k, p in enumerate(paths) if not _shard_ok(p, settings(k))]
        if missing:
            raise RuntimeError(
                f"{out_dir}: shard(s) {', '.join(missing[:5])} missing or corrupt after sampling"
            )
        metas = [read_samples_meta(p) for p in paths]
        shard_sums = [m["sha256"] for m in metas]
        if not _shard_ok(
            merged, {**common, "shard_sha256": shard_sums}
        ):  # else: merged from these very shards
            merge_shards(paths, merged)
            nonfinite_index = [i for m in metas for i in m["nonfinite_index"]]
            _write_json(merged.with_suffix(".json"), {**common, "start": 0, "count": int(n), "sha256": _sha256(merged),
                        "n_nonfinite": len(nonfinite_index), "nonfinite_index": nonfinite_index,
                        "shards": [f"shards/{p.name}" for p in paths], "shard_sha256": shard_sums})  # fmt: skip
    else:
        sums = [read_samples_meta(p)["sha256"] for p in paths]
        wait_on_files(
            lambda: _sidecar_matches(merged, {**common, "shard_sha256": sums}), f"rank 0 to merge {merged}"
        )
    meta = read_samples_meta(merged)
    bad = np.zeros(n, bool)
    bad[np.asarray(meta["nonfinite_index"], dtype=np.int64)] = True
    images = read_npz(merged).images() if return_images else None
    return {"images": images, "nonfinite": bad, "path": merged, "shards": paths}
