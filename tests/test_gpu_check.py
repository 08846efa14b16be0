"""scripts/gpu_check.sh, the one GPU session's script, in its CPU dry mode (GENBENCH_GPU_CHECK_DRY=1): the
same steps (preflight, kernel latency, throughput suite, tables, goals) at tiny sizes, into a temp dir, so the
script is known to run before a GPU session spends its minutes on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, GENBENCH_GPU_CHECK_DRY="1", GENBENCH_GPU_CHECK_OUT=str(tmp_path), PYTHON=sys.executable,
               GENBENCH_GPU_CHECK_BACKBONES="vavae_lightningdit", GENBENCH_GPU_CHECK_KERNEL_ARGS="--no-compile")  # fmt: skip
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    log = (tmp_path / "reports" / "imagenet256-throughput" / "gpu_check.log").read_text()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-3000:]
    kernels = json.loads((tmp_path / "reports" / "kernels" / "latency_cpu.json").read_text())
    assert kernels["rows"] and not kernels["errors"] and kernels["shapes"] == "tiny"
    thr = tmp_path / "reports" / "imagenet256-throughput"
    md = (thr / "throughput.md").read_text()
    assert "## Goals" in md and "## Triton kernel goals" in md and "tiny preset" in md
    rows = [json.loads(x) for x in (thr / "throughput_rows.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} >= {"build", "train", "sample"}
    assert all(r["status"] == "ok" for r in rows)
    assert not (REPO / "reports" / "kernels" / "latency_cpu.json").exists(), (
        "a dry run never writes into reports/"
    )
