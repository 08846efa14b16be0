"""PyTorch reference of the SwiGLU gate."""

from __future__ import annotations

import torch.nn.functional as F


def swiglu(h):
    a, b = h.chunk(2, dim=-1)
    return F.silu(a) * b
