"""The ops switch, the registry, and the Triton interpreter run of tests/test_ops_kernels.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baselines import ops
from baselines.ops import reference
from baselines.ops.registry import DTYPES, OPS

REPO = Path(__file__).resolve().parents[1]


def test_triton_kernels_under_the_interpreter():
    """All kernel tests, on the CPU in float32, under TRITON_INTERPRET=1. A subprocess, because the
    interpreter is chosen when triton is first imported and this process may already hold compiled kernels."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ops_kernels.py"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    tail = res.stdout[-6000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and "skipped" not in res.stdout and "failed" not in res.stdout, tail


def test_triton_backend_on_cpu_without_interpreter_says_how():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton in the interpreter")
    with ops.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.swiglu(torch.randn(2, 8))


def test_auto_backend_uses_reference_on_cpu():
    h = torch.randn(2, 6, requires_grad=True)
    with ops.backend("auto"):
        out = ops.swiglu(h)
    assert "SwiGLU" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, reference.swiglu(h))
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops.set_backend("cuda")


@pytest.mark.parametrize("name", list(OPS))
def test_registry_entry_is_consistent(name):
    """Each op's generator, reference, bytes/flops and launch plans agree at every paper shape (meta tensors:
    shapes only, no memory), and the CPU reference runs on the generator's real inputs at a reduced batch."""
    op = OPS[name]
    assert op.reference is getattr(reference, name) and op.cases
    for case in op.cases:
        for dtype in DTYPES.values():
            args = op.inputs(case.shape, dtype, "meta", None)
            out = op.reference(*args)
            first = out[0] if isinstance(out, tuple) else out
            assert first.dtype == dtype and first.device.type == "meta"
            nbytes, flops = op.bytes(case.shape, 2), op.flops(case.shape)
            assert nbytes["fwd"] > 0 and flops["fwd"] > 0
            assert ("bwd" in nbytes) >= bool(op.grad_args), "a training op needs backward bytes"
            names = [n for n, _ in op.launches(args)]
            assert names[0] == "fwd" and (("bwd" in names) == bool(op.grad_args))
        small = dict(case.shape, B=min(case.shape["B"], 2))
        args = op.inputs(small, torch.float32, "cpu", torch.Generator().manual_seed(0))
        out = op.reference(*args)
        for t in out if isinstance(out, tuple) else (out,):
            assert torch.isfinite(t).all()


def test_registry_paper_shapes():
    dit = OPS["modulated_rmsnorm"].cases[0].shape
    assert (dit["T"], dit["D"]) == (256, 1152)  # LightningDiT-XL/1: 16x16 latent, patch 1
    assert OPS["swiglu"].cases[0].shape["H"] == int(2 / 3 * 4 * 1152)
    star = {c.name: c.shape for c in OPS["affine_forward"].cases}["starflow_imagenet256"]
    assert (star["T"], star["D"], star["softplus"]) == (1024, 4, 1)
    kv = {c.shape["B"] for c in OPS["kv_attention"].cases}
    assert all(b % 2 == 0 for b in kv), "CFG doubles the sampling batch"


def test_route_to_torch_takes_an_op_out_of_the_model_path():
    """How a kernel that misses its speed goals leaves the model path: GENBENCH_OPS_TORCH=<op> / route_to_torch."""
    op = OPS["swiglu"]
    try:
        ops.route_to_torch(["swiglu"])
        assert ops.torch_only() == {"swiglu"}
        with ops.backend("triton"):
            assert ops._impl("swiglu", torch.randn(2, 4)) is op.reference  # even under the triton backend
            assert ops._impl("rope", torch.randn(2, 4)) is OPS["rope"].triton
        with pytest.raises(ValueError, match="unknown op"):
            ops.route_to_torch(["swiglu", "no_such_op"])
    finally:
        ops.route_to_torch([])
    assert ops.torch_only() == frozenset()
