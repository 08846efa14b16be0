"""Checkpoint and weights I/O: atomic writes with a checksum, verified safe loads.

`save_checkpoint(path, state)` writes `path` atomically (temp file, fsync, rename, directory fsync) and
`path.sha256` beside it; `load_checkpoint(path)` verifies the checksum first and loads with
`torch.load(weights_only=True)`, so a torn or corrupt file is reported (CorruptInputError) and recomputed by the
caller, never used, and a pickle that carries code is refused without executing it.

`load_weights(path)` is the one way to read a weights file someone else made (released checkpoints, encoder and
extractor weights): safetensors, or torch.load(weights_only=True); anything else is a CorruptInputError naming
the file. `load_state_dict_strict` turns a strict-load failure into one line naming the first mismatched keys."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
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


# What torch.load(weights_only=True) and safetensors raise for a file that is not a plain tensor container: a
# pickle naming a global outside the allow-list (code), a torn zip, garbage bytes.
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError)


def _torch_load(path: Path, map_location, what: str) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except _LOAD_ERRORS as e:  # weights_only refuses pickled code before running any of it
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CorruptInputError(
            f"{what} {path} cannot be loaded safely (not a plain tensor file, or corrupt): "
            f"{type(e).__name__}: {first[:300]}"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist")
    if not checkpoint_ok(path):
        raise CorruptInputError(
            f"checkpoint {path} fails its checksum ({_sidecar(path).name}); it will not be used"
        )
    return _torch_load(path, map_location, "checkpoint")


def load_weights(path: str | Path, what: str = "weights file", map_location="cpu") -> dict[str, Any]:
    """A weights file made elsewhere: `.safetensors` via safetensors, anything else via
    torch.load(weights_only=True). Missing -> MissingInputError; corrupt or code-carrying -> CorruptInputError."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptInputError(f"{what} {path} is not a readable safetensors file: {e}") from None
    return _torch_load(path, map_location, what)


def load_state_dict_strict(module: torch.nn.Module, state: dict, source: str | Path, n: int = 3) -> None:
    """`module.load_state_dict(state, strict=True)`; a mismatch (a weights file for another architecture or
    size) is one CorruptInputError naming the file and the first missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
            parts.append(f"{label} {len(keys)}: {', '.join(keys[:n])}{more}")
    if parts:
        raise CorruptInputError(
            f"{source} does not fit {type(module).__name__} (wrong architecture or size?): "
            + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
