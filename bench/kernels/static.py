"""The static kernel gate, no GPU needed: every kernel launch of every registered op (baselines/ops/registry.py),
case and dtype is compiled for a CUDA sm_90 target on the CPU (triton.compile with a GPUTarget, no driver),
and the cubins are read with the cuobjdump and nvdisasm that ship in the triton wheel: registers, local memory
and spill instructions, shared memory, SASS instruction count. These are deterministic for a given
Triton/ptxas, so CI compares them with a committed baseline (reports/kernels/static_sm90.json): `--compare`
exits 1 when a metric grows more than 5% or a spill appears. Re-baseline with `--static --json <that file>`.
"""

from __future__ import annotations

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

from baselines.ops.registry import DTYPES, OPS
from bench.kernels.common import TOLERANCE, table, write_json

STATIC_METRICS = ("registers", "spill_instructions", "local_bytes", "shared_bytes", "sass_instructions")
SPILL_METRICS = ("spill_instructions", "local_bytes")
TARGET = ("cuda", 90, 32)  # H100 / H200


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


def run_static(args) -> int:
    patterns = args.only or None
    report = static_report(patterns, log=lambda s: print(s, file=sys.stderr))
    if args.json:
        write_json(Path(args.json), report)
    if not args.compare:
        rows = [[k] + [str(v[m]) for m in STATIC_METRICS] for k, v in report["kernels"].items()]
        print(table(["kernel", *STATIC_METRICS], rows))
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
    print(table(["kernel", *STATIC_METRICS, "status"], rows))
    n_bad = sum(r[-1] != "ok" and r[-1] != "new" for r in rows)
    print(
        f"static gate: {'FAIL' if failed else 'ok'} ({n_bad} of {len(rows)} kernels regressed or missing, tolerance {TOLERANCE:.0%})"
    )
    return 1 if failed else 0
