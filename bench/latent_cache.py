"""Latent cache: every training image and its horizontal flip encoded ONCE by a frozen tokenizer, shared by all
backbones that use that tokenizer, then read by a deterministic Dataset.

API (what the trainer calls):
    cache = build_latent_cache(source, tokenizer, root, *, features=None, with_images=False,
                               shard_size=10_000, batch_size=64, num_workers=0, device="cpu") -> LatentCache
        source: a bench.data.ImageSource; tokenizer: a baselines.api.Tokenizer (AutoencoderKL-based ones give
        the posterior mean and std; deterministic ones std = 0); features: images -> frozen-encoder features,
        for tokenizers with `needs_features`. Under torch.distributed every rank calls it: rank r extracts
        shards r, r + world, ...; all ranks return the same finished cache.
    default_cache_root(results_root="results") -> $GENBENCH_CACHE or <results>/_cache/latents
    cache.stats(latents="mean"|"sample") -> (mean [C], std [C])  per-channel statistics (float64 sums):
        "mean" for Recipe.posterior == "mean", "sample" for the posterior-sampling recipes
    cache_needs_images(backbone) -> bool   (REPA: the generator's loss wants encoder features of the image)
    LatentDataset, latent_loader: the deterministic Dataset over a cache (bench/latent_dataset.py, re-exported)

Layout of `root/<tokenizer hash[:12]>-<key hash[:12]>/`: key.json (tokenizer weights sha256, crop settings,
file list sha256), shard_00000.safetensors ... (tensors mean, std, mean_flip, std_flip [n, C, h, w] float32,
labels [n] int64, optionally images [n, H, W, 3] uint8: the cropped image as REPA's preprocessing stores it,
preprocessing/dataset_tools.py convert), shard_00000.json (sha256 of the shard file, its range, per-channel
sums), and index.json (every shard with its sha256, n, latent shape, statistics) written last. A shard is
written atomically and counts as done only when its sha256 matches its sidecar, so a killed or failed
extraction resumes shard by shard and a corrupt shard is recomputed.

Determinism: see bench/latent_dataset.py; the cache itself is a pure function of its key (same shards for any
number of ranks: shard k always holds images [k * shard_size, (k + 1) * shard_size)).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import CheckedItems, ImageSource, to_model_range
from bench.errors import CorruptInputError, MissingInputError, OptionError
from bench.progress import Progress, log
from bench.store import atomic_write_bytes

CACHE_VERSION = 1
_LATENT_KEYS = ("mean", "std", "mean_flip", "std_flip")


# --- keys and hashes -------------------------------------------------------------------------------------------


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _encode_modules(tokenizer) -> dict[str, torch.nn.Module]:
    """The parts of a tokenizer that the latents depend on: an LDM autoencoder's encoder + quant_conv, FAE's
    feature encoder, else the whole module. Loss modules (LPIPS, discriminator) and decoders are left out, so a
    released tokenizer gets the same key whatever the randomly initialised rest of the wrapper holds."""
    from baselines.autoencoder import AETokenizer

    if isinstance(tokenizer, AETokenizer):
        return {"ae.encoder": tokenizer.ae.encoder, "ae.quant_conv": tokenizer.ae.quant_conv}
    if _is_fae(tokenizer):
        return {"encoder": tokenizer.encoder}
    return {"": tokenizer}


def module_fingerprint(modules: dict[str, torch.nn.Module]) -> str:
    """sha256 of the modules' weights (names, dtypes, shapes, bytes), without latent statistics buffers."""
    h = hashlib.sha256()
    for prefix, m in sorted(modules.items()):
        for name, t in sorted(m.state_dict().items()):
            if name.split(".")[-1] in ("latent_mean", "latent_std"):
                continue
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: torch.nn.Module, features=None) -> str:
    """sha256 of what the latents depend on: the tokenizer's encoding weights and, for tokenizers that encode
    frozen-encoder features (FAE), the feature encoder's weights (`features`: an nn.Module, or a bound method of
    an object with an `.encoder` module such as Backbone.features)."""
    modules = {f"tokenizer.{k}": m for k, m in _encode_modules(tokenizer).items()}
    if features is not None and needs_features(tokenizer):
        enc = (
            features
            if isinstance(features, torch.nn.Module)
            else getattr(getattr(features, "__self__", None), "encoder", None)
        )
        if not isinstance(enc, torch.nn.Module):
            raise OptionError(
                "features must be an nn.Module or Backbone.features, or pass tokenizer_hash= yourself"
            )
        modules["features"] = enc
    return module_fingerprint(modules)


