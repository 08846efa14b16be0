"""Triton kernel costs: a static gate that needs no GPU (`static.py`), and latency against eager,
torch.compile and the roofline (`latency.py`, GPU; tiny shapes on CPU under TRITON_INTERPRET=1 for dry runs).
`invoke kernels` calls `main(argv)`; `python -m bench.kernels` does the same.

--static: compile every kernel launch for sm_90 on the CPU and read the cubins; `--compare BASELINE` exits 1
  when a metric grows more than 5% or a spill appears (reports/kernels/static_sm90.json is CI's baseline).
--latency: median and IQR of the Triton op, the eager reference and torch.compile(reference) at paper shapes,
  percent of the measured copy bandwidth / matmul peak, and the goals met or missed per row; `--compare`
  flags a regression only when the median ratio exceeds 5% AND a Mann-Whitney U test agrees (p < 0.01).
Exit codes: 0 ok, 1 regression (or a wrong result / failed row), 2 usage / environment error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.kernels.latency import bench_row, compare_latency, latency_markdown, latency_report, run_latency
from bench.kernels.static import compare_static, run_static, static_configs, static_report

__all__ = ["main", "bench_row", "compare_latency", "compare_static", "latency_markdown", "latency_report",
           "static_configs", "static_report"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="invoke kernels", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--static", action="store_true", help="compile for sm_90 on the CPU and read the cubins"
    )
    mode.add_argument("--latency", action="store_true", help="time the kernels (CUDA; cpu: tiny dry run)")
    p.add_argument(
        "--json", default="", help="write the results here (latency: also a .md and plots beside it)"
    )
    p.add_argument("--compare", default="", help="baseline JSON to gate against (exit 1 on regression)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="only keys matching op/case/dtype/kernel(or direction), e.g. 'swiglu/*' (repeatable)",
    )
    p.add_argument(
        "--device", default="cuda", help="latency: cuda (default) or cpu (tiny shapes, interpreter)"
    )
    p.add_argument("--shapes", default="paper", choices=("paper", "tiny"), help="latency: case shapes")
    p.add_argument("--dtypes", default="bf16,fp32", help="latency: comma list of bf16, fp32")
    p.add_argument(
        "--rep-ms", type=float, default=100, help="latency: do_bench repetition time per measurement"
    )
    p.add_argument("--budget-s", type=float, default=0, help="latency: stop starting rows after this many s")
    p.add_argument("--no-compile", action="store_true", help="latency: skip torch.compile (eager only)")
    args = p.parse_args(argv)  # fmt: skip
    args.command = "invoke kernels " + shlex.join(argv)
    if args.compare and not Path(args.compare).is_file():
        print(f"error: baseline {args.compare} not found", file=sys.stderr)
        return 2
    if args.static:
        if args.only and not static_configs(args.only):
            print(f"error: --only {args.only} matches no kernel", file=sys.stderr)
            return 2
        return run_static(args)
    return run_latency(args)
