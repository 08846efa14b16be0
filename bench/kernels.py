"""Triton kernel costs: a static gate that needs no GPU, and GPU latency against eager, torch.compile and the
roofline. `invoke kernels` calls `main(argv)`; `python -m bench.kernels` does the same.

--static: every kernel launch of every registered op (`baselines/ops/registry.py`), case and dtype is
  compiled for a CUDA sm_90 target on the CPU (triton.compile with a GPUTarget, no driver), and the cubins
  are read with the cuobjdump and nvdisasm that ship in the triton wheel: registers, local memory and spill
  instructions, shared memory, SASS instruction count. These are deterministic for a given Triton/ptxas, so
  CI compares them with a committed baseline (reports/kernels/static_sm90.json): `--compare` exits 1 when a
  metric grows more than 5% or a spill appears. Re-baseline with `--static --json <that file>`.
--latency (CUDA only): `triton.testing.do_bench` (L2 flushed before each run) for the Triton op, the eager
  reference and `torch.compile(reference)` at paper shapes in bf16 and fp32, forward and (where the op
  trains) backward; percent of roofline against the measured copy bandwidth and matmul peak. `--compare`
  flags a regression only when the median ratio exceeds 5% AND a one-sided Mann-Whitney U test on the raw
  timings agrees (p < 0.01).
Exit codes: 0 ok, 1 regression (or a wrong result at paper shapes), 2 usage / environment error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from baselines.ops.registry import DTYPES, OPS, element_size

TOLERANCE = 0.05  # a metric may grow by at most 5%
ALPHA = 0.01  # significance level of the latency test
STATIC_METRICS = ("registers", "spill_instructions", "local_bytes", "shared_bytes", "sass_instructions")
SPILL_METRICS = ("spill_instructions", "local_bytes")
TARGET = ("cuda", 90, 32)  # H100 / H200
REPORTS = Path(__file__).resolve().parents[1] / "reports" / "kernels"


# --- static gate ------------------------------------------------------------------------------------------
def static_configs(patterns: list[str] | None = None):
    """(key, launch) for every kernel launch of every op x case x dtype; key = op/case/dtype/kernel.
    Inputs are meta tensors: planning needs shapes, strides and dtypes, never data."""
    out = []
    for op in OPS.values():
        for case in op.cases:
            for dname, dtype in DTYPES.items():
                args = op.inputs(case.shape, dtype, "meta", None)
                for lname, launch in op.launches(args):
                    key = f"{op.name}/{case.name}/{dname}/{lname}"
                    if not patterns or any(fnmatch.fnmatchcase(key, p) for p in patterns):
                        out.append((key, launch))
    return out


_TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int32: "i32",
    torch.int64: "i64",
}


def specialize(launch) -> tuple[dict, dict, dict]:
    """Signature, constexprs and attributes as Triton's launcher derives them from the arguments: pointers
    are 16-byte aligned (fresh torch allocations), ints equal to 1 become constants, ints divisible by 16
    get the divisibility hint."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    backend = make_backend(GPUTarget(*TARGET))
    all_names = list(launch.kernel.arg_names)
    names = [n for n in all_names if n not in launch.constexprs]
    assert len(names) == len(launch.args), f"{launch.kernel}: {len(launch.args)} args for parameters {names}"
    signature, constexprs, attrs = {}, dict(launch.constexprs), {}
    for name, value in zip(names, launch.args):
        idx = (all_names.index(name),)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            attrs[idx] = backend.parse_attr("D")
        elif isinstance(value, bool):
            signature[name] = "u1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[idx] = backend.parse_attr("D")
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: unsupported kernel argument {type(value).__name__}")
    for name in launch.constexprs:
        signature[name] = "constexpr"
    return {n: signature[n] for n in all_names}, constexprs, attrs


