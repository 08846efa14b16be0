"""Data, as its own stage: the train / test / reference sources of a suite run.

API (what the trainer calls):
    data_sources(suite, *, image_size=None, imagenet=None, reference=None) -> DataSources
        .train      ImageSource  images the tokenizer and the generator train on
        .test       ImageSource | None  held-out real images (embedded suites; None for ImageNet)
        .reference  ImageSource | Path  real images to build FID statistics from (embedded), or the ADM
                    reference batch npz (imagenet256: $GENBENCH_ADM_REF, VIRTUAL_imagenet256_labeled.npz)
        .kind ("embedded" | "imagenet"), .num_classes, .image_size
    data_input_problems(suite, *, imagenet=None, reference=None) -> list[str]  (for one up-front error)
    ImageSource (a torch Dataset): len(src); src[i] -> (uint8 tensor [H, W, 3], int label);
        src.arrays(indices=None) -> (uint8 [N, H, W, 3], int64 [N]); src.num_classes; src.image_size;
        src.fingerprint() (identity of the file list / crops, for the latent cache key); src.crop_settings()
    EmbeddedImages(split, image_size, n_per_class, num_classes, seed=0)  photo crops, no download
    ImageFolder(root, image_size=256)  ImageNet train layout, ADM center crop (CorruptInputError on a bad file);
        .classes (sorted synsets), .files [(relative path, class)], .relpaths, .labels, .path(i)
    image_loader(source, batch_size, *, rank=0, world=1, seed=0, shuffle=True, num_workers=0, drop_last=True)
        -> (DataLoader of (uint8 [B, H, W, 3], int64 [B]), DistributedSampler): stage-1 training on images;
        a file that cannot be decoded stops the loop with CorruptInputError naming it (not a worker traceback)
    center_crop_arr(pil_image, image_size)  ADM's crop, exactly;  load_image(path) -> PIL RGB image
    embedded_images(...), to_model_range(uint8 NHWC) -> float NCHW [-1, 1]

Embedded data: scikit-image ships real photographs. A sample is a random crop of one photo (class = photo),
taken from the photo rescaled so that its short side is `context` times the crop size; the crops of a split
are a pure function of (split, image_size, n_per_class, seed), so every process sees identical data.

ImageNet: one folder per synset, class index = position in the sorted synset names (torchvision's ImageFolder
order); every file is opened with PIL and converted to RGB (ImageNet holds CMYK and grayscale JPEGs and a PNG
named .JPEG), then center-cropped as ADM does (openai/guided-diffusion guided_diffusion/image_datasets.py:126).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# the embedded photo crops live in bench/embedded.py (also used by bench.metrics' smoke extractor)
from bench.embedded import EMBEDDED_PHOTOS, _photo, embedded_images  # noqa: F401 (re-exported: part of the data API)
from bench.errors import CorruptInputError, MissingInputError, OptionError
from bench.progress import log


def to_model_range(images_uint8_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.as_tensor(images_uint8_nhwc)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor, convention: str = "adm-truncate") -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC. convention "adm-truncate" (default): ADM's samplers,
    ((x + 1) * 127.5).clamp(0, 255) then truncation to uint8; "round": rounded first. Clamps, so count
    non-finite samples before. See bench.metrics.adm_npz (which records the convention in every sample npz)."""
    from bench.metrics.adm_npz import float_to_uint8

    return float_to_uint8(images, convention)


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's center crop (openai/guided-diffusion guided_diffusion/image_datasets.py:126-143), step for step:
    BOX-halve (integer division of both sides) while the short side is >= 2x the target, BICUBIC-resize both
    sides to round(side * target / short side) (Python's round: ties to even), then crop the centre with floor
    offsets. Expects an RGB image (ADM converts before cropping, image_datasets.py:110); returns uint8 HWC."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    cy = (arr.shape[0] - image_size) // 2
    cx = (arr.shape[1] - image_size) // 2
    return arr[cy : cy + image_size, cx : cx + image_size]


def load_image(path: str | Path):
    """Open an image file fully and convert it to RGB (CMYK, grayscale, palette, RGBA all become RGB, as ADM's
    `pil_image.convert("RGB")`). A file PIL cannot decode raises CorruptInputError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptInputError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


# --- sources ------------------------------------------------------------------------------------------------


class ImageSource(torch.utils.data.Dataset):
    """Labelled images: `src[i]` -> (uint8 tensor [H, W, 3], int label)."""

    num_classes: int
    image_size: int

    def label(self, i: int) -> int:
        raise NotImplementedError

    def crop_settings(self) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of what the images are (file list or crop recipe): part of the latent cache key."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def arrays(self, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [N, H, W, 3], int64 [N]) of the given indices (all by default)."""
        idx = range(len(self)) if indices is None else indices
        items = [self[int(i)] for i in idx]
        if not items:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8), np.zeros(0, np.int64)
        return np.stack([np.asarray(x) for x, _ in items]), np.asarray([y for _, y in items], np.int64)


