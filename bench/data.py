"""Data sources: the embedded photo-patch set (no download), the ImageNet folder with ADM's center crop,
and a latent cache.

Embedded data: scikit-image ships real photographs. A sample is a random crop of one photo (class = photo),
taken from the photo rescaled so that its short side is `context` times the crop size; the crops of a split
are a pure function of (split, image_size, n_per_class, seed), so every process sees identical data.
"""

from __future__ import annotations

import functools
from pathlib import Path

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


def to_model_range(images_uint8_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.as_tensor(images_uint8_nhwc)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded as ADM's sampler does ((x + 1) * 127.5, clip)."""
    x = ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def center_crop_arr(pil_image, image_size: int):
    """ADM's center crop (guided-diffusion image_datasets.py): box-downsample by 2 while the short side is
    >= 2x the target, then bicubic resize so the short side equals the target, then center crop."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image.convert("RGB"))
    cy = (arr.shape[0] - image_size) // 2
    cx = (arr.shape[1] - image_size) // 2
    return arr[cy : cy + image_size, cx : cx + image_size]


class ImageFolder(torch.utils.data.Dataset):
    """ImageNet-style train folder (one sub-folder per class, sorted class names -> ids) with ADM center crop."""

    EXTS = (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG")

    def __init__(self, root: str | Path, image_size: int = 256):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNet train folder not found: {self.root}")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"no class sub-folders in {self.root}")
        self.files = [
            (f, i)
            for i, c in enumerate(classes)
            for f in sorted((self.root / c).iterdir())
            if f.suffix in self.EXTS
        ]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as im:
            arr = center_crop_arr(im.convert("RGB"), self.image_size)
        return torch.from_numpy(arr), label
