"""A Dataset over a latent cache (bench.latent_cache) whose draws depend only on (run seed, epoch, index).

API:
    ds = LatentDataset(cache, posterior="mean"|"sample"|"sample_once", hflip=0.5, seed=run_seed,
                       with_images=False)
        ds[i] or ds[(epoch, i)] -> (latent float32 [C, h, w], label int64[, image uint8 [3, H, W]])
        (`epoch` is whatever integer the trainer keys its passes by: the epoch, or the global step)
    ds.draws(epoch, i) -> (flipped, eps)
    loader, sampler = latent_loader(ds, batch_size_per_rank, rank=r, world=w, seed=run_seed, num_workers=4)
        sampler.set_epoch(e) each epoch; batches are (epoch, index)-keyed, so worker copies need no update.

The flip (probability `hflip`) and the posterior noise eps (latent = mean + std * eps) come from generators
seeded by (run seed, stream, epoch, index), never from the process or worker that loads the item, so a sample
index gets the same data on any number of processes and workers. "sample_once" seeds eps by (run seed, index)
alone: one fixed posterior sample per image and per flip, as LightningDiT's extract_features.py stores
(posterior.sample()). Latents are returned raw; the trainer normalises batches on the device.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from baselines.api import sample_seed
from bench.errors import OptionError

if TYPE_CHECKING:
    from bench.latent_cache import LatentCache

POSTERIOR_MODES = ("mean", "sample", "sample_once")


_FLIP_STREAM, _EPS_STREAM = 0x0F11B, 0x0E95


def draw_generator(seed: int, *key: int) -> torch.Generator:
    """A torch generator seeded by a fixed mix of (seed, *key) (baselines.api.sample_seed chained)."""
    s = int(seed)
    for k in key:
        s = sample_seed(s, int(k))
    return torch.Generator().manual_seed(s % (1 << 63))


class LatentDataset(torch.utils.data.Dataset):
    """Training items from a latent cache; `ds[i]` or `ds[(epoch, i)]` -> (latent, label[, image]).

    latent: the posterior mean ("mean"), mean + std * eps with eps fresh per (epoch, i) ("sample"), or with eps
    fixed per i ("sample_once"); of the flipped image with probability `hflip` (drawn per (epoch, i)). image
    (with_images): the cropped uint8 image [3, H, W], flipped with its latent. Latents are raw (un-normalised):
    the trainer normalises batches on the device with the tokenizer's statistics."""

    def __init__(self, cache: LatentCache, *, posterior: str = "mean", hflip: float = 0.0, seed: int = 0,
                 with_images: bool = False):  # fmt: skip
        if posterior not in POSTERIOR_MODES:
            raise OptionError(f"unknown posterior mode {posterior!r}; known: {', '.join(POSTERIOR_MODES)}")
        if not 0.0 <= hflip <= 1.0:
            raise OptionError(f"hflip must be a probability in [0, 1], got {hflip}")
        if with_images and not cache.has_images:
            raise OptionError(f"latent cache {cache.dir} holds no images; rebuild it with with_images=True")
        self.cache, self.posterior, self.hflip, self.seed = cache, posterior, float(hflip), int(seed)
        self.with_images = with_images
        self.epoch = 0
        self._labels = cache.labels()
        self._handles: dict = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _open(self, path):
        """An open (memory-mapped) shard, kept per process: workers open their own after the fork."""
        from safetensors import safe_open

        key = (os.getpid(), str(path))
        f = self._handles.get(key)
        if f is None:
            if len(self._handles) >= 64:  # bound the open files
                self._handles.clear()
            f = self._handles[key] = safe_open(str(path), framework="pt", device="cpu")
        return f

    def __getstate__(self):  # handles do not travel to worker processes
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return self.cache.n

    def draws(self, epoch: int, i: int) -> tuple[bool, torch.Tensor | None]:
        """(flipped, eps) of sample i in `epoch`: pure functions of (seed, epoch, i)."""
        flipped = False
        if self.hflip > 0:
            u = torch.rand((), generator=draw_generator(self.seed, _FLIP_STREAM, epoch, i))
            flipped = bool(u < self.hflip)
        eps = None
        if self.posterior == "sample":
            eps = torch.randn(
                self.cache.latent_shape, generator=draw_generator(self.seed, _EPS_STREAM, epoch, i, flipped)
            )
        elif self.posterior == "sample_once":
            eps = torch.randn(
                self.cache.latent_shape, generator=draw_generator(self.seed, _EPS_STREAM, i, flipped)
            )
        return flipped, eps

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        i = int(i)
        flipped, eps = self.draws(epoch, i)
        path, j = self.cache.locate(i)
        f = self._open(path)
        sfx = "_flip" if flipped else ""
        z = f.get_slice("mean" + sfx)[j : j + 1][0]
        if eps is not None:
            z = z + f.get_slice("std" + sfx)[j : j + 1][0] * eps
        img = f.get_slice("images")[j : j + 1][0] if self.with_images else None
        y = torch.tensor(self._labels[i], dtype=torch.int64)
        if img is None:
            return z, y
        img = img.permute(2, 0, 1)
        return z, y, (img.flip(-1) if flipped else img).contiguous()


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler (e.g. DistributedSampler) to yield (epoch, index): the dataset's draws then follow the
    epoch even in persistent worker processes. `set_epoch` updates both."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.epoch
        return ((e, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def latent_loader(dataset: LatentDataset, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                  shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                  pin_memory: bool | None = None, persistent_workers: bool = False):  # fmt: skip
    """(DataLoader, EpochSampler) over `dataset` for one rank: DistributedSampler(shuffle, seed) partitions a
    permutation of the data set; with the per-rank batch = global batch / world, global batch b holds the same
    indices for any world size (positions [b * B, (b + 1) * B) of the epoch's permutation)."""
    from torch.utils.data.distributed import DistributedSampler

    inner = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler = EpochSampler(inner)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    return loader, sampler
