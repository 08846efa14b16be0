"""The one registry of fused ops, assembled from the op folders (`op_<name>/spec.py`).

Each entry: reference + Triton implementation + input generator at paper shapes + bytes moved and flops (for
the roofline) + the kernel launches (for the static gate). `bench/kernels/` reads only this registry: `--static`
compiles `op.launches(...)` of every case and dtype for sm_90, `--latency` times `op.triton` against
`op.reference` (eager and torch.compile) on `op.inputs(...)`. Batch sizes are per-GPU training batches of the
papers' recipes (sampling batches for the KV-cache op, CFG doubling them); the other dimensions are the
published architectures'. Importing this module does not import triton.
"""

from __future__ import annotations

from baselines.ops import op_affine, op_kv_attention, op_modulated_norm, op_rope, op_swiglu  # noqa: F401
from baselines.ops.op_affine import spec as _affine
from baselines.ops.op_kv_attention import spec as _kv
from baselines.ops.op_modulated_norm import spec as _norm
from baselines.ops.op_rope import spec as _rope
from baselines.ops.op_swiglu import spec as _swiglu
from baselines.ops.spec import DTYPES, Case, Op, element_size

OPS: dict[str, Op] = {op.name: op for m in (_norm, _swiglu, _affine, _kv, _rope) for op in m.OPS}

__all__ = ["OPS", "DTYPES", "Case", "Op", "element_size"]
