"""PyTorch references of the flow affine step and its inverse."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# softplus(0 + offset) = 1: STARFlow's scale parametrisation starts at the identity.
SOFTPLUS_OFFSET = math.log(math.e - 1.0)  # 0.5413...


def log_scale(a, softplus):
    return torch.log(F.softplus(a.float() + SOFTPLUS_OFFSET)) if softplus else a.float()


def affine_forward(x, a, b, softplus=False):
    log_s = log_scale(a, softplus)
    z = (x.float() - b.float()) * torch.exp(-log_s)
    return z.to(x.dtype), -log_s.flatten(1).mean(1)


def affine_inverse(z, a, b, softplus=False):
    return (z.float() * torch.exp(log_scale(a, softplus)) + b.float()).to(z.dtype)
