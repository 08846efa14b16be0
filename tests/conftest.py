import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def golden_root() -> Path | None:
    """Golden parity data: $GENBENCH_GOLDEN, else ../shared/golden beside the checkout (never copied in)."""
    env = os.environ.get("GENBENCH_GOLDEN")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "golden"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def golden():
    """Return a function case_name -> case dir, skipping (with the reason) when the data is absent."""

    def get(case: str) -> Path:
        root = golden_root()
        if root is None:
            pytest.skip("golden data not found: set GENBENCH_GOLDEN or place it at ../shared/golden")
        d = root / case
        if not d.is_dir():
            pytest.skip(f"golden case {case} not present under {root}")
        return d

    return get


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
