"""SIGKILL at every stage, then the same command again: the run resumes and ends with the same metrics, bit for
bit on CPU, as an uninterrupted run. Real processes killed with SIGKILL (no cleanup runs), tiny sizes.

One chain of kills covers the stages in order (each resume is killed in the next stage), which costs about one
run instead of one per stage: stage-1 training, generator training (after the epoch-2 checkpoint), sampling, and
feature extraction of the samples. Before one resume the stage-1 checkpoint is corrupted: it must be recomputed,
never used. Latent extraction (the imagenet suites' latent cache): tests/test_reliability_data.py and
tests/test_reliability_midrun.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.checkpoints import checkpoint_ok
from bench.store import LOCK_NAME, read_metrics

REPO = Path(__file__).resolve().parents[1]

# The driver registers a mini suite (like tests/test_harness.py's MINI, smaller) and runs `invoke bench`'s
# run_bench. With KILL="desc:min_done:nth" it stops inside the nth progress update of the loop whose
# description contains `desc` once `min_done` items are done: logs a marker line and sleeps until killed.
DRIVER = """
import dataclasses, os, sys, time
import torch
torch.set_num_threads(1)  # bit for bit: multi-threaded CPU kernels may split float sums differently per process
from bench import suites
from bench.progress import Progress, log

o = suites.SMOKE.overrides["repa"]
suites.SUITES["rmini"] = dataclasses.replace(
    suites.SMOKE, name="rmini", backbones=("repa",), n_train_per_class=8, n_ref_per_class=8, eval_epochs=(3,),
    n_eval_samples=32, sample_batch_size=8, throughput_batch_sizes=(4,), linear_probe=False,
    overrides={"repa": {**o, "stage1_epochs": 1, "epochs": 3, "batch_size": 16, "stage1_batch_size": 16,
                        "sampler": dict(mode="sde", steps=4, guidance=1.8, guidance_interval=(0.0, 0.7))}})
if os.environ.get("KILL"):
    desc, min_done, nth = os.environ["KILL"].split(":")
    real, seen = Progress.update, [0]

    def update(self, n=1, **info):
        real(self, n, **info)
        if desc in self.desc and self.done > int(min_done):
            seen[0] += 1
            if seen[0] == int(nth):
                log.info(f"KILL-POINT {self.desc} {self.done}/{self.total}")
                time.sleep(600)

    Progress.update = update
from bench.runner import run_bench
sys.exit(run_bench("rmini", "repa", sys.argv[1], seed=3, run_id="r"))
"""


def _start(out: Path, kill: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL": kill or ""}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _kill_at(out: Path, kill: str, timeout: float = 600) -> str:
    """Run until the log shows the kill point, SIGKILL it, return the log of that attempt."""
    log = out / "rmini" / "r" / "log.txt"
    start = log.stat().st_size if log.exists() else 0
    p = _start(out, kill)
    t0 = time.time()
    try:
        while True:
            text = log.read_text()[start:] if log.exists() else ""
            if "KILL-POINT" in text:
                break
            assert p.poll() is None, f"run ended before reaching {kill}: {p.stderr.read()[-3000:]}"
            assert time.time() - t0 < timeout, f"{kill} not reached in {timeout}s"
            time.sleep(0.2)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert (out / "rmini" / "r" / LOCK_NAME).exists()  # nothing cleaned up: the next run takes the lock over
    return text


def _values(out: Path) -> dict:
    rows = read_metrics(out / "rmini" / "r" / "metrics.jsonl")
    assert any(r["phase"] == "run" for r in rows), "the run did not finish"
    return {(r["phase"], r["metric"], r["epoch"]): r["value"] for r in rows if r["phase"] in ("stage1", "train", "eval")}  # fmt: skip


def test_sigkill_at_every_stage_resumes_to_the_same_metrics(tmp_path):
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    ref = _start(ref_out)  # runs alongside the chain below
    try:
        _chain(out, ref)
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    got, want = _values(out), _values(ref_out)
    assert {k for k in want if k[1] == "fid"} == {("eval", "fid", 3)}
    assert {k: v for k, v in got.items() if k[0] == "stage1"} == {
        k: v for k, v in want.items() if k[0] == "stage1"
    }
    assert got == want


def _count(out: Path, phase: str, epoch: int | None = None) -> int:
    """Rows of `phase` (optionally of one epoch) in metrics.jsonl: how often that work was logged."""
    rows = read_metrics(out / "rmini" / "r" / "metrics.jsonl")
    return sum(r["phase"] == phase and (epoch is None or r["epoch"] == epoch) for r in rows)


def _chain(out: Path, ref: subprocess.Popen) -> None:
    # asserts read the store, not the trainer's log wording; the kill points match progress descriptions
    run_dir = out / "rmini" / "r"

    log1 = _kill_at(out, "stage 1 (tokenizer):0:1")
    assert "KILL-POINT [repa] stage 1 (tokenizer)" in log1
    assert _count(out, "stage1") == 0 and _count(out, "train") == 0

    log2 = _kill_at(out, "stage 2 (generator):128:1")  # epoch 3 of 3 (64 images an epoch), checkpoint at 2
    assert "taking over stale lock" in log2
    assert _count(out, "train", 2) > 0 and _count(out, "train", 3) == 0
    n_stage1, n_epoch1 = _count(out, "stage1"), _count(out, "train", 1)

    stage1 = [p for p in run_dir.rglob("*.pt") if "_shared" in p.parts or p.name.startswith("stage1")]
    assert stage1
    for p in stage1:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a flipped bit on disk: its checksum no longer matches
        p.write_bytes(bytes(data))
        assert not checkpoint_ok(p)

    log3 = _kill_at(out, "sample epoch 3:0:1")
    assert "KILL-POINT [repa] sample epoch 3" in log3 and " 8/32" in log3
    assert _count(out, "stage1") == 2 * n_stage1  # the corrupt tokenizer was trained again, not used
    assert all(checkpoint_ok(p) for p in stage1)
    assert _count(out, "train", 1) == n_epoch1  # the generator resumed from its checkpoint, not from scratch

    log4 = _kill_at(out, "features smoke:0:2")  # 1st: the reference set, 2nd: epoch 3's samples
    assert "KILL-POINT features smoke 32/32" in log4
    assert _count(out, "stage1") == 2 * n_stage1 and _count(out, "train", 1) == n_epoch1

    last = _start(out)
    _, err = last.communicate(timeout=600)
    assert last.returncode == 0, err[-3000:]
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    assert not (run_dir / LOCK_NAME).exists()
