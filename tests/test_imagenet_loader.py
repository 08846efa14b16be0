"""bench.step_loader: the paper-scale loaders hand the loop exactly its micro-batches, whatever the number of
processes and DataLoader workers; stage-1 image flips are a function of (seed, step, index); a bad file is one
error naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from imagenet_tree import make_imagenet_tree  # noqa: E402

from bench.data import ImageFolder  # noqa: E402
from bench.errors import CorruptInputError  # noqa: E402
from bench.optimise import Loop, LoopConfig  # noqa: E402
from bench.step_loader import Keyed, StepBatches, StepFeed, StepImages, raise_bad, step_loader  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ImageFolder(make_imagenet_tree(tmp_path_factory.mktemp("tree") / "train"), 16)


def _loop(n, batch=4, micro=2, total=6):
    cfg = LoopConfig(stage=1, n=n, batch=batch, micro=micro, total_steps=total, lr=1e-3, schedule="constant",
                     warmup=0, min_lr=0.0, grad_clip=None, mixed_precision="no")  # fmt: skip
    return Loop(cfg, torch.nn.Linear(1, 1), "forward", [], torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                seed=3, device="cpu", loss_fn=None)  # fmt: skip


def test_step_batches_are_the_loops_micro_batches_on_any_world_size():
    loop = _loop(n=9, total=5)  # 2 steps per epoch: crosses epoch boundaries (new permutation)
    want = {}
    for step in range(1, 5):  # a resumed run starts at step 1
        idx = loop.indices(step)
        for j in range(2):
            want[(step, j)] = [(step, int(i)) for i in idx[2 * j : 2 * j + 2]]
    for world in (1, 2):
        got = {}
        for r in range(world):
            batches = list(StepBatches(loop.indices, 1, 5, 2, rank=r, world=world))
            assert len(batches) == len(StepBatches(loop.indices, 1, 5, 2, rank=r, world=world))
            per_step = 2 // world
            for k, b in enumerate(batches):
                got[(b[0][0], r + world * (k % per_step))] = b
        assert got == want, world


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_images_follow_the_loop_and_flip_by_seed_step_index(folder, workers):
    loop = _loop(n=len(folder), batch=4, micro=2, total=4)
    ds = StepImages(folder, hflip=0.5, seed=7)
    feeds = [StepFeed(lambda s, r=r: step_loader(ds, loop.indices, s, 4, 2, rank=r, world=2, num_workers=workers))
             for r in range(2)]  # fmt: skip
    flips = []
    for step in range(4):
        idx = loop.indices(step)
        for j in range(2):  # chunk j is computed by rank j (world 2)
            c = idx[2 * j : 2 * j + 2]
            imgs, ys, ok, msg = feeds[j].get(c, step)
            raise_bad(ok, msg)
            for k, i in enumerate(c.tolist()):
                img, y = folder[i]
                f = ds.flipped(step, i)
                flips.append(f)
                assert torch.equal(imgs[k], img.flip(1) if f else img) and int(ys[k]) == y
    assert any(flips) and not all(flips)
    assert flips == [
        StepImages(folder, 0.5, seed=7).flipped(s, int(i)) for s in range(4) for i in loop.indices(s)
    ]
    with pytest.raises(RuntimeError, match="exhausted"):
        feeds[0].get(c, 4)
    fresh = StepFeed(lambda s: step_loader(ds, loop.indices, s, 4, 2))
    with pytest.raises(RuntimeError, match="out of order"):
        fresh.get(loop.indices(0)[2:4], 0)


def test_a_bad_file_is_one_error_naming_it_from_a_worker(tmp_path):
    root = make_imagenet_tree(tmp_path / "train")
    bad = sorted((root / "n01440764").iterdir())[0]
    bad.write_bytes(b"not an image")
    src = ImageFolder(root, 16)
    loop = _loop(n=len(src), batch=len(src), micro=len(src), total=1)
    feed = StepFeed(lambda s: step_loader(StepImages(src), loop.indices, s, 1, len(src), num_workers=1))
    imgs, ys, ok, msg = feed.get(loop.indices(0), 0)
    with pytest.raises(CorruptInputError, match=bad.name):
        raise_bad(ok, msg)


def test_keyed_latents_through_workers_equal_direct_reads(tmp_path):
    from baselines.autoencoder import sd_vae_standin
    from bench.latent_cache import build_latent_cache
    from bench.latent_dataset import LatentDataset

    src = ImageFolder(make_imagenet_tree(tmp_path / "train"), 16)
    torch.manual_seed(0)
    cache = build_latent_cache(
        src, sd_vae_standin("tiny-f4"), tmp_path / "cache", shard_size=3, with_images=True
    )
    ds = LatentDataset(cache, posterior="sample", hflip=0.5, seed=1, with_images=True)
    loop = _loop(n=len(src), batch=4, micro=4, total=3)
    feed = StepFeed(lambda s: step_loader(Keyed(ds), loop.indices, s, 3, 4, num_workers=2))
    for step in range(3):
        idx = loop.indices(step)
        z, y, img = feed.get(idx, step)
        want = [ds[(step, int(i))] for i in idx]
        assert torch.equal(z, torch.stack([w[0] for w in want])) and torch.equal(
            img, torch.stack([w[2] for w in want])
        )
