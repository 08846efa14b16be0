"""Results store: `results/<suite>/<run_id>/` with config.json, env.json, log.txt, checkpoints, sample shards
and metrics.jsonl (one long-format row per measurement). Every write is atomic (temp file, fsync, rename, fsync
of the directory) or an fsync'ed append of one whole line, so a killed run never corrupts what it already wrote.

One writer per run: opening a RunStore takes `run.lock` (pid and host of the writer, held with flock). A second
process on the same run directory gets RunLockedError at once; a lock left by a dead process on this host is
taken over with a log message. The lock is released when the store is closed or the process exits."""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.errors import CorruptInputError, DiskFullError, OptionError, RunLockedError

METRIC_FIELDS = (
    "run_id", "suite", "backbone", "phase", "metric", "value", "epoch", "step", "images_seen", "train_flops",
    "n_samples", "extractor", "sampler", "steps", "nfe", "guidance", "device", "seed", "config_hash", "time",
    "protocol", "labels",
)  # fmt: skip


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable (the new directory entry survives a power loss)."""
    fsync_file(path)


def fsync_file(path: Path) -> None:
    """Flush a file's (or a directory's) data to disk; a file before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """`write(f)` into a temp file beside `path`, fsync, rename over `path`, fsync the directory. On any error
    (a full disk: OSError ENOSPC) the temp file is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, e) from None
        raise
    fsync_dir(path.parent)


def disk_full(path: Path, e: OSError) -> DiskFullError:
    """The one-line error for a write that ran out of space (the caller has removed its temp file)."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"disk full while writing {path} ({e.strerror or e}; {free}); files written before are intact: "
        "free some space and run the same command again to resume"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


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


log = logging.getLogger("genbench")

LOCK_NAME = "run.lock"
_HELD: dict[Path, list] = {}  # lock path -> [fd, users]: the locks this process holds (re-entrant in-process)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0)
    try:
        owner = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        owner = {}
    return owner if isinstance(owner, dict) else {}


def _locked_message(run_dir: Path, owner: dict, path: Path) -> str:
    return (
        f"run directory {run_dir} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
        f"(lock {path}); wait for that run to finish or stop it"
    )


def acquire_run_lock(run_dir: Path) -> Path:
    """Take `run_dir/run.lock` for this process, or raise RunLockedError naming the live writer.

    flock makes the check race-free on one host and the kernel drops it when its holder dies (even by SIGKILL),
    so a lock file whose flock is free belongs to a dead writer and is taken over. A lock recorded by another
    host is never taken over (flock does not reach across every network file system)."""
    path = (Path(run_dir) / LOCK_NAME).resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        return path
    host = socket.gethostname()
    for _ in range(10):  # retry when the file was replaced between open and flock (a writer releasing it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_owner(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(_locked_message(Path(run_dir), owner, path)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        owner = _read_owner(fd)
        if owner.get("host") not in (None, host):
            os.close(fd)
            raise RunLockedError(
                _locked_message(Path(run_dir), owner, path) + f"; if that process is gone, delete {path}"
            )
        if owner:
            pid = owner.get("pid")
            state = (
                "no longer running" if not isinstance(pid, int) or not _pid_alive(pid) else "not holding it"
            )
            msg = f"taking over stale lock {path} of pid {pid} on {host} (process {state})"
            log.warning(msg)
            with open(Path(run_dir) / "log.txt", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        record = json.dumps({"pid": os.getpid(), "host": host, "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        _HELD[path] = [fd, 1]
        return path
    raise RunLockedError(f"run directory {run_dir}: could not take {path} (it keeps being replaced)")


def release_run_lock(path: Path) -> None:
    held = _HELD.get(path)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[path]
    path.unlink(missing_ok=True)  # unlink before unlocking: a waiter re-checks the inode (see acquire)
    os.close(held[0])


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        _HELD[path][1] = 1
        release_run_lock(path)


class RunStore:
    """One run directory. `log_metric` appends a row to metrics.jsonl with the run's fixed fields filled in.

    Opening it for writing takes the run's lock (see `acquire_run_lock`); `close()` (or leaving a `with` block,
    or the process exiting) releases it. Under torch.distributed only rank 0 ($RANK unset or 0) takes it."""

    def __init__(
        self,
        root: str | Path,
        suite: str,
        run_id: str,
        *,
        seed: int,
        config: dict,
        device: str,
        lock: bool | None = None,
    ):
        self.dir = Path(root) / suite / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.suite, self.run_id, self.seed, self.device = suite, run_id, seed, device
        self.config_hash = config_hash(config)
        if lock is None:
            lock = os.environ.get("RANK", "0") == "0"
        self._lock = acquire_run_lock(self.dir) if lock else None
        try:
            self._open(config, device)
        except BaseException:
            self.close()
            raise

    def _open(self, config: dict, device: str) -> None:
        cfg_path = self.dir / "config.json"
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise CorruptInputError(
                    f"{cfg_path} is not valid JSON ({e}); the run directory is damaged"
                ) from None
            if config_hash(old) != self.config_hash:
                raise OptionError(
                    f"{self.dir} holds a run with a different configuration; choose another --run-id or --out"
                )
        else:
            atomic_write_json(cfg_path, config)
        atomic_write_json(self.dir / "env.json", env_info(device))

    def close(self) -> None:
        if self._lock is not None:
            release_run_lock(self._lock)
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        created = not self.metrics_path.exists()
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.dir)
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
