"""`invoke study` (bench.studies.patches64) end to end on a fake fast suite: two seeds into one store, bootstrap
rows within each seed, the report with intervals, curves, grids and the budget; finished seeds skipped; a store
at another budget refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import suites
from bench.errors import OptionError
from bench.store import read_metrics
from bench.studies.patches64 import parse_seeds, run_study

TINY = dataclasses.replace(
    suites.SMOKE,
    name="tinystudy",
    backbones=("tarflow",),
    n_train_per_class=8,
    n_ref_per_class=8,
    eval_epochs=(1, 3),
    n_eval_samples=32,
    sample_batch_size=32,
    throughput_batch_sizes=(8,),
    linear_probe=False,
    overrides={"tarflow": {**suites.SMOKE.overrides["tarflow"], "epochs": 3, "batch_size": 32}},
)


@pytest.fixture
def tiny_suite(monkeypatch):
    monkeypatch.setitem(suites.SUITES, TINY.name, TINY)
    return TINY


def test_parse_seeds():
    assert parse_seeds("0,1,2") == parse_seeds("0 1 2") == [0, 1, 2]
    for bad in ("", "0,0", "a", "-1"):
        with pytest.raises(OptionError, match="--seeds"):
            parse_seeds(bad)


def test_study_end_to_end(tmp_path, tiny_suite):
    store, rep = tmp_path / "store", tmp_path / "reports"
    # budget lowered below the suite's (3 epochs, 32 samples): 2 epochs, 24 samples
    assert run_study("tinystudy", "0,1", out=str(store), reports=str(rep), epochs=2, num_samples=24, n_boot=20,
                     command="invoke study --suite tinystudy --seeds 0,1 --epochs 2 --num-samples 24") == 0  # fmt: skip
    runs = sorted((store / "tinystudy").glob("seed*"))
    assert [r.name.split("-")[0] for r in runs] == ["seed0", "seed1"]
    for r in runs:
        rows = read_metrics(r / "metrics.jsonl")
        fid = {x["epoch"]: x for x in rows if x["metric"] == "fid"}
        assert sorted(fid) == [1, 2] and all(x["n_samples"] == 24 for x in fid.values())
        ci = [x for x in rows if x["metric"] in ("fid_ci_low", "fid_ci_high", "fid_boot_std")]
        assert len(ci) == 6  # three rows per evaluation
        for ep, f in fid.items():
            lo, hi = (next(x["value"] for x in ci if x["metric"] == m and x["epoch"] == ep) for m in ("fid_ci_low", "fid_ci_high"))  # fmt: skip
            assert lo < f["value"] < hi
    study = json.loads((store / "tinystudy" / "study.json").read_text())
    assert study["options"] == {"epochs": 2, "num_samples": 24} and study["seeds"] == [0, 1]
    assert study["budget"]["eval_epochs"] == [1, 2] and study["suite_default"]["eval_epochs"] == [1, 3]

    out = rep / "tinystudy"
    md = (out / "summary.md").read_text()
    assert "± " in md and "(n=2)" in md  # leaderboard: interval across the two seeds
    per_seed = md.split("## Final FID per seed")[1].split("##")[0]
    assert per_seed.count("[") >= 2  # one bootstrap interval per seed
    budget = md.split("## Budget")[1].split("##")[0]
    assert "--epochs 2, --num-samples 24" in budget and "1, 2" in budget
    assert "Study: `invoke study --suite tinystudy --seeds 0,1 --epochs 2 --num-samples 24`" in budget
    assert (
        "budget 2 epochs (evaluations at [1, 2]), 24 samples against the suite's default 3 epochs, 32"
        in budget
    )
    for f in ("fid_vs_epoch.png", "samples.png", "grids/tarflow.png", "index.html", "summary.tex"):
        assert (out / f).is_file(), f

    # run again: both seeds are finished and skipped (no new rows), the report is rebuilt
    before = [len(read_metrics(r / "metrics.jsonl")) for r in runs]
    assert run_study("tinystudy", "0,1", out=str(store), reports=str(rep), epochs=2, num_samples=24, n_boot=20,
                     make_plots=False) == 0  # fmt: skip
    assert [len(read_metrics(r / "metrics.jsonl")) for r in runs] == before
    # another budget into the same store would mix budgets in one report
    with pytest.raises(OptionError, match="another budget"):
        run_study("tinystudy", "0,1", out=str(store), reports=str(rep), epochs=3, make_plots=False)