def compile_launch(launch):
    """Compile one launch for sm_90 on the CPU; returns triton's CompiledKernel (never loaded on a device)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if knobs.runtime.interpret:
        raise RuntimeError(
            "the static gate compiles kernels: unset TRITON_INTERPRET (it makes them interpreted)"
        )
    signature, constexprs, attrs = specialize(launch)
    src = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget(*TARGET), options={"num_warps": launch.num_warps})


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.is_file():
        return str(path)
    found = os.environ.get(f"TRITON_{name.upper()}_PATH")
    if found and Path(found).is_file():
        return found
    raise FileNotFoundError(
        f"{name} not found at {path} (it ships in the triton wheel); set TRITON_{name.upper()}_PATH"
    )


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack, local and static shared memory of the (single) kernel in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        )
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout))
    if "REG" not in usage:
        raise RuntimeError(f"cuobjdump -res-usage gave no register count:\n{res.stdout}")
    return {
        "registers": int(usage["REG"]),
        "stack_bytes": int(usage.get("STACK", 0)),
        "local_bytes": int(usage.get("LOCAL", 0)),
        "static_shared_bytes": int(usage.get("SHARED", 0)),
    }


def _text_section(elf: bytes) -> bytes:
    """The kernel's code: the one `.text.<name>` section of a Triton cubin (ELF64, little endian)."""
    if elf[:5] != b"\x7fELF\x02":
        raise ValueError("not an ELF64 cubin")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    secs = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = secs[shstrndx][4]
    texts = [
        elf[off : off + size]
        for name, _, _, _, off, size in secs
        if elf[names + name :].startswith(b".text.")
    ]
    if len(texts) != 1:
        raise ValueError(f"expected one kernel in the cubin, found {len(texts)}")
    return texts[0]


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def sass_opcodes(cubins: list[bytes]) -> list[list[str]]:
    """Opcodes of each cubin's kernel. One nvdisasm call on the concatenated code (raw sm_90a binary):
    its start-up, not the disassembly, is what costs, so this is ~40x faster than one call per kernel."""
    texts = [_text_section(c) for c in cubins]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"".join(texts))
        f.flush()
        res = subprocess.run(
            [_tool("nvdisasm"), "-b", "SM90a", "-ndf", f.name], capture_output=True, text=True, check=True
        )
    by_addr = {int(m.group(1), 16): m.group(2) for m in map(_SASS_LINE.match, res.stdout.splitlines()) if m}
    out, start = [], 0
    for t in texts:
        out.append([by_addr[a] for a in range(start, start + len(t), 16)])  # sm_90 instructions are 16 bytes
        start += len(t)
    return out


