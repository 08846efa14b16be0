"""Kernel latency: every registered Triton op against its eager reference and torch.compile(reference), at the
papers' shapes (or tiny ones on CPU, where the Triton side runs in the interpreter), forward and, for ops
that train, backward. Median and interquartile range over repeats (`triton.testing.do_bench`, L2 flushed
before each call); percent of the measured copy bandwidth (memory-bound ops) or of the measured matmul peak
(compute-bound ops); the goals (>= 1.0x torch.compile, >= 1.5x eager, memory-bound >= 80% of copy bandwidth)
per row, met or missed with the numbers. `compare_latency` gates against a saved run: a regression is a
median ratio above 5% AND a one-sided Mann-Whitney U test on the raw timings agreeing (p < 0.01).
"""

from __future__ import annotations

import fnmatch
import json
import sys
import time
from pathlib import Path

import torch

from baselines.ops.registry import DTYPES, OPS, Case, element_size
from bench.kernels.common import REPORTS, TOLERANCE, iqr, median, table, write_json
from bench.kernels.roofline import device_roofline, slug, timer_all

ALPHA = 0.01  # significance level of the latency test
GOALS = {"x_compile": 1.0, "x_eager": 1.5, "copy_bw_pct": 80.0}
IMPLS = ("triton", "eager", "compile")


def tiny_shape(shape: dict) -> dict:
    """A CPU-sized version of a paper shape: batch 2, every other dimension at most 16 (even, so RoPE and
    SwiGLU stay valid); flags (softplus) untouched."""
    out = {}
    for k, v in shape.items():
        out[k] = v if k == "softplus" else min(v, 2) if k == "B" else min(v, 16)
    return out


def op_cases(op, shapes: str) -> list[Case]:
    if shapes == "paper":
        return list(op.cases)
    return [Case(c.name, tiny_shape(c.shape)) for c in op.cases]


def _bench_fns(op, args, direction: str, impls: tuple[str, ...]):
    """Zero-argument closures per implementation (setup, incl. the forward of a backward measurement,
    happens here and is not timed), plus their outputs for the accuracy check."""
    table_ = {"triton": op.triton, "eager": op.reference}
    if "compile" in impls:
        table_["compile"] = torch.compile(op.reference, dynamic=False)
    fns, outs = {}, {}
    for name in impls:
        fn = table_[name]
        if direction == "fwd":
            with torch.no_grad():
                outs[name] = fn(*args)
            fns[name] = lambda fn=fn: fn(*args)
            continue
        leaves = [
            a.detach().requires_grad_(i in op.grad_args) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)
        ]
        wrt = [leaves[i] for i in op.grad_args]
        out = fn(*leaves)
        out = out[0] if isinstance(out, tuple) else out  # affine: z (logdet's gradient is the same kernel)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        outs[name] = torch.autograd.grad(out, wrt, grad, retain_graph=True)
        fns[name] = lambda out=out, wrt=wrt, grad=grad: torch.autograd.grad(out, wrt, grad, retain_graph=True)
    return fns, outs


def _rel_err(a, b) -> float:
    a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
    return max(
        float((x.float() - y.float()).abs().max() / (y.float().abs().max() + 1e-6)) for x, y in zip(a, b)
    )


def row_goals(row: dict) -> dict:
    """Each goal of this row: target, measured value, met. Memory-bound rows also carry the bandwidth goal."""
    goals = {}
    if row.get("speedup_compile") is not None:
        v = row["speedup_compile"]
        goals["x_compile"] = {"target": GOALS["x_compile"], "value": v, "met": v >= GOALS["x_compile"]}
    v = row["speedup_eager"]
    goals["x_eager"] = {"target": GOALS["x_eager"], "value": v, "met": v >= GOALS["x_eager"]}
    if row["bound"] == "memory":
        v = row["pct_of_bound"]
        goals["copy_bw_pct"] = {"target": GOALS["copy_bw_pct"], "value": v, "met": v >= GOALS["copy_bw_pct"]}
    return goals


def goal_text(goals: dict) -> str:
    missed = [f"{k} {g['value']:.2f} < {g['target']}" for k, g in goals.items() if not g["met"]]
    return "met" if not missed else "MISSED: " + "; ".join(missed)


