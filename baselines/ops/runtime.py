"""What every op's Triton implementation shares: a kernel launch described as data (`Launch`), running it
(compiled on CUDA, interpreted on CPU under TRITON_INTERPRET=1), and grid-planning helpers.

Each op's `kernel.py` first describes its launches with `plan_*` functions and then runs them; the static gate
(`bench/kernels/static.py`) compiles the very same plans for sm_90 on the CPU, so what it measures is what runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from triton.runtime.interpreter import InterpretedFunction

H100_SMS = 132  # planning default off-GPU (CPU interpreter, static gate): the sm_90 part the gate targets


@dataclass
class Launch:
    """One kernel launch: `kernel[grid](*args, **constexprs, num_warps=...)`."""

    kernel: Any  # a @triton.jit kernel (JITFunction, or InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple  # runtime arguments, in the kernel's parameter order (tensors, ints, floats)
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4


def run(launch: Launch) -> None:
    tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
    if tensors[0].device.type == "cpu":
        if not isinstance(launch.kernel, InterpretedFunction):
            raise RuntimeError(
                "Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before triton is imported "
                "(float32 only) or use the torch ops backend"
            )
        bad = sorted({str(t.dtype) for t in tensors if t.is_floating_point() and t.dtype != torch.float32})
        if bad:
            raise ValueError(
                f"the Triton interpreter supports float32 only (got {', '.join(bad)}); "
                "use the torch ops backend or a CUDA device"
            )
    launch.kernel[launch.grid](*launch.args, **launch.constexprs, num_warps=launch.num_warps)


def pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to plan grids for; off-GPU an H100's, so plans there are deterministic."""
    if device.type != "cuda":
        return H100_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
