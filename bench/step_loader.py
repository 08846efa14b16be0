"""DataLoaders that feed the step-based loop (bench.optimise.Loop) at paper scale: worker processes, pinned memory,
and the exact micro-batches the loop computes, so results do not depend on the number of processes or workers.

API:
    StepBatches(indices, start, total, micro, rank=0, world=1)   a batch sampler (and a DistributedSampler: it
        partitions the data over ranks) yielding [(step, i), ...] for every micro-batch rank `rank` computes, in
        the loop's order: for step in [start, total): chunks of `micro` of indices(step) (the loop's global batch
        of that step), chunk j going to rank j % world (bench.optimise.Loop.step).
    StepImages(source, hflip=0.0, seed=0)   item (step, i) -> (i, uint8 [H, W, 3], label, ok, message): the image of
        an ImageSource (ImageNet: ADM crop), horizontally flipped with probability hflip drawn from
        (seed, step, i); a file that cannot be decoded comes back as data (ok False) and stops the run with one
        line naming it (not a worker traceback)
    Keyed(dataset)   item (step, i) -> (i, *dataset[(step, i)])  (LatentDataset keys its draws the same way)
    StepFeed(make_loader)   .get(indices, step) -> the next batch (without its keys), checked to hold exactly
        `indices`; make_loader(start_step) -> DataLoader, called on the first get (so a resumed run starts there)
    step_loader(dataset, indices, start, total, micro, *, rank, world, num_workers, pin_memory) -> DataLoader

Why not torch's DistributedSampler order: it deals a permutation round-robin to ranks, so the samples in one
micro-batch (and so the loss's per-micro-batch draws) would change with the number of processes. StepBatches
subclasses it for the interface (num_replicas, rank, set_epoch) but follows the loop's permutation, which is a
function of (run seed, stage, epoch) alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data.distributed import DistributedSampler

from bench.errors import CorruptInputError
from bench.latent_dataset import draw_generator

_STAGE1_FLIP = 0x51F11B  # the stream of stage-1 image flips (bench.latent_dataset's flips use their own)


class StepBatches(DistributedSampler):
    """The micro-batches rank `rank` of `world` computes in steps [start, total), as lists of (step, index)."""

    def __init__(self, indices: Callable[[int], torch.Tensor], start: int, total: int, micro: int,
                 rank: int = 0, world: int = 1):  # fmt: skip
        # no dataset: the loop's indices define the data (DistributedSampler's own fields for its interface)
        self.indices, self.start, self.total, self.micro = indices, int(start), int(total), int(micro)
        self.num_replicas, self.rank, self.epoch, self.shuffle, self.drop_last = world, rank, 0, True, True

    def _mine(self, n: int) -> range:
        return range(self.rank, -(-n // self.micro), self.num_replicas)

    def __iter__(self):
        for step in range(self.start, self.total):
            idx = self.indices(step)
            for j in self._mine(len(idx)):
                yield [(step, int(i)) for i in idx[j * self.micro : (j + 1) * self.micro]]

    def __len__(self) -> int:
        if self.total <= self.start:
            return 0
        return (self.total - self.start) * len(self._mine(len(self.indices(self.start))))


class StepImages(torch.utils.data.Dataset):
    """`ds[(step, i)]` -> (i, uint8 [H, W, 3], label, ok, message) of an ImageSource, flipped per (seed, step, i)."""

    def __init__(self, source, hflip: float = 0.0, seed: int = 0):
        self.source, self.hflip, self.seed = source, float(hflip), int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def flipped(self, step: int, i: int) -> bool:
        if self.hflip <= 0:
            return False
        return bool(torch.rand((), generator=draw_generator(self.seed, _STAGE1_FLIP, step, i)) < self.hflip)

    def __getitem__(self, key):
        step, i = key
        try:
            img, y = self.source[i]
        except CorruptInputError as e:
            s = self.source.image_size
            return i, torch.zeros(s, s, 3, dtype=torch.uint8), -1, False, str(e)
        if self.flipped(step, i):
            img = img.flip(1).contiguous()  # HWC: the width axis
        return i, img, y, True, ""


class Keyed(torch.utils.data.Dataset):
    """`ds[(step, i)]` -> (i, *dataset[(step, i)]): the index travels with the item, so the feed can check it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        item = self.dataset[key]
        return (key[1], *(item if isinstance(item, tuple) else (item,)))


def step_loader(dataset, indices, start: int, total: int, micro: int, *, rank: int = 0, world: int = 1,
                num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    sampler = StepBatches(indices, start, total, micro, rank, world)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, prefetch_factor=4 if num_workers else None)  # fmt: skip


class StepFeed:
    """Hands out a step loader's batches in the loop's call order; a batch that does not hold exactly the indices
    the loop asks for is a bug (RuntimeError), never silently different data."""

    def __init__(self, make_loader: Callable[[int], torch.utils.data.DataLoader]):
        self.make_loader, self._it = make_loader, None

    def get(self, indices: torch.Tensor, step: int):
        if self._it is None:
            self._it = iter(self.make_loader(step))
        try:
            keys, *rest = next(self._it)
        except StopIteration:
            raise RuntimeError(f"step loader exhausted at step {step}") from None
        if not torch.equal(keys.cpu(), indices.cpu().long()):
            raise RuntimeError(f"step loader out of order at step {step}: got {keys[:4].tolist()}..., "
                               f"expected {indices[:4].tolist()}...")  # fmt: skip
        return rest

    def close(self) -> None:
        self._it = None  # worker processes exit with their iterator


def raise_bad(ok, msg) -> None:
    """The first undecodable file of a StepImages batch as one CorruptInputError naming it."""
    if not bool(torch.as_tensor(ok).all()):
        raise CorruptInputError(next(m for m, g in zip(msg, ok) if not g))


def default_workers(device: str, local_world: int = 1) -> int:
    """DataLoader workers per rank when --workers is not given: none on CPU (the cores do the training), else
    up to 8 per GPU process from the node's cores (decoding JPEGs keeps up with a GPU at 256 px)."""
    import os

    if not str(device).startswith("cuda"):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_world) - 1))
