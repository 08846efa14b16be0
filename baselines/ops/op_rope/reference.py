"""PyTorch reference of the rotary embedding on interleaved pairs."""

from __future__ import annotations

import torch


def rope(x, cos, sin):
    x2 = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)  # rotate_half on interleaved pairs
    return (x.float() * cos.float() + x2.float() * sin.float()).to(x.dtype)
