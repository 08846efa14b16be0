"""Every Triton kernel against its PyTorch reference: forward, gradients, masked tails, non-power-of-two sizes.

Runs where Triton kernels can run: on a GPU (float32 and bfloat16), or on the CPU in Triton's interpreter
(float32). The interpreter must be chosen before triton is first imported, so `tests/test_ops.py` starts
this file in a subprocess with TRITON_INTERPRET=1; in the main test process it is skipped unless a GPU
is present.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip(
        "needs a GPU, or TRITON_INTERPRET=1 before triton is imported (tests/test_ops.py runs it that way)",
        allow_module_level=True,
    )
DEVICE = "cpu" if INTERPRET else "cuda"
DTYPES = [torch.float32] if DEVICE == "cpu" else [torch.float32, torch.bfloat16]  # interpreter: fp32 only
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

from types import SimpleNamespace  # noqa: E402

from baselines import ops  # noqa: E402  (after the skip: importing a kernel module imports triton)
from baselines.ops import reference as R  # noqa: E402
from baselines.ops import runtime  # noqa: E402
from baselines.ops.op_affine import kernel as affine_kernel  # noqa: E402
from baselines.ops.op_kv_attention import kernel as kv_kernel  # noqa: E402
from baselines.ops.op_modulated_norm import kernel as norm_kernel  # noqa: E402
from baselines.ops.op_rope import kernel as rope_kernel  # noqa: E402
from baselines.ops.op_swiglu import kernel as swiglu_kernel  # noqa: E402

# The Triton side of every op, by the op's public name (each lives in its op folder's kernel.py).
T = SimpleNamespace(
    modulated_rmsnorm=norm_kernel.modulated_rmsnorm,
    modulated_layernorm=norm_kernel.modulated_layernorm,
    swiglu=swiglu_kernel.swiglu,
    affine_forward=affine_kernel.affine_forward,
    affine_inverse=affine_kernel.affine_inverse,
    kv_attention=kv_kernel.kv_attention,
    plan_kv_attention=kv_kernel.plan_kv_attention,
    rope=rope_kernel.rope,
)


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(DEVICE, dtype)


def close(a, b, dtype, what=""):
    a, b = a.float(), b.float()
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1.0)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def check_grads(fn_triton, fn_ref, args, wrt, dtype):
    """Same random cotangents through both implementations; every listed input's gradient must agree."""

    def grads(fn):
        leaves = [
            a.detach().clone().requires_grad_(i in wrt) if torch.is_tensor(a) else a
            for i, a in enumerate(args)
        ]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        gen = torch.Generator().manual_seed(7)
        cot = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
        torch.autograd.backward(outs, cot)
        return [leaves[i].grad for i in wrt]

    for i, gt, gr in zip(wrt, grads(fn_triton), grads(fn_ref)):
        assert gt is not None and gt.shape == gr.shape, f"grad of arg {i}"
        close(gt, gr, dtype, f"grad of arg {i}")


@pytest.fixture(params=[False, True], ids=["sm132", "sm1"])
def few_programs(request, monkeypatch):
    """sm1: plan grids as if the device had one SM, so each program loops over several rows/blocks."""
    if request.param:
        monkeypatch.setattr(runtime, "H100_SMS", 1)
        if DEVICE == "cuda":
            monkeypatch.setattr(runtime, "sm_count", lambda device: 1)
    return request.param


# --- modulated norms -------------------------------------------------------------------------------------------
NORM_SHAPES = [(2, 5, 37), (1, 3, 64), (3, 17, 130)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["rms", "rms_noweight", "layer"])
def test_modulated_norm_forward(kind, shape, dtype):
    B, _, D = shape
    x, shift, scale = (
        rand(*shape, dtype=dtype),
        rand(B, D, dtype=dtype, scale=0.3),
        rand(B, D, dtype=dtype, scale=0.3),
    )
    if kind == "layer":
        close(T.modulated_layernorm(x + 3, shift, scale), R.modulated_layernorm(x + 3, shift, scale), dtype)
    else:
        w = rand(D, dtype=dtype) if kind == "rms" else None
        close(T.modulated_rmsnorm(x, w, shift, scale), R.modulated_rmsnorm(x, w, shift, scale), dtype)


@pytest.mark.parametrize("kind", ["rms", "rms_noweight", "layer"])
@pytest.mark.parametrize("shape", [(2, 5, 37), (2, 17, 130)], ids=str)
def test_modulated_norm_grads(kind, shape, few_programs):
    B, _, D = shape
    x, shift, scale = rand(*shape), rand(B, D, scale=0.3), rand(B, D, scale=0.3)
    if kind == "layer":
        check_grads(T.modulated_layernorm, R.modulated_layernorm, [x, shift, scale], (0, 1, 2), torch.float32)
    else:
        w = rand(D) if kind == "rms" else None
        wrt = (0, 1, 2, 3) if w is not None else (0, 2, 3)
        check_grads(T.modulated_rmsnorm, R.modulated_rmsnorm, [x, w, shift, scale], wrt, torch.float32)


