"""`invoke bench --recipe ... --stop-after tokenizer`: a tokenizer study without the generator. The recipe
override enters config.json (so the run id); the stopped run holds only stage 1 and its floor rows, and the same
command without --stop-after continues it (stage 1 loaded, floor not measured twice) to a complete run."""

import json

from bench.runner import main
from bench.store import read_metrics

ARGV = ["--suite", "smoke", "--backbones", "repa", "--epochs", "1", "--num-samples", "32", "--sample-steps", "2",
        "--jobs", "1", "--recipe", "repa.stage1_epochs=1,repa.stage1_lr=1e-3"]  # fmt: skip


def test_stop_after_tokenizer_then_continue(tmp_path):
    argv = ARGV + ["--out", str(tmp_path)]
    assert main(argv + ["--stop-after", "tokenizer"]) == 0
    (run,) = (tmp_path / "smoke").iterdir()
    recipe = json.loads((run / "config.json").read_text())["backbones"]["repa"]["recipe"]
    assert recipe["stage1_epochs"] == 1 and recipe["stage1_lr"] == 1e-3
    rows = read_metrics(run / "metrics.jsonl")
    assert {r["phase"] for r in rows} == {"stage1", "tokenizer"}  # no generator, evaluation or run row
    (rfid,) = [r["value"] for r in rows if r["metric"] == "rfid"]
    assert main(argv) == 0
    assert [p.name for p in (tmp_path / "smoke").iterdir()] == [run.name]  # the same run, continued
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["value"] for r in rows if r["metric"] == "rfid"] == [rfid]  # measured once
    assert any(r["phase"] == "eval" and r["metric"] == "fid" for r in rows)
    assert any(r["phase"] == "run" for r in rows)
    assert "[repa] stage 1: loaded" in (run / "log.txt").read_text()


def test_stop_after_tokenizer_in_worker_processes(tmp_path):
    """With --jobs 2 each worker stops after its floor; the parent counts the floor rows as done (exit 0) and
    measures no throughput (there is no generator to time)."""
    argv = ["--suite", "smoke", "--backbones", "repa,fae", "--epochs", "1", "--num-samples", "32", "--jobs", "2",
            "--recipe", "repa.stage1_epochs=1,fae.stage1_epochs=1", "--stop-after", "tokenizer", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (run,) = (tmp_path / "smoke").iterdir()
    rows = read_metrics(run / "metrics.jsonl")
    assert {r["backbone"] for r in rows if r["metric"] == "rfid"} == {"repa", "fae"}
    assert not any(r["phase"] in ("train", "eval", "throughput", "run") for r in rows)