class EmbeddedImages(ImageSource):
    """`embedded_images(image_size, n_per_class, split, seed, num_classes)` as a source (made once, in memory)."""

    def __init__(self, split: str, image_size: int, n_per_class: int, num_classes: int, seed: int = 0):
        self.split, self.image_size, self.n_per_class = split, image_size, n_per_class
        self.num_classes, self.seed = num_classes, seed
        self.images, self.labels = embedded_images(image_size, n_per_class, split, seed, num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]), int(self.labels[i])

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def arrays(self, indices=None) -> tuple[np.ndarray, np.ndarray]:
        if indices is None:
            return self.images, self.labels
        idx = np.asarray(indices, dtype=np.int64)
        return self.images[idx], self.labels[idx]

    def crop_settings(self) -> dict:
        return {"crop": "embedded-random", "image_size": self.image_size}

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.images.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        return f"embedded photo crops ({self.split}, {len(self)} images of {self.image_size} px, {self.num_classes} classes)"


# torchvision's IMG_EXTENSIONS (datasets/folder.py), compared case-insensitively
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_files(folder: Path) -> list[str]:
    """Files under one class folder, relative to it, in torchvision's order (datasets/folder.py make_dataset:
    sorted(os.walk(followlinks=True)), then sorted names): sub-folders such as Tiny-ImageNet's <wnid>/images/ are
    walked; hidden files and folders (.DS_Store, .ipynb_checkpoints) are skipped."""
    out = []
    for root, _dirs, names in sorted(os.walk(folder, followlinks=True)):
        rel = Path(root).relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        out += [(rel / n).as_posix() for n in sorted(names) if not n.startswith(".")]
    return out


class ImageFolder(ImageSource):
    """ImageNet-style train folder: one sub-folder per class (sorted names -> class index, as torchvision's
    ImageFolder), files in torchvision's order inside each (sub-folders walked), ADM center crop at `image_size`.

    Checked when built: the folder exists, has class folders, no class folder is empty, and every file in a
    class folder has an image extension (hidden files such as .DS_Store are skipped; files at the top level are
    ignored as torchvision does). Decoding happens per item; a file that cannot be decoded raises
    CorruptInputError naming it."""

    def __init__(self, root: str | Path, image_size: int = 256):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingInputError(f"ImageNet train folder not found: {self.root}")
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self.classes:
            raise CorruptInputError(f"{self.root}: no class sub-folders (expected one folder per synset)")
        files, labels, empty, bad = [], [], [], []
        for i, c in enumerate(self.classes):
            names = _class_files(self.root / c)
            imgs = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            bad += [f"{c}/{n}" for n in names if os.path.splitext(n)[1].lower() not in IMAGE_EXTENSIONS]
            if not imgs:
                empty.append(c)
            files += [f"{c}/{n}" for n in imgs]
            labels += [i] * len(imgs)
        if empty:
            raise CorruptInputError(
                f"{self.root}: {len(empty)} class folder(s) hold no images: {', '.join(empty[:5])}"
                + (" ..." if len(empty) > 5 else "")
            )
        if bad:
            raise CorruptInputError(
                f"{self.root}: {len(bad)} file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)}): "
                + ", ".join(bad[:5])
                + (" ..." if len(bad) > 5 else "")
            )
        # files: (path relative to root, class index) as torchvision's ImageFolder.samples; relpaths / labels
        self.files = list(zip(files, labels))
        self.relpaths, self.labels = files, np.asarray(labels, dtype=np.int64)
        self.num_classes, self.image_size = len(self.classes), image_size

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.relpaths[i]

    def __getitem__(self, i: int):
        arr = center_crop_arr(load_image(self.path(i)), self.image_size)
        return torch.from_numpy(np.ascontiguousarray(arr)), int(self.labels[i])

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def crop_settings(self) -> dict:
        return {"crop": "adm_center_crop_arr", "image_size": self.image_size, "convert": "RGB"}

    def fingerprint(self) -> str:
        """sha256 over (relative path, class) of every file: the file list, not the bytes, so a corrupt file
        replaced under the same name keeps the cache (and its finished shards) valid."""
        h = hashlib.sha256()
        for f, y in zip(self.relpaths, self.labels):
            h.update(f"{f}\t{y}\n".encode())
        return h.hexdigest()

    def describe(self) -> str:
        return f"ImageNet-layout folder {self.root} ({len(self)} images, {self.num_classes} classes, ADM crop {self.image_size})"


# --- the data stage ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSources:
    """What a suite run trains on, holds out, and scores against."""

    kind: str  # "embedded" | "imagenet"
    train: ImageSource
    test: ImageSource | None
    reference: ImageSource | Path  # real images (embedded) or an ADM reference batch npz
    num_classes: int
    image_size: int


