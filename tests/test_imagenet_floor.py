"""The tokenizer floor of a dry run at a smaller --image-size than the ADM reference batch (256 px): reference
images are brought to the run's size first (ADM crop), so tokenizers with a fixed output size (FAE) reconstruct
them; equal sizes pass through untouched."""

from __future__ import annotations

import numpy as np

from baselines.api import build_backbone
from bench.data import center_crop_arr
from bench.floors import at_run_size, reconstruct


def test_reference_at_run_size_then_fae_reconstructs_it():
    from PIL import Image

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    assert at_run_size(ref, 64) is ref
    small = at_run_size(ref, 32)
    assert small.shape == (3, 32, 32, 3)
    assert np.array_equal(small[1], center_crop_arr(Image.fromarray(ref[1]), 32))
    bb = build_backbone("fae", "tiny", num_classes=8, image_size=32)
    rec, psnr, _ = reconstruct(bb, small)
    assert rec.shape == small.shape and np.isfinite(psnr).all()
