"""Families in parallel on one CPU machine: `invoke bench --jobs N`.

Small models keep two cores only part busy from one process (one family's ops are too small for the intra-op
pool: a smoke run used 0.83 of 2 cores), so on CPU the run's families are split into N worker processes, each
with cores / N threads ($GENBENCH_WORKER_THREADS overrides). Workers are `python -m bench.runner` on a subset of the backbones, writing into the
parent's run directory under the parent's lock (GENBENCH_WORKER_OF names it); each family is computed by one
process exactly as in a serial run, so its metrics depend only on (seed, family, thread count). Families that
share a frozen tokenizer (`Tokenizer.shared_key`: REPA, SiT and STARFlow's SD-VAE stand-in) go to the same
worker, in suite order, so the tokenizer is trained once. Throughput is measured afterwards by the parent, one
family at a time, so speed numbers never include another family's load.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

WORKER_ENV = "GENBENCH_WORKER_OF"  # set in a worker: the run directory whose lock its parent holds


def is_worker() -> bool:
    return bool(os.environ.get(WORKER_ENV))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def groups(names, bbs) -> list[list[str]]:
    """Backbones that share a tokenizer stay together (in suite order); the rest are one group each."""
    out, by_key = [], {}
    for n in names:
        key = getattr(bbs[n].tokenizer, "shared_key", None)
        if key is None:
            out.append([n])
        elif key in by_key:
            by_key[key].append(n)
        else:
            by_key[key] = [n]
            out.append(by_key[key])
    return out


def _cost(group, bbs) -> float:
    """Relative cost of a group: one unit per family, one more per tokenizer it trains (stage 1)."""
    trains = any(bbs[n].tokenizer.trainable and bbs[n].recipe.stage1_epochs > 0 for n in group)
    return len(group) + (1.0 if trains else 0.0)


def assign(names, bbs, jobs: int) -> list[list[str]]:
    """Groups -> at most `jobs` workers, largest first onto the least loaded, ties to the one with fewer families
    (greedy); suite order kept inside."""
    order = {n: i for i, n in enumerate(names)}
    gs = sorted(groups(names, bbs), key=lambda g: (-_cost(g, bbs), order[g[0]]))
    load, out = [0.0] * jobs, [[] for _ in range(jobs)]
    for g in gs:
        j = min(range(jobs), key=lambda k: (load[k], len(out[k]), k))
        out[j] += g
        load[j] += _cost(g, bbs)
    return [sorted(w, key=order.get) for w in out if w]


def resolve_jobs(requested: int, device: str, world: int, n_groups: int, suite) -> int:
    """0 = auto: for the embedded suites on CPU without torchrun, one worker per group up to the number of cores;
    else 1. Workers rebuild the suite from its name, so only the built-in suites (bench.suites) can have them."""
    from bench.suites import BUILTIN, SUITES

    if requested < 0:
        from bench.errors import OptionError

        raise OptionError(f"--jobs must be >= 0 (0 = auto), got {requested}")
    builtin = BUILTIN.get(suite.name)
    if device != "cpu" or world > 1 or builtin is None or SUITES.get(suite.name) is not builtin:
        return 1
    if requested == 0 and suite.data != "embedded":
        return 1
    jobs = requested or min(cpu_count(), n_groups)
    return max(1, min(jobs, n_groups))


def _die_with_parent() -> None:  # a SIGKILLed parent must not leave workers writing into its run
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_workers(assignment: list[list[str]], argv: list[str], run_dir: Path, log) -> int:
    """Start one `python -m bench.runner` per worker and wait; returns the worst exit code (2 > 1 > 0)."""
    threads = int(os.environ.get("GENBENCH_WORKER_THREADS") or max(1, cpu_count() // len(assignment)))
    procs = []
    for names in assignment:
        env = {**os.environ, WORKER_ENV: str(run_dir), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}  # fmt: skip
        cmd = [sys.executable, "-m", "bench.runner", *argv, "--backbones", ",".join(names), "--jobs", "1"]
        log.info(f"job {len(procs)}: {', '.join(names)} ({threads} thread{'s' * (threads > 1)})")
        procs.append(
            subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        )
    try:
        codes = [p.wait() for p in procs]
    except BaseException:  # Ctrl-C / SIGTERM: stop the workers too (their checkpoints let --resume continue)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    if 2 in codes:
        return 2
    return 1 if any(codes) else 0