def data_input_problems(
    suite, *, imagenet: str | Path | None = None, reference: str | Path | None = None
) -> list[str]:
    """One line per missing data input of a suite ("- what: problem; how to provide it"), [] when all exist:
    for a runner that merges them with its other checks into ONE error before any work."""
    if suite.data != "imagenet":
        return []
    folder = imagenet or os.environ.get("GENBENCH_IMAGENET")
    ref = reference or os.environ.get("GENBENCH_ADM_REF")
    out = []
    if not folder:
        out.append(
            "- ImageNet train folder: set GENBENCH_IMAGENET=PATH (ILSVRC/Data/CLS-LOC/train, one folder per synset)"
        )
    elif not Path(folder).is_dir():
        out.append(f"- ImageNet train folder: {folder} does not exist")
    if not ref:
        out.append("- ADM reference batch: set GENBENCH_ADM_REF=PATH to VIRTUAL_imagenet256_labeled.npz "
                   "(openai/guided-diffusion evaluations/README.md)")  # fmt: skip
    elif not Path(ref).is_file():
        out.append(f"- ADM reference batch: {ref} does not exist")
    return out


def data_sources(
    suite,
    *,
    image_size: int | None = None,
    imagenet: str | Path | None = None,
    reference: str | Path | None = None,
    seed: int = 0,
) -> DataSources:
    """The train / test / reference sources of a suite.

    embedded suites (smoke, patches64): photo crops, train split (n_train_per_class), test and ref splits
    (n_ref_per_class). imagenet suites: the ImageNet train folder (`imagenet`, default $GENBENCH_IMAGENET) with
    ADM's center crop, no test split, and the ADM reference batch (`reference`, default $GENBENCH_ADM_REF).
    `image_size` overrides the suite's (the dry run crops a real folder to the tiny presets' size). Raises
    MissingInputError listing every missing path before any image is decoded."""
    size = image_size or suite.image_size
    if suite.data == "embedded":
        c = suite.num_classes
        return DataSources(
            kind="embedded",
            train=EmbeddedImages("train", size, suite.n_train_per_class, c, seed),
            test=EmbeddedImages("test", size, suite.n_ref_per_class, c, seed),
            reference=EmbeddedImages("ref", size, suite.n_ref_per_class, c, seed),
            num_classes=c,
            image_size=size,
        )
    if suite.data != "imagenet":
        raise OptionError(f"suite {suite.name} has {suite.data!r} data: no image sources")
    folder = imagenet or os.environ.get("GENBENCH_IMAGENET")
    ref = reference or os.environ.get("GENBENCH_ADM_REF")
    missing = data_input_problems(suite, imagenet=folder, reference=ref)
    if missing:
        raise MissingInputError(f"suite {suite.name} cannot start; missing inputs:\n" + "\n".join(missing))
    _check_reference(Path(ref))
    train = ImageFolder(folder, size)
    if train.num_classes != suite.num_classes:
        log.info(
            f"{train.describe()}: {train.num_classes} classes (suite {suite.name} expects {suite.num_classes})"
        )
    return DataSources(kind="imagenet", train=train, test=None, reference=Path(ref),
                       num_classes=train.num_classes, image_size=size)  # fmt: skip


def _check_reference(path: Path) -> None:
    """The reference batch must be a readable ADM npz with statistics or images (bench.metrics' reader)."""
    from bench.metrics import read_npz

    try:
        batch = read_npz(path)
    except ValueError as e:  # NpzFormatError: names the file and the problem
        raise CorruptInputError(str(e)) from None
    if "mu" not in batch.stats and not batch.has_images:
        raise CorruptInputError(
            f"{path}: an ADM reference batch holds mu/sigma or images (arr_0); this has neither"
        )


class CheckedItems(torch.utils.data.Dataset):
    """`source[i]` as (image, label, ok, message): a decode failure in a worker reaches the main process as data,
    so the run stops with one line naming the file instead of a worker traceback (see `raise_bad`)."""

    def __init__(self, source: ImageSource, indices=None):
        self.source = source
        self.indices = range(len(source)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:
            img, y = self.source[i]
            return img, y, True, ""
        except CorruptInputError as e:
            s = self.source.image_size
            return torch.zeros(s, s, 3, dtype=torch.uint8), -1, False, str(e)

    @staticmethod
    def raise_bad(ok, msg) -> None:
        if not bool(torch.as_tensor(ok).all()):
            raise CorruptInputError(next(m for m, g in zip(msg, ok) if not g))


class _ImageLoader:
    """Iterates (uint8 images, labels) of a checked DataLoader, raising CorruptInputError on a bad file."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for imgs, ys, ok, msg in self.loader:
            CheckedItems.raise_bad(ok, msg)
            yield imgs, ys


def image_loader(source: ImageSource, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True, num_workers: int = 0, drop_last: bool = True, pin_memory: bool | None = None):  # fmt: skip
    """(loader, sampler) over a source's images for one rank: DistributedSampler(shuffle, seed), so with the
    per-rank batch = global batch / world the global batch b is the same set of indices for any world size;
    call sampler.set_epoch(e) every epoch."""
    from torch.utils.data.distributed import DistributedSampler

    ds = CheckedItems(source)
    sampler = DistributedSampler(
        ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                         drop_last=drop_last,
                                         pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)  # fmt: skip
    return _ImageLoader(loader), sampler
