"""`invoke bench --jobs N` (bench.jobs): the families of a run in worker processes on CPU.

- families sharing a tokenizer stay in one worker, in suite order; the rest are balanced greedily;
- a run with 2 workers writes the same metrics as the serial run (each family is computed by one process with
  the same thread count), under one lock, and the parent's summary closes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import jobs, suites
from bench.errors import OptionError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from imagenet_tree import SYNSETS, make_imagenet_tree  # noqa: E402


def _bb(key=None, trains=True):
    tok = SimpleNamespace(shared_key=key, trainable=trains)
    return SimpleNamespace(tokenizer=tok, recipe=SimpleNamespace(stage1_epochs=3 if trains else 0))


SMOKE_LIKE = {
    "repa": _bb("sd"), "sit": _bb("sd"), "vavae_lightningdit": _bb(), "fae": _bb(), "starflow": _bb("sd"),
    "tarflow": _bb(trains=False),
}  # fmt: skip


def test_shared_tokenizers_stay_together_and_workers_balance():
    names = list(SMOKE_LIKE)
    assert jobs.groups(names, SMOKE_LIKE) == [
        ["repa", "sit", "starflow"],
        ["vavae_lightningdit"],
        ["fae"],
        ["tarflow"],
    ]
    two = jobs.assign(names, SMOKE_LIKE, 2)
    assert two == [["repa", "sit", "starflow"], ["vavae_lightningdit", "fae", "tarflow"]]
    assert sorted(sum(two, [])) == sorted(names)  # every family exactly once
    assert jobs.assign(names, SMOKE_LIKE, 1) == [names]
    assert len(jobs.assign(names, SMOKE_LIKE, 8)) == 4  # never more workers than groups


def test_jobs_resolution():
    smoke, dry = suites.SMOKE, suites.dry_run_suite()
    cores = jobs.cpu_count()
    assert jobs.resolve_jobs(0, "cpu", 1, 4, smoke) == min(cores, 4)
    assert jobs.resolve_jobs(0, "cpu", 1, 4, dry) == 1  # auto only for the embedded suites
    assert jobs.resolve_jobs(2, "cpu", 1, 4, dry) == 2
    assert jobs.resolve_jobs(3, "cpu", 1, 2, smoke) == 2
    assert jobs.resolve_jobs(2, "cuda", 1, 4, smoke) == 1  # GPUs scale out with torchrun instead
    assert jobs.resolve_jobs(2, "cpu", 2, 4, smoke) == 1
    custom = suites.dataclasses.replace(smoke, name="custom")  # a worker could not rebuild it by name
    assert jobs.resolve_jobs(2, "cpu", 1, 4, custom) == 1
    with pytest.raises(OptionError, match="--jobs"):
        jobs.resolve_jobs(-1, "cpu", 1, 4, smoke)


DRY = ["--suite", "imagenet256", "--preset", "tiny", "--epochs", "2", "--num-samples", "16", "--image-size", "32",
       "--backbones", "repa,vavae_lightningdit", "--sample-steps", "4"]  # fmt: skip


def _scores(out: Path) -> dict:
    run_dir = next((out / "imagenet256").iterdir())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["backbone"], r["phase"], r["metric"], r["epoch"], r["protocol"]): r["value"] for r in rows
            if r["phase"] in ("train", "stage1", "eval", "tokenizer")}  # fmt: skip


def test_two_workers_write_what_the_serial_run_writes(tmp_path):
    from bench.data import embedded_images
    from bench.metrics import write_samples_npz
    from bench.metrics.extractors import INCEPTION_WEIGHTS_FILE, make_random_inception_weights

    tree = make_imagenet_tree(tmp_path / "train", copies=2)
    weights = make_random_inception_weights(tmp_path / INCEPTION_WEIGHTS_FILE, seed=0)
    ref_images, ref_labels = embedded_images(64, 4, "ref", num_classes=len(SYNSETS))
    ref = write_samples_npz(tmp_path / "ref.npz", ref_images, ref_labels)
    env = {
        **os.environ,
        "GENBENCH_IMAGENET": str(tree),
        "GENBENCH_ADM_REF": str(ref),
        "GENBENCH_INCEPTION": str(weights),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "GENBENCH_WORKER_THREADS": "1",
    }  # fmt: skip  (the serial run's thread count: same numerics)
    out = {}
    for n in (1, 2):
        out[n] = tmp_path / f"jobs{n}"
        cmd = [sys.executable, "-m", "bench.runner", *DRY, "--out", str(out[n]), "--jobs", str(n)]
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-4000:]
    log = (next((out[2] / "imagenet256").iterdir()) / "log.txt").read_text()
    assert "2 jobs (worker processes" in log and "job 0: repa" in log and "job 1: vavae_lightningdit" in log
    assert not (next((out[2] / "imagenet256").iterdir()) / "run.lock").exists()  # released by the parent
    a, b = _scores(out[1]), _scores(out[2])
    assert {k[0] for k in a if k[2] == "fid"} == {"repa", "vavae_lightningdit"}
    assert a == b