def bench_row(
    op, case, dtype, direction: str, device, roof: dict, timer=None, impls=IMPLS, rep_ms=100
) -> dict:
    """Time one op x case x dtype x direction; roofline = max(bytes / copy bandwidth, flops / peak)."""
    device = torch.device(device)
    timer = timer or (lambda fn: timer_all(fn, device, 25, rep_ms))
    dname = next(k for k, v in DTYPES.items() if v == dtype)
    args = op.inputs(case.shape, dtype, device, torch.Generator().manual_seed(0))
    fns, outs = _bench_fns(op, args, direction, impls)
    err = _rel_err(outs["triton"], outs["eager"])
    times = {k: timer(f) for k, f in fns.items()}
    med = {k: median(v) for k, v in times.items()}
    nbytes = op.bytes(case.shape, element_size(dtype))[direction]
    flops = op.flops(case.shape)[direction]
    t_mem, t_flop = nbytes / roof["copy_bandwidth"], flops / roof[f"peak_flops_{dname}"]
    compiled = med.get("compile")
    row = {
        "key": f"{op.name}/{case.name}/{dname}/{direction}", "op": op.name, "case": case.name, "dtype": dname,
        "direction": direction, "shape": case.shape, "bytes": nbytes, "flops": flops, "device": str(device),
        "triton_ms": med["triton"], "eager_ms": med["eager"], "compile_ms": compiled,
        **{f"{k}_iqr_ms": iqr(v) for k, v in times.items()},
        "repeats": {k: len(v) for k, v in times.items()},
        "speedup_eager": med["eager"] / med["triton"],
        "speedup_compile": compiled / med["triton"] if compiled is not None else None,
        "bound": "memory" if t_mem >= t_flop else "compute",
        "pct_of_bound": 100 * max(t_mem, t_flop) * 1e3 / med["triton"],
        "achieved_gbps": nbytes / (med["triton"] * 1e-3) / 1e9,
        "rel_err": err, "accurate": err <= (2e-2 if dtype == torch.bfloat16 else 1e-4),
        "triton_times_ms": times["triton"],
    }  # fmt: skip
    row["roofline_pct"] = row["pct_of_bound"]  # the name earlier reports used
    row["goals"] = row_goals(row)
    return row


def latency_keys(patterns, shapes: str, dtypes) -> list[tuple]:
    out = []
    for op in OPS.values():
        for case in op_cases(op, shapes):
            for dname in dtypes:
                for direction in ("fwd", "bwd") if op.grad_args else ("fwd",):
                    key = f"{op.name}/{case.name}/{dname}/{direction}"
                    if not patterns or any(fnmatch.fnmatchcase(key, p) for p in patterns):
                        out.append((key, op, case, DTYPES[dname], direction))
    return out


def environment(device: torch.device) -> dict:
    import triton

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, sms = props.name, props.multi_processor_count
    else:
        name, sms = "cpu", None
    return {"device": name, "sm_count": sms, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda}  # fmt: skip


def latency_report(patterns=None, log=print, device="cuda", shapes="paper", dtypes=("bf16", "fp32"),
                   rep_ms=100, impls=IMPLS, on_row=None, deadline=None) -> dict:  # fmt: skip
    """All rows; a row that raises is recorded with its error (the others still run); rows past `deadline`
    (time.monotonic()) are recorded as skipped. `on_row(report)` after each row: partial results."""
    device = torch.device(device)
    roof = device_roofline(device, quick=rep_ms < 100)
    log(
        f"copy bandwidth {roof['copy_bandwidth'] / 1e9:.0f} GB/s, bf16 peak {roof['peak_flops_bf16'] / 1e12:.1f} TFLOP/s"
    )
    report = {"kind": "genbench.kernels.latency", "shapes": shapes, "goals": GOALS, **environment(device), **roof,
              "rows": [], "errors": [], "skipped": []}  # fmt: skip
    keys = latency_keys(patterns, shapes, dtypes)
    for i, (key, op, case, dtype, direction) in enumerate(keys):
        if deadline is not None and time.monotonic() > deadline:
            report["skipped"].append(key)
            continue
        try:
            row = bench_row(op, case, dtype, direction, device, roof, impls=impls, rep_ms=rep_ms)
        except Exception as e:  # recorded and reported; one broken op must not hide the others' numbers
            report["errors"].append({"key": key, "error": f"{type(e).__name__}: {e}"})
            log(f"[{i + 1}/{len(keys)}] {key}: ERROR {type(e).__name__}: {e}")
            continue
        report["rows"].append(row)
        sc = row["speedup_compile"]
        log(f"[{i + 1}/{len(keys)}] {key}: {row['triton_ms'] * 1e3:.1f} us, x{row['speedup_eager']:.2f} eager, "
            f"x{sc if sc is not None else float('nan'):.2f} compile, {row['pct_of_bound']:.0f}% of {row['bound']} "
            f"bound: {goal_text(row['goals'])}")  # fmt: skip
        if on_row:
            on_row(report)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if report["skipped"]:
        log(f"skipped {len(report['skipped'])} rows: time budget spent")
    return report


