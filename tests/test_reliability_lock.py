"""One writer per run (a lock file with pid and host, two real processes), atomic store writes on a full disk,
and errors reaching the user as one line + exit code 2 while internal bugs keep their traceback."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import store as store_mod
from bench.errors import DiskFullError, RunLockedError
from bench.store import LOCK_NAME, RunStore, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

HOLDER = """
import sys, time
from bench.store import RunStore
store = RunStore(sys.argv[1], "smoke", "r1", seed=0, config={"holder": 1}, device="cpu")
print("LOCKED", flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("the holder fails")
time.sleep(300)
"""


def _start_holder(root: Path, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), mode], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "LOCKED", p.stderr.read()
    return p


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_writer_fails_at_once_and_a_dead_writers_lock_is_taken_over(tmp_path):
    root = tmp_path / "results"
    holder = _start_holder(root, "sleep")
    run_dir = root / "smoke" / "r1"
    try:
        lock = json.loads((run_dir / LOCK_NAME).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        before = _snapshot(root)
        # a second `invoke bench` on the same run directory: one line, exit code 2, nothing touched
        p = subprocess.run([sys.executable, "-m", "invoke", "bench", "--backbones", "repa", "--out", str(root),
                            "--run-id", "r1"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
        err = p.stderr.strip()
        assert p.returncode == 2, p.stderr
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("error: run directory") and str(run_dir) in err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err
        assert _snapshot(root) == before
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunStore(root, "smoke", "r1", seed=0, config={"holder": 1}, device="cpu", lock=True)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (run_dir / LOCK_NAME).exists()  # SIGKILL: no cleanup ran, the lock file stays behind
    with RunStore(root, "smoke", "r1", seed=0, config={"holder": 1}, device="cpu") as s:
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
        log = (s.dir / "log.txt").read_text()
        assert f"taking over stale lock {run_dir.resolve() / LOCK_NAME} of pid {holder.pid}" in log
        assert "no longer running" in log
    assert not (run_dir / LOCK_NAME).exists()  # released on close


def test_lock_is_released_when_the_writer_dies_of_an_exception(tmp_path):
    holder = _start_holder(tmp_path, "raise")
    _, err = holder.communicate(timeout=120)
    assert holder.returncode == 1 and "the holder fails" in err
    assert not (tmp_path / "smoke" / "r1" / LOCK_NAME).exists()
    RunStore(tmp_path, "smoke", "r1", seed=0, config={"holder": 1}, device="cpu").close()
    assert not (tmp_path / "smoke" / "r1" / "log.txt").exists()  # no takeover message: nothing was stale


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    run_dir = tmp_path / "smoke" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="pid 1 on host elsewhere.*if that process is gone, delete"):
        RunStore(tmp_path, "smoke", "r1", seed=0, config={}, device="cpu")


def test_full_disk_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"a": 1})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=f"disk full while writing {path}"):
        atomic_write_json(path, {"a": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind


BUG = (
    "import sys, bench.runner as r\n"
    "def plan(*a, **k):\n"
    "    raise ZeroDivisionError('an internal bug')\n"
    "r.plan = plan\n"
    "from invoke.main import program\n"
    "program.run(['invoke', 'bench', '--out', sys.argv[1]])\n"
)


def test_internal_bug_keeps_its_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-c", BUG, str(tmp_path)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode not in (0, 2)
    assert (
        "Traceback (most recent call last)" in p.stderr and "ZeroDivisionError: an internal bug" in p.stderr
    )
