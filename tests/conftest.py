import pytest
import torch

from baselines.parity import golden_root


@pytest.fixture
def golden():
    """Return a function case_name -> case dir, skipping (with the reason) when the data is absent."""

    def get(case: str):
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
