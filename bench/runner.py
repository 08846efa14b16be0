"""`invoke bench`: validate everything up front, then train/evaluate/measure each backbone of a suite into the
results store, and close with a summary table."""

from __future__ import annotations

import time
import traceback

import torch
from tabulate import tabulate

from bench.errors import require_positive
from bench.progress import log, setup_logging
from bench.store import RunStore, config_hash
from bench.suites import SuiteError, check_output_dir, check_requirements, get_suite, resolve


def plan(suite_name: str, backbones: str | None, out: str, device: str):
    """All checks that can fail before any work: suite, backbones, output dir, data/weights, device."""
    suite = get_suite(suite_name)
    names = resolve(suite, backbones)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"--device {device} requested but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SuiteError(f"unknown device {device!r}; use cpu or cuda[:N]")
    check_requirements(suite, device)
    root = check_output_dir(out)
    if suite.data != "embedded":
        raise SuiteError(
            f"suite {suite.name} ({suite.data} data) is validated but its runner is not implemented in this version; use smoke or patches64"
        )
    return suite, names, root


def summary_rows(rows: list[dict], names) -> list[list]:
    table = []
    for name in names:
        mine = [r for r in rows if r["backbone"] == name]

        def last(metric, mine=mine):
            cand = [r for r in mine if r["metric"] == metric and r["value"] is not None]
            return cand[-1]["value"] if cand else None

        fids = [r for r in mine if r["metric"] == "fid"]
        table.append([
            name,
            fids[0]["value"] if fids else None, fids[-1]["value"] if fids else None,
            max((r["epoch"] or 0) for r in fids) if fids else None,
            last("bits_per_dim"), last("train_img_per_s"), last("sample_img_per_s"),
            (last("params") or 0) / 1e6 if last("params") else None, last("wall_s"),
        ])  # fmt: skip
    return table


SUMMARY_HEADERS = [
    "backbone",
    "first FID",
    "last FID",
    "epochs",
    "bits/dim",
    "train img/s",
    "sample img/s",
    "params (M)",
    "wall (s)",
]


def run_bench(
    suite_name: str = "smoke",
    backbones: str | None = None,
    out: str = "results",
    seed: int = 0,
    device: str = "cpu",
    run_id: str | None = None,
) -> int:
    if suite_name == "imagenet256-throughput":  # no data, random weights: bench/throughput.py (gpu, #17)
        from bench.throughput import run_throughput_suite

        return run_throughput_suite(backbones, out, seed, device, run_id)
    from bench.evaluate import suite_reference
    from bench.metrics import get_extractor
    from bench.train import BackboneRun, backbone_config

    suite, names, root = plan(suite_name, backbones, out, device)
    config = {"suite": suite.name, "seed": seed, "device": device, "backbones": {n: backbone_config(suite, n) for n in names},
              "eval_epochs": list(suite.eval_epochs), "n_eval_samples": suite.n_eval_samples, "extractor": suite.extractor}  # fmt: skip
    require_positive(n_eval_samples=suite.n_eval_samples, sample_batch_size=suite.sample_batch_size, **{f"{n}.{k}": c["recipe"][k] for n, c in config["backbones"].items() for k in ("epochs", "batch_size", "stage1_batch_size")})  # fmt: skip
    run_id = run_id or f"seed{seed}-{config_hash(config)[:8]}"
    store = RunStore(root, suite.name, run_id, seed=seed, config=config, device=device)
    setup_logging(store.dir / "log.txt")
    log.info(f"genbench: suite {suite.name}, backbones {', '.join(names)}, run {store.dir}")
    torch.manual_seed(seed)
    extractor = get_extractor(suite.extractor, device=device)
    reference = suite_reference(suite, extractor)
    failed = []
    t0 = time.perf_counter()
    for name in names:
        if any(r["backbone"] == name and r["phase"] == "run" for r in store.metrics()):
            log.info(f"[{name}] already complete in {store.dir}; skipping")
            continue
        try:
            BackboneRun(suite, name, store, seed, device, reference, extractor).run()
        except Exception as e:  # one family failing must not lose the others' results; reported below
            log.info(f"[{name}] FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            failed.append(name)
    table = summary_rows(store.metrics(), names)
    log.info("\n" + tabulate(table, headers=SUMMARY_HEADERS, floatfmt=".3g", missingval="-"))
    log.info(
        f"run {store.dir} finished in {time.perf_counter() - t0:.0f}s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    store.close()  # release the run's lock (an exception releases it at process exit)
    return 1 if failed else 0


__all__ = ["run_bench", "plan", "SuiteError"]
