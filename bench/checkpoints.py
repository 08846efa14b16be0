"""Checkpoint I/O for the harness: atomic writes with a checksum, verified safe loads.

`save_checkpoint(path, state)` writes `path` atomically (temp file, fsync, rename) and `path.sha256` beside it;
`load_checkpoint(path)` verifies the checksum first and loads with `torch.load(weights_only=True)`, so a torn
or corrupt file is reported (CorruptInputError) and recomputed by the caller, never used, and a pickle that
carries code is refused without executing it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from bench.errors import CorruptInputError, MissingInputError
from bench.store import atomic_torch_save, atomic_write_bytes


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | Path, state: Any) -> None:
    path = Path(path)
    atomic_torch_save(path, state)
    atomic_write_bytes(_sidecar(path), (sha256_file(path) + "\n").encode())


def checkpoint_ok(path: str | Path) -> bool:
    """True when `path` and its checksum exist and agree (a torn or tampered file gives False)."""
    path = Path(path)
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        return False
    return side.read_text().strip() == sha256_file(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist")
    if not checkpoint_ok(path):
        raise CorruptInputError(
            f"checkpoint {path} fails its checksum ({_sidecar(path).name}); it will not be used"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses pickled code: report it as bad input, never run it
        raise CorruptInputError(
            f"checkpoint {path} cannot be loaded safely: {type(e).__name__}: {e}"
        ) from None
