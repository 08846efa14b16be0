"""Results store: `results/<suite>/<run_id>/` with config.json, env.json, log.txt, checkpoints, sample shards
and metrics.jsonl (one long-format row per measurement). Every write is atomic (temp file + os.replace) or an
fsync'ed append of one whole line, so a killed run never corrupts what it already wrote."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

METRIC_FIELDS = (
    "run_id", "suite", "backbone", "phase", "metric", "value", "epoch", "step", "images_seen", "train_flops",
    "n_samples", "extractor", "sampler", "steps", "nfe", "guidance", "device", "seed", "config_hash", "time",
)  # fmt: skip


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def env_info(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dev = torch.device(device)
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


class RunStore:
    """One run directory. `log_metric` appends a row to metrics.jsonl with the run's fixed fields filled in."""

    def __init__(self, root: str | Path, suite: str, run_id: str, *, seed: int, config: dict, device: str):
        self.dir = Path(root) / suite / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.suite, self.run_id, self.seed, self.device = suite, run_id, seed, device
        self.config_hash = config_hash(config)
        cfg_path = self.dir / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if config_hash(old) != self.config_hash:
                raise ValueError(
                    f"{self.dir} holds a run with a different configuration; choose another --run-id or --out"
                )
        else:
            atomic_write_json(cfg_path, config)
        atomic_write_json(self.dir / "env.json", env_info(device))

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def log_metric(self, backbone: str, phase: str, metric: str, value: float, **fields: Any) -> dict:
        row = dict.fromkeys(METRIC_FIELDS)
        row.update(run_id=self.run_id, suite=self.suite, backbone=backbone, phase=phase, metric=metric, value=float(value),
                   device=self.device, seed=self.seed, config_hash=self.config_hash, time=time.time())  # fmt: skip
        unknown = set(fields) - set(METRIC_FIELDS)
        if unknown:
            raise ValueError(f"unknown metric field(s): {sorted(unknown)}")
        row.update(fields)
        line = json.dumps(row) + "\n"
        if self.metrics_path.exists() and self.metrics_path.stat().st_size:
            with open(
                self.metrics_path, "rb"
            ) as f:  # a killed run may have left a torn line: terminate it first
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return row

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def backbone_dir(self, backbone: str) -> Path:
        d = self.dir / backbone
        d.mkdir(parents=True, exist_ok=True)
        return d


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
