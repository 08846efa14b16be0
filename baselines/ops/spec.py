"""The registry's record of one op (tritonbench's pattern): reference + Triton implementation + input
generator at paper shapes + ideal bytes/flops (roofline) + the kernel launches (static gate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    name: str  # which model (and phase) the shape is taken from
    shape: dict  # the op's dimensions, e.g. dict(B=32, T=256, D=1152)


@dataclass(frozen=True)
class Op:
    name: str
    reference: Callable
    triton: Callable
    inputs: Callable  # (shape, dtype, device, generator) -> positional args of reference/triton
    bytes: Callable  # (shape, element size) -> {"fwd": bytes, "bwd": bytes}: ideal DRAM traffic
    flops: Callable  # shape -> {"fwd": flops, "bwd": flops}
    launches: Callable  # args -> [(name, runtime.Launch)]: every kernel the op runs, forward and backward
    cases: tuple[Case, ...]
    grad_args: tuple[int, ...] = ()  # positional args differentiated in training; () = forward only


def triton_fn(module: str, name: str) -> Callable:
    """`module.name`, imported on the first call: importing a kernel module imports triton, which only a
    Triton path may need (and TRITON_INTERPRET must be set before that import)."""
    import importlib

    resolved = []

    def call(*args):
        if not resolved:
            resolved.append(getattr(importlib.import_module(module), name))
        return resolved[0](*args)

    call.__name__ = call.__qualname__ = name
    return call


def make_op(name, reference, kernel_module, inputs, nbytes, flops, launches, cases, grad_args=()) -> Op:
    return Op(
        name,
        reference,
        triton_fn(kernel_module, name),
        inputs,
        nbytes,
        flops,
        launches,
        tuple(Case(n, s) for n, s in cases),
        grad_args,
    )


def randn(shape, dtype, device, gen, scale=1.0):
    """Seeded normal inputs (drawn on the CPU, so identical on every device); shapes only on `meta`."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


# Paper shapes shared by several ops: LightningDiT-XL/1 and SiT-XL/2 see 16x16 tokens of width 1152, at the
# recipes' 32 images per GPU (LightningDiT: batch 1024 on 32 GPUs; REPA: 256 on 8).
DIT = dict(B=32, T=256, D=1152)
