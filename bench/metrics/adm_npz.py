"""ADM-format npz batches (openai/guided-diffusion `evaluations/`): validated reading, streamed writing.

Layout: `arr_0` uint8 [N, H, W, 3] images, `arr_1` int [N] labels (sample batches); reference batches may hold
`mu`, `sigma` (pool_3) and `mu_s`, `sigma_s` (mixed_6/conv, first 7 channels) instead of or beside the images.
Files written here may add `extractor` (the feature space of stored statistics), `n_nonfinite` /
`nonfinite_index` (samples that were NaN/Inf before the uint8 conversion; stored as zeros so the batch keeps
its ADM shape, and refused by `bench.metrics.evaluate`) and `uint8_convention` (how float samples became
uint8, see below). Files are plain (uncompressed) zips, as `np.savez`. Statistics are validated on read: a
sigma that is not symmetric positive semi-definite is a CorruptInputError naming the file and the key.

uint8 conventions (`UINT8_CONVENTIONS`), float [-1, 1] -> uint8:
- "adm-truncate" (default; the ADM protocol): ((x + 1) * 127.5).clamp(0, 255).to(uint8), i.e. truncation, as
  guided-diffusion's samplers (scripts/image_sample.py:60, classifier_sample.py:87 at 22e0df8).
- "round": ((x + 1) * 127.5).round().clamp(0, 255) (what this harness did before; about half a grey level
  brighter on average).

Images are streamed from the zip member in batches (`AdmBatch.iter_images`), so memory stays flat in N on
both the read and the write side (`NpzShardWriter`, `merge_shards`).
"""

from __future__ import annotations

import errno
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.errors import CorruptInputError, MissingInputError, OptionError
from bench.metrics.frechet import covariance_problem
from bench.store import disk_full, fsync_dir, fsync_file

UINT8_CONVENTIONS = ("adm-truncate", "round")
DEFAULT_UINT8 = "adm-truncate"
STAT_PAIRS = (("mu", "sigma"), ("mu_s", "sigma_s"))


class NpzFormatError(CorruptInputError):
    """A batch file that is not a valid ADM npz; the message names the file and the problem."""


class NonFiniteSamplesError(CorruptInputError):
    """Samples with NaN/Inf values: metrics refuse them rather than return a misleading number."""

    def __init__(self, message: str, n_nonfinite: int = 0, n_samples: int = 0):
        super().__init__(message)
        self.n_nonfinite, self.n_samples = n_nonfinite, n_samples


# ---------------------------------------------------------------------------------------------- reading


def _npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header_bytes) of an .npy stream positioned at its start."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:  # (3, 0): utf8 header, same layout as 2.0
        shape, fortran, dtype = np.lib.format._read_array_header(fp, version)
    return tuple(shape), bool(fortran), dtype, fp.tell()


