"""The kernel latency as pytest-benchmark benchmarks, so the usual tooling compares runs:

    pytest benchmarks/ --benchmark-json=reports/kernels/benchmark_h100.json
    pytest benchmarks/ --benchmark-compare=<saved run> --benchmark-compare-fail=median:5%

On a GPU every op x paper case x direction runs for the Triton kernel, the eager reference and
torch.compile(reference), in bf16. Without one, the eager reference runs at tiny shapes (the harness is
exercised, the numbers are CPU numbers) and the Triton / compile ones are skipped with the reason. This folder
is not part of the default test run (pyproject's testpaths is tests/). `invoke kernels --latency` is the
measurement with the roofline and the goals; this is the same work in pytest-benchmark's format.
"""

import pytest
import torch

from baselines.ops.registry import OPS, element_size
from bench.kernels.latency import _bench_fns, op_cases

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
SHAPES = "paper" if CUDA else "tiny"
IMPLS = ("triton", "eager", "compile")

CASES = [
    pytest.param(op.name, case, direction, impl, id=f"{op.name}/{case.name}/{direction}/{impl}")
    for op in OPS.values()
    for case in op_cases(op, SHAPES)
    for direction in (("fwd", "bwd") if op.grad_args else ("fwd",))
    for impl in IMPLS
]


@pytest.mark.parametrize("name,case,direction,impl", CASES)
def test_kernel(benchmark, name, case, direction, impl):
    if impl != "eager" and not CUDA:
        pytest.skip(
            f"{impl} is timed on a GPU only (CPU: Triton would run in its interpreter, compile is no kernel)"
        )
    op = OPS[name]
    args = op.inputs(case.shape, DTYPE, DEVICE, torch.Generator().manual_seed(0))
    fns, _ = _bench_fns(op, args, direction, (impl,))
    fn = fns[impl]

    def run():
        fn()
        if CUDA:
            torch.cuda.synchronize()

    run()  # warm-up: compilation and autotuning are not timed
    benchmark.extra_info.update(
        shape=case.shape, dtype=str(DTYPE), device=DEVICE,
        bytes=op.bytes(case.shape, element_size(DTYPE))[direction], flops=op.flops(case.shape)[direction],
    )  # fmt: skip
    benchmark(run)
