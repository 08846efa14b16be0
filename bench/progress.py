"""Progress for long loops: a tqdm bar on an interactive terminal, and every `every` seconds one line with
rate and ETA in the run's log file (and on stderr when it is not a terminal, e.g. CI or `nohup`).

Only rank 0 of a distributed run logs (the other ranks get no handlers from `setup_logging`)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("genbench")


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class _TqdmStream(logging.StreamHandler):
    """stderr handler that prints above an active tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill the run
            self.handleError(record)


def setup_logging(log_file: Path | None = None, enabled: bool = True) -> None:
    """Log to stderr and, with `log_file`, to that file. `enabled=False` (non-zero ranks) silences the logger."""
    log.propagate = False
    if not enabled:
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _TqdmStream) for h in log.handlers):
        h = _TqdmStream(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h.addFilter(_NotFileOnly())
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
    return tqdm.format_interval(max(0.0, s)) if s == s else "?"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """`with Progress("train repa", total=N, unit="img") as p: p.update(k, loss=...)`: a tqdm bar on a terminal,
    a rate/ETA line in the log every `every` s and at the end (min_time: stay silent for loops that finish
    faster than this, e.g. small feature extractions)."""

    def __init__(self, desc: str, total: int, unit: str = "it", every: float = 5.0, min_time: float = 0.0):
        self.desc, self.total, self.unit, self.every, self.min_time = desc, total, unit, every, min_time
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.interactive = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
                        disable=not self.interactive, file=sys.stderr)  # fmt: skip

    def __enter__(self):
        return self

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        self.bar.update(n)
        if info:
            self.bar.set_postfix({k: _fmt(v) for k, v in info.items()}, refresh=False)
        now = time.perf_counter()
        if now - self.last >= self.every or (self.done >= self.total and now - self.t0 >= self.min_time):
            self.last = now
            self._emit(info)

    def _emit(self, info: dict) -> None:
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        pct = 100.0 * self.done / max(1, self.total)
        line = f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%) {rate:.1f} {self.unit}/s elapsed {_fmt_time(el)} ETA {_fmt_time(eta)} {extra}"
        # on a terminal the bar shows the same numbers; the line goes to the log file only
        log.info(line.rstrip(), extra={"file_only": self.interactive})

    def close(self) -> None:
        self.bar.close()

    def __exit__(self, *exc):
        self.close()
        return False
