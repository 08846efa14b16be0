"""Blocks shared by the DiT-family models (SiT/REPA, LightningDiT): embedders and the fixed 2D sin-cos table."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class TimestepEmbedder(nn.Module):
    """Scalar t -> [cos(t f_k), sin(t f_k)] (cosine first, f_k = 10000^(-k/half)) -> Linear-SiLU-Linear.
    t is used as given (no x1000), as REPA's SiT and LightningDiT do."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb.to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, D]
        return self.mlp(
            self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        )


class LabelEmbedder(nn.Module):
    """Class id -> vector; id == num_classes is the learned null class used by classifier-free guidance.
    Label dropout is done by the generator's loss (one place, seeded), not inside the network."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # [B] -> [B, D]
        return self.embedding_table(labels)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE/DiT table [grid*grid, D]: first D/2 channels encode the COLUMN, last D/2 the ROW (numpy meshgrid puts
    w first); each half is [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k/(D/4))."""
    grid_w, grid_h = np.meshgrid(
        np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64)
    )

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], axis=1)


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """[B, T, p*p*c] tokens (per-token layout: row offset, column offset, channel) -> [B, c, H, W]."""
    b, t, _ = x.shape
    h = w = int(round(t**0.5))
    x = x.reshape(b, h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h * p, w * p)


def initialize_dit_weights(model: nn.Module) -> None:
    """DiT/SiT/LightningDiT init (facebookresearch/DiT initialize_weights): Xavier-uniform linears and patch conv,
    the fixed sin-cos table, N(0, 0.02) label table and t-MLP, zeroed adaLN modulations and output layer.
    Expects DiT attribute names (x_embedder.proj, pos_embed, y_embedder, t_embedder, blocks, final_layer).
    On the meta device there is nothing to initialise."""
    if model.pos_embed.is_meta:
        return

    def _basic(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    model.apply(_basic)
    grid = int(round(model.pos_embed.shape[1] ** 0.5))
    table = get_2d_sincos_pos_embed(model.pos_embed.shape[-1], grid)
    model.pos_embed.data.copy_(torch.from_numpy(table).float()[None])
    w = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    for m in (model.final_layer.adaLN_modulation[-1], model.final_layer.linear):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)