CPU_NOTE = (
    "**CPU dry run: the Triton side runs in the interpreter, so these timings test the measurement, "
    "not the kernels.**\n\n"
)


def _us(ms) -> str:
    return "-" if ms is None else f"{ms * 1e3:.1f}"


def _med_iqr(r, impl) -> str:
    ms = r[f"{impl}_ms"]
    return "-" if ms is None else f"{ms * 1e3:.1f} ± {r[f'{impl}_iqr_ms'] * 1e3 / 2:.1f}"


def op_summary(report: dict) -> list[list]:
    """Per op: rows that met every goal, and what follows for the model path."""
    out = []
    for name in dict.fromkeys(r["op"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["op"] == name]
        bad = [r["key"].split("/", 1)[1] + " (" + goal_text(r["goals"])[8:] + ")" for r in rows
               if goal_text(r["goals"]) != "met"]  # fmt: skip
        verdict = ("keep in the model path" if not bad else
                   "MISSED: fix the kernel or route the op to torch (GENBENCH_OPS_TORCH=" + name + ")")  # fmt: skip
        out.append([name, f"{len(rows) - len(bad)}/{len(rows)}", verdict, "; ".join(bad) or "-"])
    return out


def latency_markdown(report: dict, command: str = "") -> str:
    rows = [
        [r["op"], r["case"], r["dtype"], r["direction"], _med_iqr(r, "triton"), _med_iqr(r, "eager"),
         _med_iqr(r, "compile"), f"{r['speedup_eager']:.2f}",
         "-" if r["speedup_compile"] is None else f"{r['speedup_compile']:.2f}", f"{r['achieved_gbps']:.0f}",
         f"{r['pct_of_bound']:.0f}% ({r['bound']})", "ok" if r["accurate"] else f"FAIL {r['rel_err']:.1e}",
         goal_text(r["goals"])]
        for r in report["rows"]
    ]  # fmt: skip
    headers = ["op", "case", "dtype", "dir", "triton us", "eager us", "compile us", "x eager", "x compile",
               "GB/s", "% of bound", "accuracy", "goals"]  # fmt: skip
    text = (
        f"# Triton kernel latency on {report['device']} ({report['shapes']} shapes)\n\n"
        + (f"Command: `{command}`\n\n" if command else "")
        + f"torch {report['torch']}, triton {report['triton']}, CUDA {report['cuda']}. Measured copy bandwidth "
        f"{report['copy_bandwidth'] / 1e9:.0f} GB/s; matmul peak {report['peak_flops_bf16'] / 1e12:.1f} TFLOP/s "
        f"bf16, {report['peak_flops_fp32'] / 1e12:.1f} TFLOP/s fp32. Latency: median ± half the interquartile "
        "range of `triton.testing.do_bench` calls (L2 flushed before each); x eager / x compile = their median "
        "over Triton's; % of bound = max(bytes / copy bandwidth, flops / matmul peak) over the Triton median.\n"
        f"Goals: >= {GOALS['x_compile']}x torch.compile, >= {GOALS['x_eager']}x eager, memory-bound >= "
        f"{GOALS['copy_bw_pct']:.0f}% of the copy bandwidth.\n\n"
        + (CPU_NOTE if report["device"] == "cpu" else "")
        + table(headers, rows)
        + "\n\n## Per op\n\n"
        + table(["op", "rows meeting every goal", "model path", "missed"], op_summary(report))
        + "\n"
    )
    if report.get("errors"):
        text += "\n## Errors\n\n" + "\n".join(f"- {e['key']}: {e['error']}" for e in report["errors"]) + "\n"
    if report.get("skipped"):
        text += f"\nNot measured (time budget spent): {', '.join(report['skipped'])}\n"
    return text


def plot_latency(report: dict, path: Path) -> None:
    """Speed-up over eager and over torch.compile per kernel row (log scale), goals as lines; PNG + PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup_eager"] for r in rows], 0.4, label="x eager")
    ax.bar([x + 0.2 for x in xs], [r["speedup_compile"] or 0 for r in rows], 0.4, label="x torch.compile")
    ax.axhline(GOALS["x_eager"], ls="--", c="C0", lw=0.8)
    ax.axhline(GOALS["x_compile"], ls="--", c="C1", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), [r["key"].replace("/", "\n", 1) for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("speed-up of the Triton kernel")
    ax.set_title(f"Triton kernels on {report['device']} ({report['shapes']} shapes)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=130)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def compare_latency(current: dict, baseline: dict, tol: float = TOLERANCE, alpha: float = ALPHA):
    """A kernel regressed when median(now) / median(base) > 1 + tol AND a one-sided Mann-Whitney U test
    says its timings are stochastically larger (p < alpha): noise alone trips neither often, both rarely."""
    from scipy.stats import mannwhitneyu

    base = {r["key"]: r for r in baseline["rows"]}
    rows, failed = [], False
    for r in current["rows"]:
        b = base.get(r["key"])
        if b is None:
            rows.append([r["key"], "-", f"{r['triton_ms'] * 1e3:.1f}", "-", "-", "new"])
            continue
        ratio = median(r["triton_times_ms"]) / median(b["triton_times_ms"])
        p = float(mannwhitneyu(r["triton_times_ms"], b["triton_times_ms"], alternative="greater").pvalue)
        bad = ratio > 1 + tol and p < alpha
        failed |= bad
        status = "REGRESSION" if bad else "slower, not significant" if ratio > 1 + tol else "ok"
        rows.append([r["key"], f"{median(b['triton_times_ms']) * 1e3:.1f}",
                     f"{median(r['triton_times_ms']) * 1e3:.1f}", f"{ratio:.3f}", f"{p:.2g}", status])  # fmt: skip
    return rows, failed


def run_latency(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --latency needs a CUDA GPU (use --static on CPU, or --device cpu --shapes tiny with "
              "TRITON_INTERPRET=1 for a dry run)", file=sys.stderr)  # fmt: skip
        return 2
    if device.type == "cpu":
        from triton import knobs

        if not knobs.runtime.interpret:
            print("error: --latency --device cpu runs the Triton side in the interpreter: set TRITON_INTERPRET=1",
                  file=sys.stderr)  # fmt: skip
            return 2
        if args.shapes == "paper":
            print("error: --device cpu measures --shapes tiny only (the interpreter at paper shapes takes hours)",
                  file=sys.stderr)  # fmt: skip
            return 2
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or (device.type == "cpu" and "bf16" in dtypes):
        print(f"error: --dtypes {args.dtypes}: known {', '.join(DTYPES)} (cpu: fp32 only)", file=sys.stderr)
        return 2
    if not latency_keys(args.only or None, args.shapes, dtypes):
        print(f"error: --only {args.only} matches no kernel row", file=sys.stderr)
        return 2
    out = Path(args.json) if args.json else None
    deadline = time.monotonic() + args.budget_s if args.budget_s else None

    def save(report):
        if out:
            write_json(out, report)

    report = latency_report(args.only or None, lambda s: print(s, file=sys.stderr), device, args.shapes, dtypes,
                            args.rep_ms, IMPLS if not args.no_compile else ("triton", "eager"), save, deadline)  # fmt: skip
    if out is None:
        out = REPORTS / f"latency_{slug(report['device'])}.json"
    write_json(out, report)
    md = latency_markdown(report, getattr(args, "command", ""))
    out.with_suffix(".md").write_text(md)
    try:
        plot_latency(report, out.with_name(out.stem + "_speedup"))
    except ImportError as e:  # a bare GPU image without matplotlib still gets its table
        print(f"warning: plot skipped ({e})", file=sys.stderr)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    code = 0
    if not all(r["accurate"] for r in report["rows"]) or report["errors"]:
        print(
            "error: a Triton kernel disagrees with its reference, or a row failed (accuracy column / Errors)"
        )
        code = 1
    if args.compare:
        baseline = json.loads(Path(args.compare).read_text())
        if baseline.get("device") != report["device"]:
            print(f"warning: baseline device {baseline.get('device')} != {report['device']}", file=sys.stderr)
        rows, failed = compare_latency(report, baseline)
        print(table(["kernel", "base us", "now us", "ratio", "p (MWU)", "status"], rows))
        print(
            f"latency gate: {'FAIL' if failed else 'ok'} (regression = ratio > {1 + TOLERANCE:.2f} and p < {ALPHA})"
        )
        code = max(code, 1 if failed else 0)
    return code