def cubin_metrics(cubins: list[bytes]) -> list[dict]:
    """Per cubin: resource usage, spill instructions (local loads/stores) and SASS count (NOPs excluded)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        usage = list(pool.map(resource_usage, cubins))
    for u, ops in zip(usage, sass_opcodes(cubins)):
        ops = [o for o in ops if o != "NOP"]
        u["spill_instructions"] = sum(o.split(".")[0] in ("STL", "LDL") for o in ops)
        u["sass_instructions"] = len(ops)
    return usage


def static_report(patterns: list[str] | None = None, log=print) -> dict:
    import triton
    from triton import knobs

    configs = static_configs(patterns)
    specs, compiled = [], {}
    for i, (key, launch) in enumerate(configs):
        signature, constexprs, _ = specialize(launch)
        ident = (launch.kernel.fn, json.dumps(signature), repr(sorted(constexprs.items())), launch.num_warps)
        if ident not in compiled:  # identical configurations (e.g. two cases of one width) compile once
            log(f"[{i + 1}/{len(configs)}] compiling {key}")
            compiled[ident] = compile_launch(launch)
        specs.append((key, launch, signature, constexprs, ident))
    metrics = dict(zip(compiled, cubin_metrics([k.asm["cubin"] for k in compiled.values()])))
    kernels = {}
    for key, launch, signature, constexprs, ident in specs:
        m = dict(metrics[ident])
        m["shared_bytes"] = int(compiled[ident].metadata.shared) + m.pop("static_shared_bytes")
        kernels[key] = {
            "kernel": launch.kernel.fn.__name__,
            "num_warps": launch.num_warps,
            "signature": ",".join(f"{k}:{v}" for k, v in signature.items() if v != "constexpr"),
            "constexprs": {k: _jsonable(v) for k, v in constexprs.items()},
            **m,
        }
    ptxas = knobs.nvidia.ptxas
    return {
        "kind": "genbench.kernels.static",
        "target": f"{TARGET[0]}:sm_{TARGET[1]}",
        "triton": triton.__version__,
        "ptxas": ptxas.version if ptxas is not None else None,
        "kernels": kernels,
    }


def _jsonable(v):
    return v if isinstance(v, (bool, int, float, str)) else repr(v)


def compare_static(current: dict, baseline: dict, tol: float = TOLERANCE) -> tuple[list[list], bool]:
    """Rows [kernel, metrics 'base -> now', status] and whether the gate fails. A baseline kernel missing
    from the current run fails too (gating coverage must not shrink silently); new kernels are listed."""
    rows, failed = [], False
    cur, base = current["kernels"], baseline["kernels"]
    for key in sorted(set(cur) | set(base)):
        if key not in cur:
            rows.append([key] + ["-"] * len(STATIC_METRICS) + ["MISSING (re-baseline)"])
            failed = True
            continue
        if key not in base:
            rows.append([key] + [str(cur[key][m]) for m in STATIC_METRICS] + ["new"])
            continue
        problems, cells = [], []
        for m in STATIC_METRICS:
            b, c = base[key].get(m, 0), cur[key][m]
            cells.append(str(c) if b == c else f"{b} -> {c}")
            if m in SPILL_METRICS and b == 0 and c > 0:
                problems.append(f"{m} appears")
            elif c > b * (1 + tol) and c > b:
                problems.append(f"{m} +{(c / b - 1) * 100:.0f}%" if b else f"{m} from 0")
        failed |= bool(problems)
        rows.append([key] + cells + ["REGRESSION: " + ", ".join(problems) if problems else "ok"])
    return rows, failed


def _table(headers: list[str], rows: list[list]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github")


def run_static(args) -> int:
    patterns = args.only or None
    report = static_report(patterns, log=lambda s: print(s, file=sys.stderr))
    if args.json:
        _write_json(Path(args.json), report)
    if not args.compare:
        rows = [[k] + [str(v[m]) for m in STATIC_METRICS] for k, v in report["kernels"].items()]
        print(_table(["kernel", *STATIC_METRICS], rows))
        return 0
    baseline = json.loads(Path(args.compare).read_text())
    if patterns:  # a partial run gates only the baseline entries it selected
        baseline = dict(
            baseline,
            kernels={
                k: v
                for k, v in baseline["kernels"].items()
                if any(fnmatch.fnmatchcase(k, p) for p in patterns)
            },
        )
    for field in ("triton", "ptxas", "target"):
        if baseline.get(field) != report.get(field):
            print(f"warning: baseline {field} {baseline.get(field)} != current {report.get(field)}; "
                  "counts change with the compiler, re-baseline after upgrading it", file=sys.stderr)  # fmt: skip
    rows, failed = compare_static(report, baseline)
    print(_table(["kernel", *STATIC_METRICS, "status"], rows))
    n_bad = sum(r[-1] != "ok" and r[-1] != "new" for r in rows)
    print(
        f"static gate: {'FAIL' if failed else 'ok'} ({n_bad} of {len(rows)} kernels regressed or missing, tolerance {TOLERANCE:.0%})"
    )
    return 1 if failed else 0


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


# --- latency (GPU) ---------------------------------------------------------------------------------------------
def device_roofline(device: torch.device) -> dict:
    """Measured copy bandwidth (bytes/s: read + write of a 1 GiB buffer, far beyond L2, so DRAM) and matmul
    peaks (flop/s; fp32 without TF32, since the fp32 kernels use no tensor cores)."""
    from triton.testing import do_bench

    def copy_time(n: int) -> float:
        src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
        return _median(do_bench(lambda: dst.copy_(src), warmup=50, rep=500, return_mode="all"))

    def matmul_time(m: int, dtype: torch.dtype) -> float:
        a, b = torch.randn(m, m, device=device, dtype=dtype), torch.randn(m, m, device=device, dtype=dtype)
        return _median(do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="all"))

    n, m = 1 << 28, 8192
    out = {"copy_bandwidth": 2 * n * 4 / (copy_time(n) * 1e-3)}
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in DTYPES.items():
            out[f"peak_flops_{name}"] = 2 * m**3 / (matmul_time(m, dtype) * 1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def _median(xs) -> float:
    xs = sorted(xs)
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


def do_bench_all(fn) -> list[float]:
    """All per-run timings (ms) of `fn` from triton.testing.do_bench, the L2 cache flushed before each run."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="all")


def _bench_fns(op, args, direction: str, impls: tuple[str, ...]):
    """Zero-argument closures per implementation (setup, incl. the forward of a backward measurement,
    happens here and is not timed), plus their outputs for the accuracy check."""
    table = {"triton": op.triton, "eager": op.reference}
    if "compile" in impls:
        table["compile"] = torch.compile(op.reference, dynamic=False)
    fns, outs = {}, {}
    for name in impls:
        fn = table[name]
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
        out = (
            out[0] if isinstance(out, tuple) else out
        )  # affine: z (logdet's gradient path is the same kernel)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        outs[name] = torch.autograd.grad(out, wrt, grad, retain_graph=True)
        fns[name] = lambda out=out, wrt=wrt, grad=grad: torch.autograd.grad(out, wrt, grad, retain_graph=True)
    return fns, outs


