"""Bad data inputs (an ImageNet folder with an empty class or a non-image file), a full disk while writing a
latent shard, and SIGKILL during latent extraction: each leaves what was written before byte-identical."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagenet_tree import make_imagenet_tree

from bench import suites
from bench.data import data_sources
from bench.errors import CorruptInputError, DiskFullError
from bench.metrics import write_samples_npz

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def imagenet(tmp_path):
    """An ImageNet-layout folder, an ADM reference batch and a results file written before the bad input."""
    root = make_imagenet_tree(tmp_path / "train")
    ref = write_samples_npz(tmp_path / "ref.npz", np.zeros((4, 32, 32, 3), np.uint8))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.jsonl").write_text('{"metric": "fid", "value": 3.0}\n')
    return root, ref


def _sources(root, ref):
    return data_sources(suites.IMAGENET256, imagenet=root, reference=ref, image_size=32)


def test_missing_imagenet_folder_and_reference(imagenet, tmp_path):
    from bench.errors import MissingInputError

    root, ref = imagenet
    before = _snapshot(tmp_path)
    with pytest.raises(MissingInputError) as e:
        _sources(tmp_path / "no-train", tmp_path / "no-ref.npz")
    msg = str(e.value)  # one line per missing input, each naming its path
    assert f"- ImageNet train folder: {tmp_path / 'no-train'} does not exist" in msg
    assert f"- ADM reference batch: {tmp_path / 'no-ref.npz'} does not exist" in msg
    assert _snapshot(tmp_path) == before


def test_imagenet_folder_with_an_empty_class(imagenet, tmp_path):
    root, ref = imagenet
    (root / "n09999999").mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptInputError, match=f"{root}: 1 class folder\\(s\\) hold no images: n09999999$"):
        _sources(root, ref)
    assert _snapshot(tmp_path) == before


def test_imagenet_folder_with_a_non_image_file(imagenet, tmp_path):
    root, ref = imagenet
    (root / "n01440764" / "notes.txt").write_text("not an image")
    before = _snapshot(tmp_path)
    with pytest.raises(CorruptInputError, match=f"{root}: 1 file\\(s\\) without an image extension .*: n01440764/notes.txt$"):  # fmt: skip
        _sources(root, ref)
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- latent shards

# Builds the latent cache of the test tree with a tiny autoencoder, 2 images a shard. With KILL=n it stops in
# the progress update after n images (logs a marker and sleeps until killed).
DRIVER = """
import os, sys, time
sys.path.insert(0, os.path.join(os.environ["REPO"], "tests"))
import torch
torch.set_num_threads(1)  # bit for bit across processes
from baselines.autoencoder import AETokenizer, AutoencoderKL, _dd
from bench.data import ImageFolder
from bench.latent_cache import build_latent_cache
from bench.progress import Progress, log, setup_logging

class TinyAE(AETokenizer):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.ae = AutoencoderKL(_dd(4, (1, 2), (), res_blocks=1, ch=32, resolution=32), 4)

setup_logging()
if os.environ.get("KILL"):
    real = Progress.update

    def update(self, n=1, **info):
        real(self, n, **info)
        if self.done >= int(os.environ["KILL"]):
            print("KILL-POINT", flush=True)
            time.sleep(600)

    Progress.update = update
cache = build_latent_cache(ImageFolder(sys.argv[1], 32), TinyAE(), sys.argv[2], shard_size=2, batch_size=1)
print("DONE", cache.dir if hasattr(cache, "dir") else "", flush=True)
"""


def _build(tree: Path, out: Path, kill: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REPO": str(REPO), "KILL": str(kill or "")}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(tree), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _files(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_sigkill_during_latent_extraction_resumes_to_the_same_cache(tmp_path):
    tree = make_imagenet_tree(tmp_path / "train")  # 8 images: 4 shards of 2
    ref = _build(tree, tmp_path / "uninterrupted")
    p = _build(tree, tmp_path / "killed", kill=5)  # inside shard 2, shards 0 and 1 finished
    try:
        assert p.stdout.readline().strip() == "KILL-POINT", p.stderr.read()[-3000:]
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    killed = _files(tmp_path / "killed")
    assert not any(f.name == "index.json" for f in killed)
    assert sum(f.suffix == ".safetensors" for f in killed) == 2  # the finished shards, nothing torn
    again = _build(tree, tmp_path / "killed")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "2 to extract, 2 already done" in err
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    got, want = _files(tmp_path / "killed"), _files(tmp_path / "uninterrupted")
    assert {k: v for k, v in got.items() if k.name != "index.json"} == {k: v for k, v in want.items() if k.name != "index.json"}  # fmt: skip
    g, w = (json.loads(next(v for k, v in d.items() if k.name == "index.json")) for d in (got, want))
    assert g["shards"] == w["shards"]
    for k in killed:  # the shards finished before the kill were kept as they were, not rewritten
        assert got[k] == killed[k] or k.name == "key.json"


def test_full_disk_while_writing_a_latent_shard(tmp_path, monkeypatch):
    import torch

    from baselines.autoencoder import AETokenizer, AutoencoderKL, _dd
    from bench.data import ImageFolder
    from bench.latent_cache import build_latent_cache

    class TinyAE(AETokenizer):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.ae = AutoencoderKL(_dd(4, (1, 2), (), res_blocks=1, ch=32, resolution=32), 4)

    source = ImageFolder(make_imagenet_tree(tmp_path / "train"), 32)
    (tmp_path / "metrics.jsonl").write_text('{"metric": "fid", "value": 3.0}\n')
    before = _snapshot(tmp_path)
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while shard 1 is being written
        if ".shard_00001.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError) as e:
        build_latent_cache(source, TinyAE(), tmp_path / "cache", shard_size=2, batch_size=2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    msg = str(e.value)
    assert (
        msg.startswith("disk full while writing ")
        and "shard_00001.safetensors (No space left on device;" in msg
    )
    assert "files written before are intact" in msg and len(msg.splitlines()) == 1
    (d,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in d.iterdir()) == ["key.json", "shard_00000.json", "shard_00000.safetensors"]
    meta = json.loads((d / "shard_00000.json").read_text())
    from bench.checkpoints import sha256_file

    assert sha256_file(d / "shard_00000.safetensors") == meta["sha256"]  # the finished shard is intact
    assert all(_snapshot(tmp_path)[p] == b for p, b in before.items())
    cache = build_latent_cache(source, TinyAE(), tmp_path / "cache", shard_size=2, batch_size=2)
    assert cache.n == len(source) and cache.verify() == []
