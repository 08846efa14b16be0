"""Every op's PyTorch reference in one namespace (the ground truth; each lives in its op folder)."""

from baselines.ops.op_affine.reference import SOFTPLUS_OFFSET, affine_forward, affine_inverse
from baselines.ops.op_kv_attention.reference import kv_attention
from baselines.ops.op_modulated_norm.reference import modulated_layernorm, modulated_rmsnorm
from baselines.ops.op_rope.reference import rope
from baselines.ops.op_swiglu.reference import swiglu

__all__ = ["SOFTPLUS_OFFSET", "affine_forward", "affine_inverse", "kv_attention", "modulated_layernorm",
           "modulated_rmsnorm", "rope", "swiglu"]  # fmt: skip
