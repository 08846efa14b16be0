"""Paper-scale sampling: ADM npz shards with checksummed sidecars, merge into one npz, resume, equal vs random
labels, non-finite accounting before any clamp, and sharding across 2 gloo processes."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baselines.api import Backbone
from bench.errors import OptionError
from bench.metrics import read_npz
from bench.sample import generate, read_samples_meta, sample_labels

N, SEED, SAMPLER = 10, 11, dict(mode="ode", steps=2)


def _backbone():
    from baselines.api import build_backbone

    torch.manual_seed(0)
    return build_backbone("repa", "tiny", num_classes=4, image_size=32)


@dataclasses.dataclass
class Poisoned(Backbone):
    """A real backbone whose decoded images are made non-finite for two labels (unclamped, as the contract says)."""

    def sample_images(self, labels, noise, generators=None, **sampler):
        x = super().sample_images(labels, noise, generators, **sampler)
        x = x.clone()
        x[labels == 1, 0, 0, 0] = float("inf")
        x[labels == 2, 1, 3, 3] = float("nan")
        return x


def test_equal_and_random_labels():
    eq = sample_labels(np.arange(50_000), 1000, 0, "equal")
    assert (np.bincount(eq, minlength=1000) == 50).all() and eq[1234] == 234
    rnd = sample_labels(np.arange(2000), 10, 7, "random")
    assert rnd.min() >= 0 and rnd.max() <= 9 and len(np.unique(rnd)) == 10
    assert np.array_equal(
        sample_labels(np.arange(1000, 1010), 10, 7, "random"),
        sample_labels(np.arange(2000), 10, 7, "random")[1000:1010],
    )
    assert not np.array_equal(rnd, sample_labels(np.arange(2000), 10, 8, "random"))  # seeded
    with pytest.raises(OptionError, match="unknown label mode"):
        sample_labels([0], 10, 0, "balanced")


def test_shards_merge_resume_and_match_in_memory(tmp_path):
    torch.set_num_threads(1)
    bb = _backbone()
    mem = generate(bb, N, 4, SEED, 32, batch_size=4, **SAMPLER)
    out = generate(
        bb, N, 4, SEED, 32, batch_size=3, out_dir=tmp_path, shard_size=4, return_images=True, **SAMPLER
    )
    assert [p.name for p in out["shards"]] == ["samples_00000.npz", "samples_00001.npz", "samples_00002.npz"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
        "samples.npz"
    ]  # a folder scorer sees the merge only
    merged = read_npz(out["path"])
    assert merged.n_images == N and np.array_equal(merged.labels, np.arange(N) % 4)
    assert (
        np.abs(merged.images().astype(int) - mem["images"].astype(int)).max() <= 1
    )  # batch-size rounding only
    meta = read_samples_meta(out["path"])
    assert meta["labels"] == "equal" and meta["n_nonfinite"] == 0 and meta["seed"] == SEED
    assert meta["uint8"] == out["uint8"] == "adm-truncate"  # bench.metrics' default: ADM's truncation
    assert (
        merged.uint8_convention == "adm-truncate"
        and read_npz(out["shards"][0]).uint8_convention == "adm-truncate"
    )
    rounded = generate(bb, 4, 4, SEED, 32, batch_size=4, uint8="round", **SAMPLER)
    assert rounded["uint8"] == "round" and (rounded["images"].astype(int) - mem["images"][:4]).max() <= 1
    for k, p in enumerate(out["shards"]):
        m = read_samples_meta(p)
        assert (m["start"], m["count"]) == (4 * k, min(4, N - 4 * k)) and len(m["sha256"]) == 64
    # resume: a deleted shard and a corrupted one are regenerated, the intact one is kept
    s0, s1, s2 = out["shards"]
    kept = os.stat(s0).st_mtime_ns
    s1.unlink()
    b = bytearray(s2.read_bytes())
    b[200] ^= 0xFF
    s2.write_bytes(bytes(b))
    again = generate(
        bb, N, 4, SEED, 32, batch_size=5, out_dir=tmp_path, shard_size=4, return_images=True, **SAMPLER
    )
    assert os.stat(s0).st_mtime_ns == kept
    assert np.abs(again["images"].astype(int) - out["images"].astype(int)).max() <= 1
    # other settings (random labels) do not reuse shards made with equal labels
    rnd = generate(
        bb, N, 4, SEED, 32, batch_size=4, out_dir=tmp_path, shard_size=4, labels="random", **SAMPLER
    )
    assert read_samples_meta(rnd["path"])["labels"] == "random"
    assert np.array_equal(read_npz(rnd["path"]).labels, sample_labels(np.arange(N), 4, SEED, "random"))
    assert os.stat(s0).st_mtime_ns != kept


def test_nonfinite_counted_before_clamp_in_every_shard_and_the_merge(tmp_path):
    torch.set_num_threads(1)
    bb = _backbone()
    bad = Poisoned(**{f.name: getattr(bb, f.name) for f in dataclasses.fields(Backbone)})
    out = generate(bad, N, 4, SEED, 32, batch_size=4, out_dir=tmp_path, shard_size=4, **SAMPLER)
    expected = np.flatnonzero(np.isin(np.arange(N) % 4, [1, 2]))  # +inf and NaN samples
    assert out["n_nonfinite"] == len(expected) == 5 and np.array_equal(
        np.flatnonzero(out["nonfinite"]), expected
    )
    merged = read_npz(out["path"])
    assert merged.n_nonfinite == 5 and np.array_equal(merged.nonfinite_index, expected)
    assert read_samples_meta(out["path"])["nonfinite_index"] == expected.tolist()
    per_shard = [read_npz(p).n_nonfinite for p in out["shards"]]
    assert (
        per_shard
        == [2, 2, 1]
        == [json.loads(p.with_suffix(".json").read_text())["n_nonfinite"] for p in out["shards"]]
    )
    mem = generate(bad, N, 4, SEED, 32, batch_size=4, **SAMPLER)
    assert mem["n_nonfinite"] == 5


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        generate(_backbone(), N, 4, SEED, 32, batch_size=2, out_dir=out_dir, shard_size=3, **SAMPLER)
    finally:
        dist.destroy_process_group()


def test_two_processes_write_the_same_merged_npz(tmp_path):
    torch.set_num_threads(1)
    one = generate(
        _backbone(), N, 4, SEED, 32, batch_size=2, out_dir=tmp_path / "one", shard_size=3, **SAMPLER
    )
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tmp_path / "two"), nprocs=2, join=True)
    a, b = read_npz(one["path"]), read_npz(tmp_path / "two" / "samples.npz")
    assert np.array_equal(a.images(), b.images()) and np.array_equal(a.labels, b.labels)
    assert [read_samples_meta(p)["count"] for p in one["shards"]] == [3, 3, 3, 1]