# --- SwiGLU -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 74), (2, 3, 2 * 1030), (5, 16)], ids=str)  # 1030: 2 blocks + tail
def test_swiglu(shape, dtype):
    h = rand(*shape, dtype=dtype)
    close(T.swiglu(h), R.swiglu(h), dtype)
    check_grads(T.swiglu, R.swiglu, [h], (0,), dtype)


# --- flow affine step -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("softplus", [False, True], ids=["tarflow", "starflow"])
@pytest.mark.parametrize("shape", [(2, 7, 5), (3, 300, 7), (1, 1, 4)], ids=str)
def test_affine_forward_inverse(shape, softplus, few_programs):
    for dtype in DTYPES:
        x, a, b = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, scale=0.5), rand(*shape, dtype=dtype)
        z, logdet = T.affine_forward(x, a, b, softplus)
        z_ref, logdet_ref = R.affine_forward(x, a, b, softplus)
        close(z, z_ref, dtype, "z")
        assert logdet.shape == (shape[0],) and logdet.dtype == torch.float32
        close(logdet, logdet_ref, torch.float32 if dtype == torch.float32 else dtype, "logdet")
        close(
            T.affine_inverse(z_ref, a, b, softplus), R.affine_inverse(z_ref, a, b, softplus), dtype, "inverse"
        )
        if dtype == torch.float32:
            close(T.affine_inverse(z, a, b, softplus), x, dtype, "round trip")


@pytest.mark.parametrize("softplus", [False, True], ids=["tarflow", "starflow"])
@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 300, 7)], ids=str)
def test_affine_grads(shape, softplus, few_programs):
    args = [rand(*shape), rand(*shape, scale=0.5), rand(*shape), softplus]
    check_grads(T.affine_forward, R.affine_forward, args, (0, 1, 2), torch.float32)
    check_grads(T.affine_inverse, R.affine_inverse, args, (0, 1, 2), torch.float32)


def test_affine_softplus_extreme_scales():
    # softplus(u) for very negative u is ~exp(u): a naive log(1 + exp(u)) rounds to 0 and log s to -inf.
    a = torch.tensor([[[-40.0, -20.0, -5.0, 0.0, 5.0, 30.0]]], device=DEVICE)
    x, b = torch.ones_like(a), torch.zeros_like(a)
    z, logdet = T.affine_forward(x, a, b, True)
    z_ref, logdet_ref = R.affine_forward(x, a, b, True)  # computes F.softplus (log1p) in float32
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-5, atol=1e-6)
    check_grads(T.affine_forward, R.affine_forward, [x, a, b, True], (0, 1, 2), torch.float32)


def test_affine_broadcast_bias():
    x, a, b = rand(2, 6, 3), rand(2, 6, 3, scale=0.5), rand(1, 1, 3)  # b broadcasts over batch and tokens
    close(T.affine_inverse(x, a, b), R.affine_inverse(x, a, b), torch.float32)
    check_grads(T.affine_forward, R.affine_forward, [x, a, b, False], (0, 1, 2), torch.float32)


# --- KV-cache attention -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,H,L,d,length",
    [(2, 3, 300, 24, 1), (2, 3, 300, 24, 77), (2, 3, 300, 64, 300), (1, 2, 40, 64, 33)],
    ids=["len1", "len77_tail", "split2", "short"],
)
def test_kv_attention(B, H, L, d, length, dtype):
    q, k, v = rand(B, H, 1, d, dtype=dtype), rand(B, H, L, d, dtype=dtype), rand(B, H, L, d, dtype=dtype)
    close(T.kv_attention(q, k, v, length), R.kv_attention(q, k, v, length), dtype)


def test_kv_attention_split_path_and_strided_inputs():
    B, H, L, d = 2, 3, 520, 64
    qkv = rand(B, 1, 3, H, d)  # the models' layout: q, k, v are permuted views
    q = qkv[:, :, 0].permute(0, 2, 1, 3)
    k, v = rand(B, L, H, d).transpose(1, 2), rand(B, L, H, d).transpose(1, 2)
    launches, _ = T.plan_kv_attention(q, k, v, 500)
    assert len(launches) == 2 and launches[0].grid[1] > 1, "6 (batch, head) programs must split the length"
    close(T.kv_attention(q, k, v, 500), R.kv_attention(q, k, v, 500), torch.float32)
    # with gradients required, the sampling kernel hands over to the reference (correct autograd)
    qg = q.detach().clone().requires_grad_(True)
    out = T.kv_attention(qg, k, v, 500)
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