@dataclass
class AdmBatch:
    """A validated ADM npz: image header info (images stay on disk until asked for), labels and statistics."""

    path: Path
    n_images: int = 0
    image_shape: tuple[int, int, int] | None = None  # (H, W, 3)
    labels: np.ndarray | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # any of mu, sigma, mu_s, sigma_s (float64)
    extractor: str | None = None  # feature space of `stats`; None = ADM's own (TF Inception)
    n_nonfinite: int = 0
    nonfinite_index: np.ndarray | None = None
    uint8_convention: str | None = (
        None  # how float samples became uint8; None: not recorded (e.g. real images)
    )
    _fortran: bool = False
    _offset: int = 0

    @property
    def has_images(self) -> bool:
        return self.n_images > 0

    def iter_images(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """Yield uint8 [b, H, W, 3] batches streamed from the file."""
        if not self.has_images:
            raise NpzFormatError(f"{self.path}: has no images (arr_0)")
        if self._fortran:  # rare (not written by numpy's savez of C arrays); load it whole
            yield from _batches(np.load(self.path)["arr_0"], batch_size)
            return
        per_image = int(np.prod(self.image_shape))
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as f:
                f.read(self._offset)
                for start in range(0, self.n_images, batch_size):
                    b = min(batch_size, self.n_images - start)
                    buf = f.read(b * per_image)
                    if len(buf) != b * per_image:
                        raise NpzFormatError(
                            f"{self.path}: arr_0 is truncated (image {start + len(buf) // per_image} of {self.n_images})"
                        )
                    yield np.frombuffer(bytearray(buf), dtype=np.uint8).reshape(
                        b, *self.image_shape
                    )  # writable
                f.read()  # reach the end of the member so zipfile checks its CRC
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise NpzFormatError(f"{self.path}: arr_0 is corrupt or truncated ({e})") from e

    def images(self) -> np.ndarray:
        """All images as one uint8 [N, H, W, 3] array (memory grows with N; prefer iter_images)."""
        return np.concatenate(list(self.iter_images(max(1, min(self.n_images, 4096)))), axis=0)


def _batches(arr: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(arr), batch_size):
        yield arr[i : i + batch_size]


def _describe_bad_images(path: Path, arr: np.ndarray) -> Exception:
    """The error for an arr_0 that is not uint8: non-finite values, values outside [0, 255], or the dtype."""
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            return NonFiniteSamplesError(
                f"{path}: arr_0 has NaN/Inf values in {int(bad.sum())} of {len(arr)} images (indices {np.flatnonzero(bad)[:8].tolist()}...)",
                int(bad.sum()),
                len(arr),
            )
    if arr.dtype.kind in "fciub" and arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            hint = (
                " (looks like model range [-1, 1]: convert with bench.data.to_uint8)"
                if lo >= -1.001 and hi <= 1.001
                else ""
            )
            return NpzFormatError(
                f"{path}: arr_0 values span [{lo:g}, {hi:g}], outside the image range [0, 255]{hint}"
            )
        if arr.dtype.kind == "f" and hi <= 1.0:  # rounding these to uint8 would give a black batch
            return NpzFormatError(
                f"{path}: arr_0 is {arr.dtype} in [{lo:g}, {hi:g}], which looks like images scaled to [0, 1]; ADM "
                "batches store uint8 [0, 255] (convert with np.round(x * 255).astype(np.uint8))"
            )
    return NpzFormatError(
        f"{path}: arr_0 has dtype {arr.dtype}; ADM batches store uint8 images "
        "(convert with np.clip(np.round(x), 0, 255).astype(np.uint8))"
    )


def read_npz(path: str | os.PathLike) -> AdmBatch:
    """Open and validate an ADM npz (sample batch or reference batch). Images are not loaded; see AdmBatch.

    Raises FileNotFoundError for a missing file, NpzFormatError (a ValueError) naming the file and the problem
    for a truncated/corrupt file, wrong dtype, shape, value range or malformed statistics, and
    NonFiniteSamplesError for NaN/Inf images.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise NpzFormatError(f"{path}: not a readable npz file; truncated or corrupt ({e})") from e
    with zf:
        members = {n[: -len(".npy")]: n for n in zf.namelist() if n.endswith(".npy")}
        if "arr_0" not in members and "mu" not in members:
            raise NpzFormatError(
                f"{path}: holds neither images (arr_0) nor statistics (mu, sigma); found {sorted(members)}"
            )
        batch = AdmBatch(path=path)

        def load(name: str) -> np.ndarray:
            try:
                with zf.open(members[name]) as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
                raise NpzFormatError(f"{path}: array {name!r} is corrupt or truncated ({e})") from e

        if "arr_0" in members:
            info = zf.getinfo(members["arr_0"])
            try:
                with zf.open(info) as f:
                    shape, fortran, dtype, offset = _npy_header(f)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
                raise NpzFormatError(f"{path}: arr_0 header is unreadable ({e})") from e
            if len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
                hint = " (looks like NCHW; ADM batches are NHWC)" if len(shape) == 4 and shape[1] == 3 else ""
                raise NpzFormatError(f"{path}: arr_0 has shape {shape}; expected images [N, H, W, 3]{hint}")
            if dtype != np.uint8:
                raise _describe_bad_images(path, load("arr_0"))
            expected = offset + int(np.prod(shape)) * dtype.itemsize
            if info.file_size != expected:
                raise NpzFormatError(
                    f"{path}: arr_0 is truncated: {info.file_size} bytes stored, {expected} expected for {shape}"
                )
            batch.n_images, batch.image_shape = shape[0], tuple(shape[1:])
            batch._fortran, batch._offset = fortran, offset

        if "arr_1" in members:
            labels = load("arr_1")
            if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != batch.n_images:
                raise NpzFormatError(
                    f"{path}: arr_1 (labels) must be integers [N={batch.n_images}], got {labels.dtype} {labels.shape}"
                )
            if len(labels) and labels.min() < 0:  # class indices; a negative one is never a real class
                raise NpzFormatError(f"{path}: arr_1 (labels) has negative class index {int(labels.min())}")
            batch.labels = labels.astype(np.int64)

        for mu_key, sigma_key in STAT_PAIRS:
            if (mu_key in members) != (sigma_key in members):
                raise NpzFormatError(
                    f"{path}: has {mu_key if mu_key in members else sigma_key} without its pair"
                )
            if mu_key not in members:
                continue
            mu, sigma = load(mu_key), load(sigma_key)
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                raise NpzFormatError(
                    f"{path}: {mu_key} {mu.shape} / {sigma_key} {sigma.shape} are not [D] / [D, D]"
                )
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise NpzFormatError(f"{path}: {mu_key}/{sigma_key} contain NaN or Inf")
            problem = covariance_problem(sigma)
            if problem:
                raise NpzFormatError(f"{path}: {sigma_key} {problem}")
            batch.stats[mu_key], batch.stats[sigma_key] = mu.astype(np.float64), sigma.astype(np.float64)

        if "extractor" in members:
            batch.extractor = str(load("extractor"))
        if "n_nonfinite" in members:
            batch.n_nonfinite = int(load("n_nonfinite"))
            if "nonfinite_index" in members:
                batch.nonfinite_index = load("nonfinite_index").astype(np.int64)
        if "uint8_convention" in members:
            batch.uint8_convention = str(load("uint8_convention"))
            if batch.uint8_convention not in UINT8_CONVENTIONS:
                raise NpzFormatError(
                    f"{path}: uint8_convention {batch.uint8_convention!r} is not one of {', '.join(UINT8_CONVENTIONS)}"
                )
    return batch


DEFAULT_NUM_CLASSES = 1000  # ImageNet's: ADM's reference batches and the imagenet256 suites


def check_labels(batch: AdmBatch, num_classes: int = DEFAULT_NUM_CLASSES) -> None:
    """Class labels (arr_1) must lie in [0, num_classes): a label past the model's classes means the batch was
    labelled for another model or indexing (1-based, say). One NpzFormatError naming the file and the value."""
    if batch.labels is None or not len(batch.labels):
        return
    hi = int(batch.labels.max())
    if hi >= num_classes:
        n = int((batch.labels >= num_classes).sum())
        raise NpzFormatError(
            f"{batch.path}: arr_1 (labels) has class index {hi} ({n} of {len(batch.labels)} labels >= {num_classes}); "
            f"classes are 0..{num_classes - 1} (--num-classes {num_classes})"
        )


def check_finite(batch: AdmBatch, what: str = "samples") -> None:
    """A batch written with non-finite samples (stored as zeros, counted in `n_nonfinite`) is never scored."""
    if batch.n_nonfinite:
        idx = batch.nonfinite_index[:8].tolist() if batch.nonfinite_index is not None else "?"
        raise NonFiniteSamplesError(
            f"{batch.path}: {batch.n_nonfinite} of {batch.n_images} {what} were NaN/Inf before the uint8 "
            f"conversion (indices {idx}...); refusing to score them",
            batch.n_nonfinite,
            batch.n_images,
        )


# ---------------------------------------------------------------------------------------------- writing


def _check_uint8_nhwc(images: np.ndarray, what: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 [N, H, W, 3], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 [N, H, W, 3], got shape {images.shape}")
    return images


UINT8_ALIASES = {"truncate": "adm-truncate"}  # baselines.api.Recipe.release_uint8 spells it "truncate"


def check_uint8_convention(convention: str) -> str:
    """The canonical name of a uint8 convention (what files record), or OptionError."""
    convention = UINT8_ALIASES.get(convention, convention)
    if convention not in UINT8_CONVENTIONS:
        raise OptionError(
            f"unknown uint8 convention {convention!r}; known: {', '.join(UINT8_CONVENTIONS)} "
            f"(alias: truncate = adm-truncate)"
        )
    return convention


def float_to_uint8(x: torch.Tensor, convention: str = DEFAULT_UINT8) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] by `convention` (module docstring). Values are
    clamped to [0, 255] first, so count non-finite samples before calling this."""
    y = (x.detach().float() + 1) * 127.5
    if check_uint8_convention(convention) == "round":
        y = y.round()
    u8 = y.clamp(0, 255).to(
        torch.uint8
    )  # float -> uint8 truncates toward zero, as torch's .to(th.uint8) in ADM
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_uint8_counted(
    images: torch.Tensor | np.ndarray, convention: str = DEFAULT_UINT8
) -> tuple[np.ndarray, np.ndarray]:
    """Samples -> (uint8 [N, H, W, 3], non-finite mask [N]).

    Accepts uint8 [N, H, W, 3] (returned as is) or float [N, 3, H, W] in model range [-1, 1], converted by
    `convention` ("adm-truncate", ADM's samplers: (x + 1) * 127.5, clamp, truncate; or "round"). The mask is
    computed before any clamping, so +/-Inf count as non-finite; such a sample is stored as zeros.
    """
    convention = check_uint8_convention(convention)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return _check_uint8_nhwc(images), np.zeros(len(images), dtype=bool)
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return _check_uint8_nhwc(x.cpu().numpy()), np.zeros(len(x), dtype=bool)
    if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"samples must be uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1], got {x.dtype} {tuple(x.shape)}"
        )
    x = x.detach().float().cpu()
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    x = torch.where(bad[:, None, None, None], torch.zeros_like(x) - 1.0, x)
    return float_to_uint8(x, convention), bad.numpy()