def cache_key(source: ImageSource, tokenizer: torch.nn.Module, tokenizer_hash: str | None = None,
              features=None) -> dict:  # fmt: skip
    return {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_hash or tokenizer_fingerprint(tokenizer, features),
        "tokenizer_class": type(tokenizer).__name__,
        "crop": source.crop_settings(),
        "files": source.fingerprint(),
        "n": len(source),
    }


def default_cache_root(results_root: str | Path = "results") -> Path:
    """$GENBENCH_CACHE, else `<results root>/_cache/latents`: one place shared by every run and backbone (on a
    file system all nodes see, for multi-node extraction)."""
    env = os.environ.get("GENBENCH_CACHE")
    return Path(env) if env else Path(results_root) / "_cache" / "latents"


def cache_dir(root: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(root) / f"{key['tokenizer'][:12]}-{digest[:12]}"


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


# --- posterior -------------------------------------------------------------------------------------------------


@torch.no_grad()
def posterior(tokenizer, images: torch.Tensor, features=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [B, *latent_shape] of the tokenizer's posterior for images [B, 3, H, W] in [-1, 1].

    A tokenizer may define `posterior_moments(images, features)`; LDM AutoencoderKL tokenizers (SD-VAE, VA-VAE,
    the stand-ins) give the diagonal Gaussian's mean and std (logvar clamped to [-30, 20] as LDM); FAE gives its
    feature-VAE's mean and exp(logvar / 2) on the latent grid; any other tokenizer is deterministic (std 0)."""
    from baselines.autoencoder import AETokenizer

    if hasattr(tokenizer, "posterior_moments"):
        return tokenizer.posterior_moments(images, features)
    if isinstance(tokenizer, AETokenizer):
        post = tokenizer.ae.encode(images)
        return post.mean, post.std
    if _is_fae(tokenizer):
        mean, logvar = tokenizer.posterior(features)  # [B, T, C]
        b, g = mean.shape[0], tokenizer.config.grid
        grid = lambda t: t.transpose(1, 2).reshape(b, -1, g, g)  # noqa: E731  (as FAETokenizer.encode)
        return grid(mean), grid(torch.exp(0.5 * logvar))
    z = tokenizer.encode(images, features) if tokenizer.needs_features else tokenizer.encode(images)
    return z, torch.zeros_like(z)


def _is_fae(tokenizer) -> bool:
    try:
        from baselines.fae import FAETokenizer
    except ImportError:
        return False
    return isinstance(tokenizer, FAETokenizer)


def cache_needs_images(backbone) -> bool:
    """Whether training this backbone from the cache needs the cropped images too: its generator's loss wants
    frozen-encoder features of the training image (REPA's alignment target; REPA's dataset.py reads the
    preprocessed image beside its latent)."""
    return bool(getattr(backbone.generator, "needs_features", False))


def needs_features(tokenizer) -> bool:
    """Whether extraction must pass frozen-encoder features (FAE); VA-VAE needs them only for its stage-1 loss."""
    from baselines.autoencoder import AETokenizer

    return bool(tokenizer.needs_features) and not isinstance(tokenizer, AETokenizer)


# --- the cache -------------------------------------------------------------------------------------------------


@dataclass
class LatentCache:
    dir: Path
    index: dict

    @classmethod
    def open(cls, directory: str | Path) -> LatentCache:
        d = Path(directory)
        p = d / "index.json"
        if not p.is_file():
            raise MissingInputError(
                f"{d}: no latent cache index (index.json); build it with build_latent_cache"
            )
        return cls(d, json.loads(p.read_text()))

    @property
    def n(self) -> int:
        return int(self.index["n"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    @property
    def shard_size(self) -> int:
        return int(self.index["shard_size"])

    @property
    def has_images(self) -> bool:
        return bool(self.index["with_images"])

    @property
    def num_classes(self) -> int:
        return int(self.index["num_classes"])

    def shard_path(self, k: int) -> Path:
        return self.dir / self.index["shards"][k]["file"]

    def locate(self, i: int) -> tuple[Path, int]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a cache of {self.n}")
        return self.shard_path(i // self.shard_size), i % self.shard_size

    def labels(self) -> np.ndarray:
        return np.asarray(self.index["labels"], dtype=np.int64)

    def stats(self, latents: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) over images and positions of the un-flipped posterior means ("mean"), or of
        posterior samples ("sample": var = var(mean) + E[std^2], what statistics over sampled latents converge
        to, as LightningDiT's latents_stats.pt over posterior.sample() latents)."""
        s = self.index["stats"]
        if latents not in ("mean", "sample"):
            raise OptionError(f"latent statistics of {latents!r}; known: mean, sample")
        return torch.tensor(s["mean"], dtype=torch.float32), torch.tensor(
            s[f"std_{latents}"], dtype=torch.float32
        )

    def verify(self) -> list[int]:
        """Shard numbers whose file is missing or does not match its sha256."""
        bad = []
        for k, sh in enumerate(self.index["shards"]):
            p = self.dir / sh["file"]
            if not p.is_file() or _sha256_file(p) != sh["sha256"]:
                bad.append(k)
        return bad


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def _shard_done(
    d: Path, k: int, start: int, count: int, with_images: bool, verify: bool = True
) -> dict | None:
    """The sidecar of shard k if the shard is finished and intact (sha256 checked with `verify`, else only the
    file size: for shards whose writer has just hashed them), else None."""
    meta_p, data_p = d / f"{_shard_name(k)}.json", d / f"{_shard_name(k)}.safetensors"
    if not (meta_p.is_file() and data_p.is_file()):
        return None
    try:
        meta = json.loads(meta_p.read_text())
    except (OSError, ValueError):
        return None
    if (
        meta.get("start") != start
        or meta.get("count") != count
        or (with_images and not meta.get("with_images"))
        or data_p.stat().st_size != meta.get("bytes")
    ):
        return None
    if verify and _sha256_file(data_p) != meta.get("sha256"):
        log.info(f"latent cache: {data_p.name} does not match its checksum; recomputing it")
        return None
    return meta


def wait_on_files(done, what: str, poll: float = 2.0) -> None:
    """Wait on the shared file system (not a collective: ranks that finish early would hit NCCL's barrier
    timeout while a slower rank extracts its last shards)."""
    t0 = last = time.perf_counter()
    while not done():
        time.sleep(poll)
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            log.info(f"waiting for {what} ({time.perf_counter() - t0:.0f}s)")


@torch.no_grad()
def _extract_shard(source, tokenizer, features, k, start, count, d, with_images, batch_size, num_workers,
                   device, prog) -> dict:  # fmt: skip
    loader = torch.utils.data.DataLoader(
        CheckedItems(source, range(start, start + count)),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=str(device).startswith("cuda"),
    )
    out = {k_: [] for k_ in (*_LATENT_KEYS, "labels", *(("images",) if with_images else ()))}
    for imgs, ys, ok, msg in loader:
        CheckedItems.raise_bad(ok, msg)
        x = to_model_range(imgs).to(device, non_blocking=True)
        for flip in (False, True):
            xi = x.flip(-1) if flip else x
            f = features(xi) if features is not None and needs_features(tokenizer) else None
            m, s = posterior(tokenizer, xi, f)
            sfx = "_flip" if flip else ""
            out["mean" + sfx].append(m.float().cpu())
            out["std" + sfx].append(s.float().cpu())
        out["labels"].append(ys.long())
        if with_images:
            out["images"].append(imgs.contiguous())
        prog.update(len(ys))
    tensors = {k_: torch.cat(v).contiguous() for k_, v in out.items()}
    from safetensors.torch import save

    path = d / f"{_shard_name(k)}.safetensors"
    # one metadata key only: safetensors writes several in hash-map order, which would change the checksum;
    # fsync'd atomic write: a full disk is one DiskFullError and leaves no torn shard (bench.store)
    atomic_write_bytes(path, save(tensors, metadata={"range": f"{start}:{start + count}"}))
    m = tensors["mean"].double()
    dims = [0] + list(range(2, m.ndim))
    meta = {
        "file": path.name,
        "start": start,
        "count": count,
        "with_images": with_images,
        "sha256": _sha256_file(path),
        "bytes": path.stat().st_size,
        "latent_shape": list(m.shape[1:]),
        "elements_per_channel": int(m.numel() // m.shape[1]),
        "sum": m.sum(dims).tolist(),
        "sumsq": m.pow(2).sum(dims).tolist(),
        "sumvar": tensors["std"].double().pow(2).sum(dims).tolist(),
    }
    _write_json(d / f"{_shard_name(k)}.json", meta)
    return meta


def _write_index(
    d: Path, key: dict, source: ImageSource, shard_size: int, with_images: bool, n_shards: int
) -> None:
    metas = []
    for k in range(n_shards):
        start = k * shard_size
        meta = _shard_done(d, k, start, min(shard_size, len(source) - start), with_images, verify=False)
        if meta is None:
            raise RuntimeError(f"latent cache {d}: shard {k} is missing or corrupt after extraction")
        metas.append(meta)
    count = sum(m["elements_per_channel"] for m in metas)
    s = np.sum([m["sum"] for m in metas], 0)
    sq = np.sum([m["sumsq"] for m in metas], 0)
    sv = np.sum([m["sumvar"] for m in metas], 0)
    mean = s / count
    var_mean = np.maximum(sq - count * mean**2, 0.0) / max(1, count - 1)  # unbiased, as torch.std
    index = {
        "version": CACHE_VERSION,
        "key": key,
        "n": len(source),
        "num_classes": source.num_classes,
        "image_size": source.image_size,
        "source": source.describe(),
        "shard_size": shard_size,
        "with_images": with_images,
        "latent_shape": metas[0]["latent_shape"],
        "labels": [source.label(i) for i in range(len(source))],
        "shards": [{k: m[k] for k in ("file", "start", "count", "sha256", "bytes")} for m in metas],
        "stats": {
            "mean": mean.tolist(),
            "std_mean": np.sqrt(var_mean).tolist(),
            "std_sample": np.sqrt(var_mean + sv / count).tolist(),
            "elements_per_channel": count,
            "over": "un-flipped images, all positions",
        },
    }
    _write_json(d / "index.json", index)


def _index_matches(index_p: Path, key: dict) -> bool:
    try:
        return json.loads(index_p.read_text()).get("key") == key
    except (OSError, ValueError):  # absent, or being replaced
        return False


def build_latent_cache(
    source: ImageSource,
    tokenizer,
    root: str | Path,
    *,
    features=None,
    with_images: bool = False,
    shard_size: int = 10_000,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    tokenizer_hash: str | None = None,
    desc: str = "latent cache",
) -> LatentCache:
    """Encode `source` (and its flips) with the frozen `tokenizer` into the cache under `root`, or reuse it.

    Every rank of an initialised process group must call it (one barrier at the start; then the ranks meet on
    the shared file system); rank r extracts shards r, r + world, ...; finished, checksum-verified shards are
    skipped; rank 0 writes index.json when every shard is there. The
    default shard size is LightningDiT's (extract_features.py: 10000 images per safetensors file)."""
    if shard_size < 1:
        raise OptionError(f"shard_size must be >= 1, got {shard_size}")
    if len(source) == 0:
        raise CorruptInputError(f"{source.describe()}: no images")
    if needs_features(tokenizer) and features is None:
        raise OptionError(f"{type(tokenizer).__name__} encodes with frozen-encoder features: pass features=")
    rank, world = _dist()
    key = cache_key(source, tokenizer, tokenizer_hash, features)
    d = cache_dir(root, key)
    index_p = d / "index.json"
    if index_p.is_file():
        cache = LatentCache.open(d)
        intact = all(
            (d / sh["file"]).is_file() and (d / sh["file"]).stat().st_size == sh["bytes"]
            for sh in cache.index["shards"]
        )  # fmt: skip  (full sha256 check: cache.verify())
        if cache.index.get("key") == key and (cache.has_images or not with_images) and intact:
            log.info(f"{desc}: reusing {d} ({cache.n} images)")
            _barrier()
            return cache
    _barrier()  # everyone has looked at the old index before rank 0 may remove it
    if rank == 0:
        d.mkdir(parents=True, exist_ok=True)
        index_p.unlink(missing_ok=True)
        _write_json(d / "key.json", key)
    _barrier()
    n_shards = math.ceil(len(source) / shard_size)
    mine = range(rank, n_shards, world)
    todo = []
    for k in mine:
        start = k * shard_size
        count = min(shard_size, len(source) - start)
        if _shard_done(d, k, start, count, with_images) is None:
            todo.append((k, start, count))
    for k, _, _ in todo:  # from here on, a sidecar in range means a finished shard (rank 0 waits on them)
        (d / f"{_shard_name(k)}.json").unlink(missing_ok=True)
    _barrier()
    done = len(mine) - len(todo)
    log.info(f"{desc}: {d}, {n_shards} shards of {shard_size}; rank {rank}/{world}: {len(todo)} to extract"
             + (f", {done} already done" if done else ""))  # fmt: skip
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        with Progress(f"{desc} (rank {rank})", total=sum(c for _, _, c in todo), unit="img") as prog:
            for k, start, count in todo:
                _extract_shard(source, tokenizer, features, k, start, count, d, with_images, batch_size,
                               num_workers, device, prog)  # fmt: skip
    finally:
        tokenizer.train(was_training)
    if world > 1:
        if rank == 0:
            ranges = [
                (k, k * shard_size, min(shard_size, len(source) - k * shard_size)) for k in range(n_shards)
            ]
            wait_on_files(lambda: all(_shard_done(d, k, a, c, with_images, verify=False) for k, a, c in ranges),
                      f"the other ranks' shards in {d}")  # fmt: skip
        else:
            wait_on_files(lambda: _index_matches(index_p, key), f"rank 0 to write {index_p}")
    if rank == 0:
        _write_index(d, key, source, shard_size, with_images, n_shards)
    return LatentCache.open(d)


# the Dataset half of the API lives in bench/latent_dataset.py (which imports this module, not the reverse)
__all__ = ["LatentCache", "build_latent_cache", "cache_needs_images", "default_cache_root", "posterior",
           "tokenizer_fingerprint"]  # fmt: skip
