"""Progress for long loops: rate and ETA on the terminal (stderr), the same lines in the run's log file."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("genbench")


def setup_logging(log_file: Path | None = None) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in log.handlers
    ):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    if log_file is not None:
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class Progress:
    """`with Progress("train repa", total=N, unit="img") as p: p.update(k, loss=...)` logs every `every` s."""

    def __init__(self, desc: str, total: int, unit: str = "it", every: float = 5.0, min_time: float = 0.0):
        # min_time: stay silent for loops that finish faster than this (e.g. small feature extractions)
        self.desc, self.total, self.unit, self.every, self.min_time = desc, total, unit, every, min_time
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or (self.done >= self.total and now - self.t0 >= self.min_time):
            self.last = now
            self._emit(info)

    def _emit(self, info: dict) -> None:
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        pct = 100.0 * self.done / max(1, self.total)
        log.info(
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%) {rate:.1f} {self.unit}/s elapsed {_fmt_time(el)} ETA {_fmt_time(eta) if eta == eta else '?'} {extra}".rstrip()
        )

    def __exit__(self, *exc):
        return False
