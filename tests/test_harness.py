"""The harness end to end on a miniature of the smoke suite, plus the up-front validation of `invoke bench`."""

import dataclasses
import json
import subprocess
import sys

import pytest

from bench import suites
from bench.report import main as report_main
from bench.runner import run_bench
from bench.store import RunStore, read_metrics
from bench.train import BackboneRun

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _invoke(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--suite", "nosuch"], "unknown suite 'nosuch'"),
        (["bench", "--backbones", "repa,dalle"], "unknown backbone(s) dalle"),
        (["bench", "--out", "/proc/genbench-cannot-write"], "is not writable"),
        (["bench", "--suite", "imagenet256"], "GENBENCH_IMAGENET"),
    ],
)
def test_bench_rejects_bad_input_before_any_work(tmp_path, args, message):
    env_out = [] if "--out" in args else ["--out", str(tmp_path / "r")]
    p = _invoke(*args, *env_out)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert message in err and err.startswith("error:")
    assert (
        "imagenet256" in args or len(err.splitlines()) == 1
    )  # one line (imagenet256 lists each missing input)
    assert not (tmp_path / "r" / "smoke").exists()  # nothing was started


def test_store_appends_atomically_after_a_torn_line(tmp_path):
    store = RunStore(tmp_path, "s", "r", seed=0, config={"a": 1}, device="cpu")
    store.log_metric("b", "eval", "fid", 3.0, epoch=1)
    with open(store.metrics_path, "a") as f:
        f.write('{"run_id": "r", "metric": "fi')  # killed mid-write
    store.log_metric("b", "eval", "fid", 2.0, epoch=2)
    rows = read_metrics(store.metrics_path)
    assert [r["value"] for r in rows] == [3.0, 2.0]
    with pytest.raises(ValueError, match="different configuration"):
        RunStore(tmp_path, "s", "r", seed=0, config={"a": 2}, device="cpu")
    with pytest.raises(ValueError, match="unknown metric field"):
        store.log_metric("b", "eval", "fid", 1.0, colour="red")


MINI = dataclasses.replace(
    suites.SMOKE,
    name="mini",
    n_train_per_class=16,
    n_ref_per_class=16,
    eval_epochs=(1, 3),
    n_eval_samples=64,
    sample_batch_size=64,
    throughput_batch_sizes=(8,),
    linear_probe=False,
    overrides={"repa": {**suites.SMOKE.overrides["repa"], "stage1_epochs": 1, "epochs": 3, "batch_size": 32, "stage1_batch_size": 32,
                        "sampler": dict(mode="sde", steps=6, guidance=1.8, guidance_interval=(0.0, 0.7))}},
)  # fmt: skip


@pytest.fixture
def mini_suite(monkeypatch):
    monkeypatch.setitem(suites.SUITES, "mini", MINI)
    return MINI


def _values(root):
    """(phase, metric, epoch) -> value of the training/eval rows; a resumed run's repeated rows keep the last."""
    rows = read_metrics(next((root / "mini").iterdir()) / "metrics.jsonl")
    return {
        (r["phase"], r["metric"], r["epoch"]): r["value"]
        for r in rows
        if r["phase"] in ("stage1", "train", "eval")
    }


def test_mini_run_is_deterministic_resumable_and_reportable(tmp_path, mini_suite):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_bench("mini", "repa", str(a), seed=3) == 0
    run_dir = next((a / "mini").iterdir())
    rows = read_metrics(run_dir / "metrics.jsonl")
    fid = [r for r in rows if r["metric"] == "fid"]
    assert [r["epoch"] for r in fid] == [1, 3] and all(
        r["extractor"] == "smoke" and r["n_samples"] == 64 for r in fid
    )
    assert {"train_img_per_s", "sample_img_per_s", "params"} <= {
        r["metric"] for r in rows if r["phase"] == "throughput"
    }
    env = json.loads((run_dir / "env.json").read_text())
    assert {"git_sha", "git_dirty", "torch", "device"} <= set(env)
    assert (run_dir / "log.txt").read_text().count("eval epoch") == 2

    # same seed, fresh store: identical values
    assert run_bench("mini", "repa", str(b), seed=3) == 0
    assert _values(a) == _values(b)

    # killed during epoch 3's evaluation (checkpointed before it), then resumed: only the evaluation reruns, same values
    c = tmp_path / "c"
    real_evaluate = BackboneRun.evaluate

    def dying_evaluate(self, epoch, *args):
        if epoch == 3:
            raise KeyboardInterrupt
        return real_evaluate(self, epoch, *args)

    BackboneRun.evaluate = dying_evaluate
    try:
        with pytest.raises(KeyboardInterrupt):
            run_bench("mini", "repa", str(c), seed=3)
    finally:
        BackboneRun.evaluate = real_evaluate
    assert run_bench("mini", "repa", str(c), seed=3) == 0
    assert "resumed after epoch" in (next((c / "mini").iterdir()) / "log.txt").read_text()
    assert _values(c) == _values(a)

    # the report is rebuilt from the store alone
    assert report_main(["--results", str(a), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert "repa" in (tmp_path / "rep" / "mini" / "summary.md").read_text()
