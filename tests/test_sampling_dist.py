"""Samples depend only on (run seed, index): not on batch size, not on the number of processes."""

import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.sample import generate

N, SEED, SAMPLER = 10, 11, dict(mode="sde", steps=3, guidance=1.8, guidance_interval=(0.0, 0.7))


def _backbone():
    from baselines.backbones.repa import build_backbone

    torch.manual_seed(0)  # identical weights in every process
    return build_backbone("tiny", num_classes=4, image_size=32)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = generate(_backbone(), N, 4, SEED, 32, batch_size=3, **SAMPLER)
        if rank == 0:
            np.save(os.path.join(out_dir, "images.npy"), res["images"])
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_same_samples_as_one():
    torch.set_num_threads(1)
    one = generate(_backbone(), N, 4, SEED, 32, batch_size=N, **SAMPLER)
    small_batches = generate(_backbone(), N, 4, SEED, 32, batch_size=4, **SAMPLER)
    assert (
        np.abs(one["images"].astype(int) - small_batches["images"].astype(int)).max() <= 1
    )  # last-bit rounding only
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        two = np.load(os.path.join(d, "images.npy"))
    assert two.shape == one["images"].shape
    assert np.abs(two.astype(int) - one["images"].astype(int)).max() <= 1
    assert (one["labels"] == np.arange(N) % 4).all()
