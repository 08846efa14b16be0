"""Fused ops used by the models, behind one switch.

Every op lives in its own folder `op_<name>/` (reference.py, kernel.py with the Triton kernels, spec.py with
paper-shape inputs and bytes/flops), registered once in `registry.py`. The models call the functions below;
the backend decides which runs:
- "auto" (default): Triton for CUDA tensors when Triton is importable, the reference otherwise (CPU);
- "torch": always the reference; "triton": always Triton (under TRITON_INTERPRET=1 this also runs on CPU).
Select with `set_backend(...)`, the `backend(...)` context manager, or the GENBENCH_OPS environment variable.
GENBENCH_OPS_TORCH=op[,op...] (or `route_to_torch`) keeps named ops on the reference whatever the backend: how
a kernel that misses its speed goals (bench/kernels latency table) is taken out of the model path.
"""

from __future__ import annotations

import contextlib
import os

from baselines.ops.registry import OPS

_BACKENDS = ("auto", "torch", "triton")
_backend = os.environ.get("GENBENCH_OPS", "auto")
if _backend not in _BACKENDS:
    raise ValueError(f"GENBENCH_OPS={_backend!r}; expected one of {_BACKENDS}")


_torch_only: frozenset[str] = frozenset()


def route_to_torch(names) -> None:
    """Run these ops' references instead of their Triton kernels (under every backend)."""
    global _torch_only
    names = frozenset(n.strip() for n in names if n.strip())
    unknown = sorted(names - set(OPS))
    if unknown:
        raise ValueError(f"unknown op(s) {unknown} in GENBENCH_OPS_TORCH; known: {', '.join(OPS)}")
    _torch_only = names


route_to_torch(os.environ.get("GENBENCH_OPS_TORCH", "").split(","))


def torch_only() -> frozenset[str]:
    """The ops kept on their reference whatever the backend (GENBENCH_OPS_TORCH / route_to_torch)."""
    return _torch_only


def set_backend(name: str) -> None:
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; expected one of {_BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str):
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def _use_triton(x) -> bool:
    if _backend == "torch":
        return False
    if _backend == "triton":
        return True
    return x.is_cuda and _triton_available()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _impl(name: str, x):
    op = OPS[name]
    return op.triton if name not in _torch_only and _use_triton(x) else op.reference


def modulated_rmsnorm(x, weight, shift, scale, eps: float = 1e-6):
    """RMSNorm(x) * weight * (1 + scale) + shift. x [B,T,D]; weight [D] or None; shift, scale [B,D]."""
    return _impl("modulated_rmsnorm", x)(x, weight, shift, scale, eps)


def modulated_layernorm(x, shift, scale, eps: float = 1e-6):
    """LayerNorm(x, no affine) * (1 + scale) + shift (DiT/SiT adaLN). x [B,T,D]; shift, scale [B,D]."""
    return _impl("modulated_layernorm", x)(x, shift, scale, eps)


def swiglu(h):
    """SiLU(h[..., :H]) * h[..., H:] for h [..., 2H] (LightningDiT `w12` output layout)."""
    return _impl("swiglu", h)(h)


def affine_forward(x, a, b, softplus: bool = False):
    """Flow affine step. TARFlow: z = (x - b) * exp(-a); STARFlow (softplus): z = (x - b) / softplus(a + 0.5413).
    x, a, b [B,T,D] -> (z [B,T,D], logdet [B] = mean over T*D of the elementwise log-determinant)."""
    return _impl("affine_forward", x)(x, a, b, softplus)


def affine_inverse(z, a, b, softplus: bool = False):
    """Inverse of `affine_forward`: x = z * exp(a) + b, or z * softplus(a + 0.5413) + b."""
    return _impl("affine_inverse", z)(z, a, b, softplus)


def kv_attention(q, k_cache, v_cache, length: int):
    """Single-query attention over the first `length` cached keys: q [B,H,1,d], caches [B,H,L,d] -> [B,H,1,d]."""
    return _impl("kv_attention", q)(q, k_cache, v_cache, length)


def rope(x, cos, sin):
    """Rotary embedding on interleaved pairs: x [B,H,T,d], cos/sin [T,d] (each angle repeated twice)."""
    return _impl("rope", x)(x, cos, sin)
