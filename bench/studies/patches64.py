"""`invoke study --suite patches64 --seeds 0,1,2`: one command for the embedded study.

1. For each seed, `invoke bench`'s runner (bench.runner.run) into ONE store (default results/study-<suite>/);
   a seed whose run already finished every backbone is skipped, an interrupted one resumes from its checkpoints
   (the runner's own resume: same arguments, same run id).
2. Bootstrap rows within each seed: every evaluation's samples (the ADM npz the runner leaves in
   <run>/<backbone>/samples/) rescored with `fid_ci` (bench.metrics' bootstrap over the sample features, the
   suite's extractor and reference), logged as fid_ci_low / fid_ci_high / fid_boot_std rows beside the FID row.
   Skipped where the suite already logs them or they are there (resumable).
3. The report (bench.report.build_reports) of that store into <reports>/<suite>/: leaderboard with intervals
   across seeds, per-seed bootstrap intervals, convergence curves, last-epoch sample grids, the claims table and
   the budget table.

Budget options (`epochs`, `num_samples`, `sample_steps`) lower or raise the suite's; they are the runner's own
options, so they enter every run's config.json (eval epochs, samples per evaluation, recipe epochs) and args.json,
and the study records them with its command in <store>/<suite>/study.json; the report's budget table shows them.
A store holding runs at another budget is refused (its report would mix budgets).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from bench.errors import OptionError
from bench.progress import log

BUDGET_KEYS = ("epochs", "num_samples", "sample_steps")
CI_METRICS = ("fid_ci_low", "fid_ci_high", "fid_boot_std")


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """'0,1,2' (or '0 1 2', or a sequence) -> [0, 1, 2]; distinct non-negative integers, at least one."""
    items = seeds.replace(",", " ").split() if isinstance(seeds, str) else list(seeds)
    try:
        out = [int(s) for s in items]
    except ValueError:
        raise OptionError(f"--seeds {seeds!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise OptionError(f"--seeds {seeds!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return out


def _runs(store: Path, suite: str) -> list[Path]:
    return sorted(p.parent for p in (store / suite).glob("*/args.json"))


def _args(run: Path) -> dict:
    try:
        return json.loads((run / "args.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _finished(run: Path, backbones: Sequence[str]) -> bool:
    from bench.store import read_metrics

    done = {r["backbone"] for r in read_metrics(run / "metrics.jsonl") if r.get("phase") == "run"}
    return set(backbones) <= done


def check_store(store: Path, suite: str, budget: dict, backbones: str | None) -> None:
    """Refuse a store whose runs of this suite used another budget or backbone list."""
    want = {**{k: budget.get(k) for k in BUDGET_KEYS}, "backbones": backbones or None}
    for run in _runs(store, suite):
        a = _args(run)
        have = {k: a.get(k) or None for k in (*BUDGET_KEYS, "backbones")}
        if have != want:
            diff = ", ".join(f"{k} {have[k]} (asked {want[k]})" for k in want if have[k] != want[k])
            raise OptionError(
                f"{run} was run with another budget ({diff}); pass another --out or the same budget options"
            )


def add_bootstrap_rows(run_dir: Path, suite, n_boot: int = 200, device: str = "cpu") -> int:
    """fid_ci rows for every evaluation of the run that has its samples npz and no interval yet; returns how
    many evaluations were rescored. The rescored FID must equal the logged one (same samples, same features)."""
    from bench.grids import samples_path
    from bench.metrics import evaluate, get_extractor
    from bench.runner import RunData
    from bench.store import RunStore, read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    have = {(r["backbone"], r["epoch"], r.get("protocol")) for r in rows if r["metric"] in CI_METRICS}
    todo = [r for r in rows if r["phase"] == "eval" and r["metric"] == "fid" and
            (r["backbone"], r["epoch"], r.get("protocol")) not in have]  # fmt: skip
    todo = [r for r in todo if samples_path(run_dir / r["backbone"], r["epoch"], r.get("protocol")).is_file()]
    if not todo:
        return 0
    config = json.loads((run_dir / "config.json").read_text())
    extractor = get_extractor(suite.extractor, device=device)
    from bench.metrics import compute_reference

    reference = compute_reference(RunData(suite, config.get("seed", 0)).reference(), extractor)
    fields = ("epoch", "step", "images_seen", "train_flops", "n_samples", "extractor", "sampler", "steps", "nfe",
              "guidance", "protocol", "labels")  # fmt: skip
    with RunStore(run_dir.parent.parent, run_dir.parent.name, run_dir.name, seed=config.get("seed", 0),
                  config=config, device=rows[0].get("device") or device) as store:  # fmt: skip
        for r in todo:
            npz = samples_path(run_dir / r["backbone"], r["epoch"], r.get("protocol"))
            out = evaluate(str(npz), reference, extractor=extractor, metrics=("fid", "fid_ci"), n_boot=n_boot,
                           seed=int(config.get("seed", 0)), device=device)  # fmt: skip
            if abs(out["fid"] - r["value"]) > 1e-3 * max(1.0, abs(r["value"])):  # float32 batching noise only
                raise RuntimeError(
                    f"{npz}: rescored FID {out['fid']:.6g} differs from the logged {r['value']:.6g}"
                )
            for m in CI_METRICS:
                store.log_metric(r["backbone"], "eval", m, out[m], **{k: r.get(k) for k in fields})
            log.info(f"[{r['backbone']}] epoch {r['epoch']}: FID {out['fid']:.4g} "
                     f"[{out['fid_ci_low']:.4g}, {out['fid_ci_high']:.4g}] ({n_boot} bootstrap draws)")  # fmt: skip
    return len(todo)


def run_study(suite: str = "patches64", seeds: str | Sequence[int] = (0, 1, 2), out: str | None = None,
              reports: str = "reports", backbones: str | None = None, device: str = "cpu", epochs: int | None = None,
              num_samples: int | None = None, sample_steps: int | None = None, n_boot: int = 200,
              make_plots: bool = True, command: str = "") -> int:  # fmt: skip
    """Run every seed (skipping finished ones), add bootstrap rows, build <reports>/<suite>/. 0 on success."""
    from bench.metrics import NonFiniteSamplesError
    from bench.report import build_reports
    from bench.runner import BenchArgs, build_suite, plan, run
    from bench.store import atomic_write_json

    seed_list = parse_seeds(seeds)
    budget = {
        "epochs": epochs or None,
        "num_samples": num_samples or None,
        "sample_steps": sample_steps or None,
    }
    for k, v in budget.items():
        if v is not None and int(v) <= 0:
            raise OptionError(f"--{k.replace('_', '-')} must be positive, got {v}")
    if n_boot < 2:
        raise OptionError(f"--boot must be at least 2, got {n_boot}")
    store = Path(out or f"results/study-{suite}")
    args = [BenchArgs(suite=suite, backbones=backbones or None, out=str(store), seed=s, device=device, **budget)
            for s in seed_list]  # fmt: skip
    s0, names, _ = plan(args[0])  # every input checked before any work
    check_store(store, s0.name, budget, backbones)
    default = build_suite(BenchArgs(suite=suite))
    atomic_write_json(store / s0.name / "study.json", {
        "command": command, "suite": s0.name, "seeds": seed_list, "backbones": list(names), "n_boot": n_boot,
        "budget": {"epochs": max(s0.eval_epochs) if s0.eval_epochs else None, "eval_epochs": list(s0.eval_epochs),
                   "num_samples": s0.n_eval_samples, "sample_steps": s0.sample_steps},
        "suite_default": {"epochs": max(default.eval_epochs) if default.eval_epochs else None,
                          "eval_epochs": list(default.eval_epochs), "num_samples": default.n_eval_samples},
        "options": {k: v for k, v in budget.items() if v is not None},
    })  # fmt: skip
    code, t0, diverged = 0, time.perf_counter(), []
    for a in args:
        done = [r for r in _runs(store, s0.name) if _args(r).get("seed") == a.seed and _finished(r, names)]
        if done:
            log.info(f"study: seed {a.seed} already finished in {done[0]}; skipping")
        else:
            log.info(f"study: seed {a.seed} ({len(names)} backbones) into {store}")
            try:
                rc = run(a)
            except NonFiniteSamplesError as e:  # a family diverged in this seed: the other seeds still run
                log.info(f"study: seed {a.seed}: {e}")
                diverged.append(f"seed {a.seed}: {e}")
                rc = 0
            if rc:
                log.info(f"study: seed {a.seed} finished with failures (exit {rc}); its rows are kept")
                code = rc
        if "fid_ci" not in s0.metrics:
            for r in _runs(store, s0.name):
                if _args(r).get("seed") == a.seed:
                    add_bootstrap_rows(r, s0, n_boot, device)
    paths = build_reports(store, reports, [s0.name], make_plots=make_plots)
    if diverged:  # reported after the report is built: the rows of every seed are in it
        raise NonFiniteSamplesError("; ".join(diverged))
    log.info(f"study: {len(seed_list)} seed(s) in {time.perf_counter() - t0:.0f}s; report {Path(reports) / s0.name}"
             f" ({len(paths)} files)")  # fmt: skip
    return code


__all__ = ["run_study", "parse_seeds", "add_bootstrap_rows", "check_store"]