class _NpzStream:
    """Write an uncompressed npz member by member; a big array can be streamed in chunks (flat memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        self.add_chunks(name, array.dtype, array.shape, [array])

    def add_chunks(self, name: str, dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> None:
        dtype, written, expected = np.dtype(dtype), 0, int(np.prod(shape))
        with self.zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": tuple(shape),
            }
            np.lib.format.write_array_header_1_0(f, header)
            for c in chunks:
                c = np.ascontiguousarray(c, dtype=dtype)
                f.write(c.tobytes())
                written += c.size
        assert written == expected, f"{name}: wrote {written} elements, header says {expected}"

    def close(self) -> Path:
        """Finish and move into place atomically."""
        self.zf.close()
        fsync_file(self.tmp)  # durable before the rename makes it visible (bench.store)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        self.zf.close()
        self.tmp.unlink(missing_ok=True)


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    stream = _NpzStream(path)
    try:
        for k, v in arrays.items():
            stream.add(k, v)
        return stream.close()
    except BaseException as e:
        stream.abort()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, e) from None  # one line; the shards written before stay intact
        raise


def write_samples_npz(
    path: str | os.PathLike,
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray | None = None,
    nonfinite: np.ndarray | None = None,
    uint8_convention: str | None = DEFAULT_UINT8,
) -> Path:
    """Write an ADM sample batch (`arr_0` uint8 NHWC, `arr_1` labels) atomically. `nonfinite` is an optional
    bool mask [N] of samples that were NaN/Inf before conversion (see `to_uint8_counted`). `uint8_convention`
    (recorded in the file) says how the float samples were converted: the default is that of
    `bench.data.to_uint8` and `to_uint8_counted`; pass None for images that never were float (real images)."""
    images = _check_uint8_nhwc(images_uint8_nhwc)
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers [{len(images)}], got {labels.dtype} {labels.shape}")
        arrays["arr_1"] = labels.astype(np.int64)
    if nonfinite is not None and np.any(nonfinite):
        arrays["n_nonfinite"] = np.asarray(int(np.sum(nonfinite)), dtype=np.int64)
        arrays["nonfinite_index"] = np.flatnonzero(nonfinite).astype(np.int64)
    if uint8_convention is not None:
        arrays["uint8_convention"] = np.asarray(check_uint8_convention(uint8_convention))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _write(Path(path), arrays)


def write_stats_npz(
    path: str | os.PathLike, stats: dict[str, np.ndarray], extractor: str | None = None
) -> Path:
    """Write reference statistics (`mu`, `sigma`, optionally `mu_s`, `sigma_s`) as an ADM reference batch.
    `extractor` names their feature space (omit it only for ADM-compatible Inception statistics)."""
    arrays = {}
    for mu_key, sigma_key in STAT_PAIRS:
        if (mu_key in stats) != (sigma_key in stats):
            raise ValueError(f"stats: {mu_key} and {sigma_key} go together")
        if mu_key in stats:
            arrays[mu_key] = np.asarray(stats[mu_key], np.float64)
            arrays[sigma_key] = np.asarray(stats[sigma_key], np.float64)
    if "mu" not in arrays:
        raise ValueError("stats must hold at least mu and sigma")
    if extractor is not None:
        arrays["extractor"] = np.asarray(extractor)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _write(Path(path), arrays)


class NpzShardWriter:
    """Stream samples into ADM npz shards `{prefix}_{k:05d}.npz` of `shard_size` images each.

    Memory holds at most one shard. `add` takes uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1] (non-finite
    samples are counted, see `to_uint8_counted`; floats are converted by `uint8_convention`, which every shard
    records). Shards are written atomically, so after a crash the finished ones are intact; `resume=True`
    continues after them (`n_written` counts the samples already on disk; their convention must match).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        shard_size: int = 1000,
        prefix: str = "samples",
        resume: bool = False,
        uint8_convention: str = DEFAULT_UINT8,
    ):
        if shard_size < 1:
            raise OptionError(f"shard_size must be >= 1, got {shard_size}")
        self.dir, self.shard_size, self.prefix = Path(directory), shard_size, prefix
        self.uint8_convention = check_uint8_convention(uint8_convention)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self.shards()
        if existing and not resume:
            raise FileExistsError(
                f"{self.dir} already holds {len(existing)} {prefix} shards; pass resume=True or use an empty folder"
            )
        self.paths = existing
        batches = [read_npz(p) for p in existing]
        for b in batches:
            if b.uint8_convention != self.uint8_convention:
                raise OptionError(
                    f"{b.path}: written with uint8 convention {b.uint8_convention!r}, resuming with {self.uint8_convention!r}"
                )
        self.n_written = sum(b.n_images for b in batches)
        self.n_nonfinite = sum(b.n_nonfinite for b in batches)
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._bad: list[np.ndarray] = []
        self._buffered = 0
        self._has_labels: bool | None = None

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.prefix}_[0-9][0-9][0-9][0-9][0-9].npz"))

    def add(self, images, labels: np.ndarray | torch.Tensor | None = None) -> None:
        u8, bad = to_uint8_counted(images, self.uint8_convention)
        if labels is not None:
            labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
            if len(labels) != len(u8):
                raise ValueError(f"{len(labels)} labels for {len(u8)} images")
        if self._has_labels is None:
            self._has_labels = labels is not None
        elif self._has_labels != (labels is not None):
            raise ValueError("give labels with every batch or with none")
        start = 0
        while start < len(u8):  # split so that a shard never exceeds shard_size
            take = min(self.shard_size - self._buffered, len(u8) - start)
            sl = slice(start, start + take)
            self._images.append(u8[sl])
            self._bad.append(bad[sl])
            if labels is not None:
                self._labels.append(labels[sl])
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        images = np.concatenate(self._images)
        bad = np.concatenate(self._bad)
        labels = np.concatenate(self._labels) if self._labels else None
        path = self.dir / f"{self.prefix}_{len(self.paths):05d}.npz"
        write_samples_npz(path, images, labels, nonfinite=bad, uint8_convention=self.uint8_convention)
        self.paths.append(path)
        self.n_written += len(images)
        self.n_nonfinite += int(bad.sum())
        self._images, self._labels, self._bad, self._buffered = [], [], [], 0

    def close(self) -> list[Path]:
        self._flush()
        return list(self.paths)

    def __enter__(self) -> NpzShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def merge_shards(
    shards: Iterable[str | os.PathLike], out_path: str | os.PathLike, batch_size: int = 1024
) -> Path:
    """Concatenate ADM shards into one ADM npz (what the official evaluator reads), streaming the images."""
    batches = [read_npz(p) for p in shards]
    if not batches:
        raise ValueError("no shards to merge")
    shapes = {b.image_shape for b in batches}
    if len(shapes) != 1 or None in shapes:
        raise ValueError(f"shards must all hold images of one shape, got {sorted(map(str, shapes))}")
    if len({b.labels is None for b in batches}) != 1:
        raise ValueError("either every shard has labels (arr_1) or none has")
    conventions = sorted({str(b.uint8_convention) for b in batches})
    if len(conventions) != 1:
        raise CorruptInputError(
            f"shards were converted to uint8 by different conventions: {', '.join(conventions)}"
        )
    n = sum(b.n_images for b in batches)
    stream = _NpzStream(Path(out_path))
    try:
        chunks = (x for b in batches for x in b.iter_images(batch_size))
        stream.add_chunks("arr_0", np.uint8, (n, *batches[0].image_shape), chunks)
        if batches[0].labels is not None:
            stream.add("arr_1", np.concatenate([b.labels for b in batches]))
        if batches[0].uint8_convention is not None:
            stream.add("uint8_convention", np.asarray(batches[0].uint8_convention))
        n_bad = sum(b.n_nonfinite for b in batches)
        if n_bad:
            offsets = np.cumsum([0] + [b.n_images for b in batches[:-1]])
            idx = [
                o + (b.nonfinite_index if b.nonfinite_index is not None else [])
                for o, b in zip(offsets, batches)
            ]
            stream.add("n_nonfinite", np.asarray(n_bad, dtype=np.int64))
            stream.add("nonfinite_index", np.concatenate(idx).astype(np.int64))
    except BaseException:
        stream.abort()
        raise
    return stream.close()


def sample_sources(samples: str | os.PathLike | Iterable[str | os.PathLike]) -> list[AdmBatch]:
    """A sample npz, a folder of shards (`*.npz`, sorted) or a list of npz paths -> validated batches."""
    if isinstance(samples, str | os.PathLike):
        p = Path(samples)
        if p.is_dir():
            paths = sorted(p.glob("*.npz"))
            if not paths:
                raise MissingInputError(f"{p}: folder holds no .npz shards")
        else:
            paths = [p]
    else:
        paths = [Path(s) for s in samples]
    return [read_npz(s) for s in paths]
