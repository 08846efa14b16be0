"""PyTorch references of the fused ops (the ground truth the Triton kernels are tested against)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# softplus(0 + offset) = 1: STARFlow's scale parametrisation starts at the identity.
SOFTPLUS_OFFSET = math.log(math.e - 1.0)  # 0.5413...


def modulated_rmsnorm(x, weight, shift, scale, eps=1e-6):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return (y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(x.dtype)


def modulated_layernorm(x, shift, scale, eps=1e-6):
    y = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return (y * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)).to(x.dtype)


def swiglu(h):
    a, b = h.chunk(2, dim=-1)
    return F.silu(a) * b


def _log_scale(a, softplus):
    return torch.log(F.softplus(a.float() + SOFTPLUS_OFFSET)) if softplus else a.float()


def affine_forward(x, a, b, softplus=False):
    log_s = _log_scale(a, softplus)
    z = (x.float() - b.float()) * torch.exp(-log_s)
    return z.to(x.dtype), -log_s.flatten(1).mean(1)


def affine_inverse(z, a, b, softplus=False):
    return (z.float() * torch.exp(_log_scale(a, softplus)) + b.float()).to(z.dtype)


def kv_attention(q, k_cache, v_cache, length):
    k, v = k_cache[:, :, :length], v_cache[:, :, :length]
    att = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (att.softmax(-1) @ v.float()).to(q.dtype)


def rope(x, cos, sin):
    x2 = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)  # rotate_half on interleaved pairs
    return (x.float() * cos.float() + x2.float() * sin.float()).to(x.dtype)
