"""Parameter counts of every STARFlow and TARFlow preset, built on the meta device (no memory, no init):
`invoke flow-sizes`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines.starflow import StarFlow, StarFlow_configs
from baselines.tarflow import TarFlow, TarFlow_configs

PUBLISHED_SIZES = {("starflow", "1.4B"): 1.4e9, ("starflow", "3.8B"): 3.86e9}  # PAPERS.md / arXiv 2506.06276


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_sizes() -> list[dict[str, Any]]:
    rows = []
    with torch.device("meta"):
        for name, cfg in StarFlow_configs.items():
            m = StarFlow(**cfg)
            total, deep = count_parameters(m), count_parameters(m.blocks[-1])
            rows.append({"family": "starflow", "preset": name, "params": total, "deep_block": deep,
                         "shallow_blocks": total - deep})  # fmt: skip
        for name, cfg in TarFlow_configs.items():
            rows.append({"family": "tarflow", "preset": name, "params": count_parameters(TarFlow(**cfg))})
    return rows


def format_sizes(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        pub = PUBLISHED_SIZES.get((r["family"], r["preset"]))
        size = f"{r['params'] / 1e9:.3f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.3f}M"
        split = (f"  deep {r['deep_block'] / 1e6:.1f}M + shallow {r['shallow_blocks'] / 1e6:.1f}M"
                 if "deep_block" in r else "")  # fmt: skip
        extra = f"  (published: {pub / 1e9:.2f}B)" if pub else ""
        lines.append(f"{r['family']:9s} {r['preset']:12s} {r['params']:>14,d} params = {size}{split}{extra}")
    return lines
