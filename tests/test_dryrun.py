"""The imagenet256 dry run end to end (`invoke bench --suite imagenet256 --preset tiny ...`) on an ImageNet-layout
tree made from the embedded photographs (tests/imagenet_tree.py: JPEGs of several sizes, one smaller than 256 px,
one grayscale, one CMYK, a PNG named .JPEG), a random-weight Inception file and a reference npz:
- 2 gloo processes give the same samples and metrics as 1;
- a run killed with SIGKILL during training and resumed with --resume ends with the same metrics.
Toy sizes (32 px crops, one backbone, 16 samples) keep it to seconds of compute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from imagenet_tree import SYNSETS, make_imagenet_tree  # noqa: E402

DRY = ["--suite", "imagenet256", "--preset", "tiny", "--epochs", "3", "--num-samples", "16", "--image-size", "32",
       "--backbones", "repa", "--ckpt-every", "1", "--sample-steps", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from bench.data import embedded_images
    from bench.metrics import write_samples_npz
    from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

    tmp = tmp_path_factory.mktemp("dryrun")
    tree = make_imagenet_tree(tmp / "train", copies=2)  # 16 files: one global batch of the dry run
    weights = make_random_inception_weights(tmp / INCEPTION_WEIGHTS_FILE, seed=0)
    ref_images, ref_labels = embedded_images(64, 4, "ref", num_classes=len(SYNSETS))
    ref = write_samples_npz(tmp / "VIRTUAL_imagenet256_labeled.npz", ref_images, ref_labels)
    env = {**os.environ, "GENBENCH_IMAGENET": str(tree), "GENBENCH_ADM_REF": str(ref),
           "GENBENCH_INCEPTION": str(weights), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # fmt: skip
    return tmp, env


def _bench(env, out, *args, nproc=1, timeout=600, wait=True):
    cmd = [sys.executable, "-m", "invoke", "bench", *DRY, "--out", str(out), "--nproc", str(nproc), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def _run_dir(out: Path) -> Path:
    return next((out / "imagenet256").iterdir())


def _scores(out: Path) -> dict:
    rows = [json.loads(x) for x in (_run_dir(out) / "metrics.jsonl").read_text().splitlines()]
    return {(r["phase"], r["metric"], r["epoch"], r["protocol"]): r["value"] for r in rows
            if r["phase"] in ("train", "stage1", "eval")}  # fmt: skip


@pytest.fixture(scope="module")
def one_process(assets):
    tmp, env = assets
    _bench(env, tmp / "one")
    return tmp / "one"


def test_dry_run_writes_fid_rows_and_adm_samples(one_process):
    from bench.metrics import read_npz

    scores = _scores(one_process)
    for protocol in ("paper", "common"):
        for m in ("fid", "sfid", "is", "precision", "recall"):
            assert np.isfinite(scores[("eval", m, 3, protocol)]), (m, protocol)
        batch = read_npz(_run_dir(one_process) / "repa" / "samples" / f"epoch0003_{protocol}" / "samples.npz")
        # equal labels over the folder's classes (3 synsets), as over ImageNet's 1000 at paper scale
        assert batch.n_images == 16 and (batch.labels == np.arange(16) % len(SYNSETS)).all()
    rows = [json.loads(x) for x in (_run_dir(one_process) / "metrics.jsonl").read_text().splitlines()]
    fid = [r for r in rows if r["metric"] == "fid"]
    assert {r["labels"] for r in fid} == {"equal"} and all(
        r["extractor"] == "inception-v3-compat" for r in fid
    )
    train = [r for r in rows if r["phase"] == "train" and r["metric"] == "loss"]
    assert [r["epoch"] for r in train] == [1, 2, 3] and all(
        r["train_flops"] > 0 and r["images_seen"] for r in train
    )
    log = (_run_dir(one_process) / "log.txt").read_text()
    assert "img/s" in log and "ETA" in log
    assert "stage 1 streams ImageNet-layout folder" in log and "stage 2 reads the latent cache" in log


def test_two_gloo_processes_give_the_same_samples_and_metrics(assets, one_process):
    from bench.metrics import read_npz

    tmp, env = assets
    _bench(env, tmp / "two", "--workers", "1", nproc=2)  # with a DataLoader worker per rank: same numbers
    a, b = _scores(one_process), _scores(tmp / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    for protocol in ("paper", "common"):
        sa = read_npz(_run_dir(one_process) / "repa" / "samples" / f"epoch0003_{protocol}" / "samples.npz")
        sb = read_npz(_run_dir(tmp / "two") / "repa" / "samples" / f"epoch0003_{protocol}" / "samples.npz")
        assert np.abs(sa.images().astype(int) - sb.images().astype(int)).max() <= 1
        assert (sa.labels == sb.labels).all()


def test_sigkill_during_training_then_resume_gives_the_same_metrics(assets, one_process):
    tmp, env = assets
    out = tmp / "killed"
    p = _bench(env, out, wait=False)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and p.poll() is None:  # first stage-2 checkpoint: training is under way
        runs = list((out / "imagenet256").glob("*/repa/stage2.pt.sha256"))
        if runs:
            ckpt = runs[0]
            break
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert ckpt is not None, p.stdout.read().decode()[-3000:]
    run_dir = _run_dir(out)
    assert not any(k[1] == "fid" for k in _scores(out)), "killed too late: evaluation had started"
    q = subprocess.run([sys.executable, "-m", "invoke", "bench", "--resume", str(run_dir)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert q.returncode == 0, q.stderr[-6000:]
    assert "resumed after epoch" in (run_dir / "log.txt").read_text()
    a, b = _scores(one_process), _scores(out)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-7), k


def test_missing_inputs_are_listed_in_one_error_before_any_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENBENCH_")}
    env.update(GENBENCH_IMAGENET=str(tmp_path / "nope"), PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "invoke", "bench", *DRY, "--out", str(tmp_path / "r"), "--nproc", "2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2
    err = p.stderr
    assert err.startswith("error:") and "GENBENCH_IMAGENET" in err and "does not exist" in err
    assert "GENBENCH_ADM_REF" in err and "GENBENCH_INCEPTION" in err and "guided-diffusion" in err
    assert "GENBENCH_SD_VAE" not in err  # the dry run needs only the three inputs
    assert not (tmp_path / "r" / "imagenet256").exists()


def test_from_release_scores_released_weights_without_training(assets):
    """--from-release: a tiny REPA checkpoint in the official layout (+ an SD-VAE diffusers folder) is sampled and
    scored under both protocols; no ImageNet folder is needed."""
    import torch
    from test_release import _rand_state, _sd_vae_folder

    from baselines.sit import SiT, SiT_configs

    tmp, env = assets
    weights = tmp / "weights"
    _sd_vae_folder(weights / "sd-vae-ft-ema")
    (weights / "repa").mkdir()
    net = SiT(
        input_size=8,
        in_channels=4,
        num_classes=1000,
        z_dims=(64,),
        **{**SiT_configs["tiny"], "projector_dim": 256},
    )
    torch.save(
        _rand_state(net, 1), weights / "repa" / "last.pt"
    )  # the downloaded last.pt: a flat EMA state_dict
    env = {k: v for k, v in env.items() if k != "GENBENCH_IMAGENET"} | {"GENBENCH_WEIGHTS": str(weights)}
    out = tmp / "release"
    cmd = [sys.executable, "-m", "invoke", "bench", "--suite", "imagenet256", "--preset", "tiny", "--from-release",
           "--image-size", "32", "--num-samples", "8", "--sample-steps", "4", "--backbones", "repa", "--out", str(out)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-6000:]
    scores = _scores(out)
    assert {("eval", "fid", 0, "paper"), ("eval", "fid", 0, "common")} <= scores.keys()
    assert not any(k[0] == "train" for k in scores)
