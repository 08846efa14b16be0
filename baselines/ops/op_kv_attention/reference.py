"""PyTorch reference of single-query KV-cache attention."""

from __future__ import annotations

import math


def kv_attention(q, k_cache, v_cache, length):
    k, v = k_cache[:, :, :length], v_cache[:, :, :length]
    att = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (att.softmax(-1) @ v.float()).to(q.dtype)
