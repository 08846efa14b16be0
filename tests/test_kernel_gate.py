"""The static kernel gate: compile for sm_90 on the CPU, compare with a baseline, catch a planted regression;
and the latency gate's decision rule on synthetic timings (the timings themselves need a GPU)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip(
        "the static gate compiles kernels; TRITON_INTERPRET=1 makes them interpreted", allow_module_level=True
    )

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from baselines.ops.op_swiglu import kernel as swiglu_kernel  # noqa: E402
from bench import kernels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "reports" / "kernels" / "static_sm90.json"


@triton.jit
def swiglu_fwd_extra_work(Hin, OUT, N, BLOCK: tl.constexpr):
    # The planted regression: swiglu_fwd_kernel's signature and result shape, plus four more gate rounds.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    a = tl.load(Hin + row * 2 * N + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(Hin + row * 2 * N + N + cols, mask=mask, other=0.0).to(tl.float32)
    for _ in tl.static_range(4):
        a = a * tl.sigmoid(a) + g
    tl.store(OUT + row * N + cols, (a * tl.sigmoid(a) * g).to(OUT.dtype.element_ty), mask=mask)


def test_planted_regression_fails_the_gate(tmp_path, monkeypatch, capsys):
    only = ["--only", "swiglu/*/fp32/*"]
    base = tmp_path / "base.json"
    assert kernels.main(["--static", *only, "--json", str(base)]) == 0
    saved = json.loads(base.read_text())["kernels"]
    assert set(saved) == {"swiglu/lightningdit_xl1/fp32/fwd", "swiglu/lightningdit_xl1/fp32/bwd"}
    assert all(v["registers"] > 0 and v["sass_instructions"] > 50 for v in saved.values())

    assert kernels.main(["--static", *only, "--compare", str(base)]) == 0, (
        "same code must pass its own baseline"
    )
    capsys.readouterr()

    monkeypatch.setattr(swiglu_kernel, "swiglu_fwd_kernel", swiglu_fwd_extra_work)
    assert kernels.main(["--static", *only, "--compare", str(base)]) == 1
    out = capsys.readouterr().out
    fwd_line = next(line for line in out.splitlines() if "fp32/fwd" in line)
    assert "REGRESSION" in fwd_line and "sass_instructions" in fwd_line, out
    bwd_line = next(line for line in out.splitlines() if "fp32/bwd" in line)
    assert bwd_line.rstrip(" |").endswith("ok"), "the untouched backward kernel must still pass"
    assert "static gate: FAIL" in out


def test_committed_baseline_passes():
    """What CI gates: every registered kernel configuration against reports/kernels/static_sm90.json."""
    base = json.loads(BASELINE.read_text())
    if base["triton"] != triton.__version__:
        pytest.skip(f"baseline made with triton {base['triton']}, this is {triton.__version__}: re-baseline")
    assert kernels.main(["--static", "--compare", str(BASELINE)]) == 0


def _entry(**m):
    return dict(
        {
            "registers": 40,
            "spill_instructions": 0,
            "local_bytes": 0,
            "shared_bytes": 0,
            "sass_instructions": 200,
        },
        **m,
    )


@pytest.mark.parametrize(
    "change,fails",
    [
        (dict(registers=41), False),  # +2.5%: inside the tolerance
        (dict(sass_instructions=209), False),  # +4.5%
        (dict(sass_instructions=211), True),  # +5.5%
        (dict(registers=30, sass_instructions=150), False),  # improvements pass
        (dict(spill_instructions=2), True),  # a spill appears
        (dict(local_bytes=8), True),
        (dict(shared_bytes=16), True),  # from zero
    ],
)
def test_compare_static_rule(change, fails):
    rows, failed = kernels.compare_static({"kernels": {"k": _entry(**change)}}, {"kernels": {"k": _entry()}})
    assert failed is fails and rows[0][-1].startswith("REGRESSION") is fails


def test_compare_static_coverage():
    rows, failed = kernels.compare_static({"kernels": {"new": _entry()}}, {"kernels": {"gone": _entry()}})
    assert failed and {r[0]: r[-1] for r in rows} == {"gone": "MISSING (re-baseline)", "new": "new"}


def _latency(times):
    return {
        "rows": [
            {"key": "op/case/bf16/fwd", "triton_ms": float(np.median(times)), "triton_times_ms": list(times)}
        ]
    }


def test_latency_gate_needs_ratio_and_significance():
    rng = np.random.default_rng(0)
    base = 0.010 * rng.lognormal(0, 0.03, 400)  # 10 us kernel with 3% jitter
    same = 0.010 * rng.lognormal(0, 0.03, 400)
    _, failed = kernels.compare_latency(_latency(same), _latency(base))
    assert not failed, "noise alone must not trip the gate"
    _, failed = kernels.compare_latency(_latency(base * 1.10), _latency(base))
    assert failed, "a planted 10% slowdown must be caught"
    rows, failed = kernels.compare_latency(_latency(same * 1.03), _latency(base))
    assert not failed and rows[0][-1] == "ok", "3% is inside the tolerance even when significant"
    # 3 runs each: even a complete separation has p = 1/20 > 0.01, so 19% slower is "not significant"
    rows, failed = kernels.compare_latency(
        _latency([0.0119, 0.0120, 0.0121]), _latency([0.0099, 0.0100, 0.0101])
    )
    assert not failed and rows[0][-1] == "slower, not significant" and rows[0][3] == "1.200"


def test_latency_command_without_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert kernels.main(["--latency"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_usage_errors(tmp_path):
    assert kernels.main(["--static", "--compare", str(tmp_path / "missing.json")]) == 2
    assert kernels.main(["--static", "--only", "no_such_op/*"]) == 2
