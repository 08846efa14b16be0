"""PyTorch references of the modulated norms (the ground truth the Triton kernels are tested against)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulated_rmsnorm(x, weight, shift, scale, eps=1e-6):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return (y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(x.dtype)


def modulated_layernorm(x, shift, scale, eps=1e-6):
    y = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return (y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(x.dtype)
