"""A small ImageNet-layout train folder built from scikit-image's bundled photographs, with the file kinds real
ImageNet holds: JPEGs of several sizes (one smaller than 256 px), a grayscale JPEG, a CMYK JPEG and a PNG named
.JPEG. Used by the data, latent-cache and dry-run tests: `from imagenet_tree import make_imagenet_tree`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# synset -> [(file name, photo, (width, height), mode, format)]; written in this (unsorted) order on purpose
TREE = {
    "n03000134": [
        ("n03000134_1.JPEG", "rocket", (427, 640), "RGB", "PNG"),  # a PNG named .JPEG (ImageNet has one)
        ("n03000134_2.JPEG", "motorcycle", (600, 250), "RGB", "JPEG"),  # wide, short side < 256
    ],
    "n01440764": [
        ("n01440764_10.JPEG", "astronaut", (512, 512), "RGB", "JPEG"),
        ("n01440764_2.JPEG", "chelsea", (200, 150), "RGB", "JPEG"),  # smaller than 256 on both sides
        ("n01440764_3.JPEG", "coffee", (640, 427), "CMYK", "JPEG"),  # CMYK
    ],
    "n02102040": [
        ("n02102040_1.JPEG", "chelsea", (451, 300), "L", "JPEG"),  # grayscale
        ("n02102040_7.JPEG", "hubble_deep_field", (1100, 560), "RGB", "JPEG"),  # two BOX halvings at 256
        ("n02102040_8.JPEG", "coffee", (300, 301), "RGB", "JPEG"),
    ],
}
SYNSETS = sorted(TREE)  # class index = sorted synset order


def photo(name: str) -> np.ndarray:
    from bench.data import _photo

    return _photo(name)


def make_imagenet_tree(root: str | Path, copies: int = 1) -> Path:
    """Write the tree under `root` (`copies` > 1 repeats every file with a suffix, for bigger tests)."""
    from PIL import Image

    root = Path(root)
    for synset, files in TREE.items():
        (root / synset).mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            for fname, src, size, mode, fmt in files:
                im = Image.fromarray(photo(src)).resize(size, Image.BICUBIC).convert(mode)
                name = fname if c == 0 else fname.replace(".JPEG", f"_c{c}.JPEG")
                im.save(root / synset / name, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return root