def _rel_err(a, b) -> float:
    a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
    return max(
        float((x.float() - y.float()).abs().max() / (y.float().abs().max() + 1e-6)) for x, y in zip(a, b)
    )


def bench_row(
    op,
    case,
    dtype,
    direction: str,
    device,
    roof: dict,
    timer=do_bench_all,
    impls=("triton", "eager", "compile"),
) -> dict:
    """Time one op x case x dtype x direction; roofline = max(bytes / copy bandwidth, flops / peak)."""
    dname = next(k for k, v in DTYPES.items() if v == dtype)
    args = op.inputs(case.shape, dtype, device, torch.Generator().manual_seed(0))
    fns, outs = _bench_fns(op, args, direction, impls)
    err = _rel_err(outs["triton"], outs["eager"])
    times = {k: timer(f) for k, f in fns.items()}
    med = {k: _median(v) for k, v in times.items()}
    nbytes = op.bytes(case.shape, element_size(dtype))[direction]
    flops = op.flops(case.shape)[direction]
    t_mem, t_flop = nbytes / roof["copy_bandwidth"], flops / roof[f"peak_flops_{dname}"]
    compiled = med.get("compile")
    return {
        "key": f"{op.name}/{case.name}/{dname}/{direction}", "op": op.name, "case": case.name, "dtype": dname,
        "direction": direction, "shape": case.shape, "bytes": nbytes, "flops": flops,
        "triton_ms": med["triton"], "eager_ms": med["eager"], "compile_ms": compiled,
        "speedup_eager": med["eager"] / med["triton"],
        "speedup_compile": compiled / med["triton"] if compiled is not None else None,
        "bound": "memory" if t_mem >= t_flop else "compute",
        "roofline_pct": 100 * max(t_mem, t_flop) * 1e3 / med["triton"],
        "achieved_gbps": nbytes / (med["triton"] * 1e-3) / 1e9,
        "rel_err": err, "accurate": err <= (2e-2 if dtype == torch.bfloat16 else 1e-4),
        "triton_times_ms": times["triton"],
    }  # fmt: skip


def latency_report(patterns: list[str] | None = None, log=print) -> dict:
    import triton

    device = torch.device("cuda")
    roof = device_roofline(device)
    log(
        f"copy bandwidth {roof['copy_bandwidth'] / 1e9:.0f} GB/s, bf16 peak {roof['peak_flops_bf16'] / 1e12:.0f} TFLOP/s"
    )
    rows = []
    for op in OPS.values():
        for case in op.cases:
            for dname, dtype in DTYPES.items():
                for direction in ("fwd", "bwd") if op.grad_args else ("fwd",):
                    key = f"{op.name}/{case.name}/{dname}/{direction}"
                    if patterns and not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                        continue
                    row = bench_row(op, case, dtype, direction, device, roof)
                    rows.append(row)
                    log(f"{key}: {row['triton_ms'] * 1e3:.1f} us, x{row['speedup_eager']:.2f} eager, "
                        f"x{row['speedup_compile']:.2f} compile, {row['roofline_pct']:.0f}% roofline")  # fmt: skip
                    torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(device)
    return {
        "kind": "genbench.kernels.latency",
        "device": props.name,
        "sm_count": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        **roof,
        "rows": rows,
    }


def _us(ms) -> str:
    return "-" if ms is None else f"{ms * 1e3:.1f}"


