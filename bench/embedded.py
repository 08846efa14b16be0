"""The embedded data set: random crops of the colour photographs that scikit-image ships (class = photo), so the
embedded suites need no download. The crops of a split are a pure function of (split, image_size, n_per_class,
seed), so every process sees identical data. Its own module (imports nothing of the harness) so that both the
data stage (bench.data) and the smoke feature extractor (bench.metrics) can use it without an import circle."""

from __future__ import annotations

import functools

import numpy as np
import torch

# Colour photographs bundled inside scikit-image itself (no pooch download needed).
EMBEDDED_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle",
)
_SPLIT_SEED = {"train": 0, "test": 1_000_003, "ref": 2_000_029}


@functools.cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        img = skimage.data.stereo_motorcycle()[0]
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


@functools.lru_cache(maxsize=32)
def _rescaled(name: str, short_side: int) -> torch.Tensor:
    img = torch.from_numpy(_photo(name)).permute(2, 0, 1)[None].float()
    h, w = img.shape[-2:]
    s = short_side / min(h, w)
    size = (max(short_side, round(h * s)), max(short_side, round(w * s)))
    return torch.nn.functional.interpolate(
        img, size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]


def embedded_images(
    image_size: int = 32,
    n_per_class: int = 64,
    split: str = "train",
    seed: int = 0,
    num_classes: int = len(EMBEDDED_PHOTOS),
    context: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of the embedded photographs.

    Returns (images uint8 [N, H, W, 3] NHWC, labels int64 [N]), class-major order, N = num_classes * n_per_class.
    """
    if split not in _SPLIT_SEED:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_SEED)}")
    if not 1 <= num_classes <= len(EMBEDDED_PHOTOS):
        raise ValueError(f"num_classes must be in [1, {len(EMBEDDED_PHOTOS)}], got {num_classes}")
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], image_size, n_per_class])
    images, labels = [], []
    for c, name in enumerate(EMBEDDED_PHOTOS[:num_classes]):
        photo = _rescaled(name, int(round(image_size * context)))
        h, w = photo.shape[-2:]
        ys = rng.integers(0, h - image_size + 1, size=n_per_class)
        xs = rng.integers(0, w - image_size + 1, size=n_per_class)
        flips = rng.random(n_per_class) < 0.5
        for y, x, f in zip(ys, xs, flips):
            crop = photo[:, y : y + image_size, x : x + image_size]
            if f:
                crop = crop.flip(-1)
            images.append(crop)
        labels += [c] * n_per_class
    arr = torch.stack(images).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return arr, np.asarray(labels, dtype=np.int64)