# --- RoPE ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 11, 10), (1, 2, 33, 72), (1, 1, 4, 64)], ids=str)
def test_rope(shape, dtype):
    T_, d = shape[2], shape[3]
    ang = torch.rand(T_, d // 2).repeat_interleave(2, -1) * 6.3
    cos, sin = ang.cos().to(DEVICE, dtype), ang.sin().to(DEVICE, dtype)
    x = rand(*shape, dtype=dtype)
    close(T.rope(x, cos, sin), R.rope(x, cos, sin), dtype)
    check_grads(T.rope, R.rope, [x, cos, sin], (0,), dtype)


def test_rope_strided_input_and_general_tables():
    B, Tn, H, d = 2, 9, 3, 72
    qkv = rand(B, Tn, 3, H, d).permute(2, 0, 3, 1, 4)  # [3, B, H, T, d] views, as in the models
    q = qkv[1]
    cos, sin = rand(Tn, d), rand(Tn, d)  # not pair-repeated: the backward must be the exact transpose
    close(T.rope(q, cos, sin), R.rope(q, cos, sin), torch.float32)
    check_grads(T.rope, R.rope, [q, cos, sin], (0,), torch.float32)
    close(T.rope(q, cos[None, None], sin[None, None]), R.rope(q, cos, sin), torch.float32, "broadcast table")


# --- the switch and the error paths ------------------------------------------------------------------------
def test_switch_dispatches_to_triton_and_back():
    h = rand(2, 3, 20).requires_grad_(True)
    with ops.backend("triton"):
        out = ops.swiglu(h)
        assert type(out.grad_fn).__name__ == "_SwiGLUBackward", "the triton backend must run the Triton op"
    with ops.backend("torch"):
        assert "SwiGLU" not in type(ops.swiglu(h).grad_fn).__name__
    x, shift, scale = rand(2, 4, 8), rand(2, 8), rand(2, 8)
    with ops.backend("triton"):
        close(ops.modulated_layernorm(x, shift, scale), R.modulated_layernorm(x, shift, scale), torch.float32)


def test_user_errors_are_clear():
    with pytest.raises(ValueError, match="shift must be"):
        T.modulated_layernorm(rand(2, 3, 8), rand(3, 8), rand(2, 8))
    with pytest.raises(ValueError, match="even last dimension"):
        T.swiglu(rand(2, 7))
    with pytest.raises(ValueError, match="length must be"):
        T.kv_attention(rand(1, 1, 1, 8), rand(1, 1, 4, 8), rand(1, 1, 4, 8), 5)
    with pytest.raises(ValueError, match="cos must hold"):
        T.rope(rand(1, 1, 4, 8), rand(3, 8), rand(4, 8))
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="float32 only"):
            T.swiglu(rand(2, 8, dtype=torch.bfloat16))


def test_latency_row_orchestration_off_gpu():
    """bench_row (the --latency worker) on a tiny case with a wall-clock timer: fields, accuracy, bytes."""
    import time

    from baselines.ops.registry import OPS, Case
    from bench.kernels import bench_row

    def timer(fn, n=3):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    roof = {"copy_bandwidth": 1e9, "peak_flops_fp32": 1e9, "peak_flops_bf16": 1e9}
    case = Case("tiny", dict(B=1, T=3, H=40))
    for direction in ("fwd", "bwd"):
        row = bench_row(
            OPS["swiglu"], case, torch.float32, direction, DEVICE, roof, timer, impls=("triton", "eager")
        )
        assert row["accurate"], row["rel_err"]
        assert row["key"] == f"swiglu/tiny/fp32/{direction}" and len(row["triton_times_ms"]) == 3
        assert (
            row["bytes"] == (3 if direction == "fwd" else 5) * 3 * 40 * 4 and row["speedup_compile"] is None
        )


def test_latency_command_tiny_dry_run(tmp_path):
    """`invoke kernels --latency` end to end where no GPU is: tiny shapes, fp32, the Triton side interpreted.
    Rows carry median, IQR, speed-ups, % of bound and the goals; the markdown table and the plot are written."""
    if DEVICE != "cpu":
        pytest.skip("the GPU runs the paper-shape measurement (scripts/gpu_check.sh)")
    import json

    from bench import kernels

    out = tmp_path / "latency.json"
    argv = ["--latency", "--device", "cpu", "--shapes", "tiny", "--dtypes", "fp32", "--only", "swiglu/*"]
    assert kernels.main([*argv, "--rep-ms", "2", "--no-compile", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["shapes"] == "tiny" and rep["device"] == "cpu" and not rep["errors"]
    assert [r["key"] for r in rep["rows"]] == [
        "swiglu/lightningdit_xl1/fp32/fwd",
        "swiglu/lightningdit_xl1/fp32/bwd",
    ]
    for r in rep["rows"]:
        assert r["shape"] == {"B": 2, "T": 16, "H": 16} and r["accurate"]
        assert r["triton_ms"] > 0 and r["triton_iqr_ms"] >= 0 and r["repeats"]["triton"] >= 3
        assert set(r["goals"]) >= {"x_eager"} and r["compile_ms"] is None
    md = out.with_suffix(".md").read_text()
    assert "## Per op" in md and "x eager" in md
    assert (tmp_path / "latency_speedup.png").is_file()