def latency_markdown(report: dict) -> str:
    """The latency table plus the two targets: memory-bound kernels at >= 80% of the measured copy
    bandwidth, and no kernel slower than torch.compile."""
    rows = [
        [r["op"], r["case"], r["dtype"], r["direction"], _us(r["triton_ms"]), _us(r["eager_ms"]), _us(r["compile_ms"]),
         f"{r['speedup_eager']:.2f}", "-" if r["speedup_compile"] is None else f"{r['speedup_compile']:.2f}",
         f"{r['achieved_gbps']:.0f}", f"{r['roofline_pct']:.0f}% ({r['bound']})",
         "ok" if r["accurate"] else f"FAIL {r['rel_err']:.1e}"]
        for r in report["rows"]
    ]  # fmt: skip
    headers = [
        "op",
        "case",
        "dtype",
        "dir",
        "triton us",
        "eager us",
        "compile us",
        "x eager",
        "x compile",
        "GB/s",
        "roofline",
        "accuracy",
    ]
    mem = [r for r in report["rows"] if r["bound"] == "memory"]
    at80 = [r for r in mem if r["roofline_pct"] >= 80]
    slower = [
        r["key"] for r in report["rows"] if r["speedup_compile"] is not None and r["speedup_compile"] < 1
    ]
    return (
        f"# Triton kernel latency on {report['device']}\n\n"
        f"torch {report['torch']}, triton {report['triton']}, CUDA {report['cuda']}. Measured copy bandwidth "
        f"{report['copy_bandwidth'] / 1e9:.0f} GB/s; matmul peak {report['peak_flops_bf16'] / 1e12:.0f} TFLOP/s bf16, "
        f"{report['peak_flops_fp32'] / 1e12:.0f} TFLOP/s fp32. Median of `triton.testing.do_bench` (L2 flushed "
        "before each run); x eager / x compile = their latency over Triton's; roofline = max(bytes / copy "
        "bandwidth, flops / peak) over the Triton latency.\n\n"
        + _table(headers, rows)
        + f"\n\nTargets: {len(at80)} of {len(mem)} memory-bound kernels at >= 80% of the copy bandwidth; "
        + (
            f"slower than torch.compile: {', '.join(slower)}.\n"
            if slower
            else "none slower than torch.compile.\n"
        )
    )


def compare_latency(
    current: dict, baseline: dict, tol: float = TOLERANCE, alpha: float = ALPHA
) -> tuple[list[list], bool]:
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
        ratio = _median(r["triton_times_ms"]) / _median(b["triton_times_ms"])
        p = float(mannwhitneyu(r["triton_times_ms"], b["triton_times_ms"], alternative="greater").pvalue)
        bad = ratio > 1 + tol and p < alpha
        failed |= bad
        status = "REGRESSION" if bad else "slower, not significant" if ratio > 1 + tol else "ok"
        rows.append(
            [
                r["key"],
                f"{_median(b['triton_times_ms']) * 1e3:.1f}",
                f"{_median(r['triton_times_ms']) * 1e3:.1f}",
                f"{ratio:.3f}",
                f"{p:.2g}",
                status,
            ]
        )
    return rows, failed


def run_latency(args) -> int:
    if not torch.cuda.is_available():
        print("error: --latency needs a CUDA GPU (use --static on CPU)", file=sys.stderr)
        return 2
    report = latency_report(args.only or None, log=lambda s: print(s, file=sys.stderr))
    out = Path(args.json) if args.json else REPORTS / f"latency_{_slug(report['device'])}.json"
    _write_json(out, report)
    md = latency_markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    code = 0
    if not all(r["accurate"] for r in report["rows"]):
        print("error: a Triton kernel disagrees with its reference at paper shapes (accuracy column)")
        code = 1
    if args.compare:
        baseline = json.loads(Path(args.compare).read_text())
        if baseline.get("device") != report["device"]:
            print(f"warning: baseline device {baseline.get('device')} != {report['device']}", file=sys.stderr)
        rows, failed = compare_latency(report, baseline)
        print(_table(["kernel", "base us", "now us", "ratio", "p (MWU)", "status"], rows))
        print(
            f"latency gate: {'FAIL' if failed else 'ok'} (regression = ratio > {1 + TOLERANCE:.2f} and p < {ALPHA})"
        )
        code = max(code, 1 if failed else 0)
    return code


def _slug(name: str) -> str:
    m = re.search(r"(H100|H200|H800|A100|B200|L40S?)", name.upper())
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# --- CLI ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="invoke kernels", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--static", action="store_true", help="compile for sm_90 on the CPU and read the cubins"
    )
    mode.add_argument("--latency", action="store_true", help="time the kernels on a CUDA GPU")
    p.add_argument("--json", default="", help="write the results here (latency: also a .md beside it)")
    p.add_argument("--compare", default="", help="baseline JSON to gate against (exit 1 on regression)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="only keys matching op/case/dtype/kernel, e.g. 'swiglu/*' (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    if args.compare and not Path(args.compare).is_file():
        print(f"error: baseline {args.compare} not found", file=sys.stderr)
        return 2
    if args.only and not (static_configs(args.only) if args.static else True):
        print(f"error: --only {args.only} matches no kernel", file=sys.stderr)
        return 2
    return run_static(args) if args.static else run_latency(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
