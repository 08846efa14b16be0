"""Throughput, memory and model FLOPs utilisation.

Two entry points:
- `measure_backbone(bb, store, ...)`: the embedded suites' per-backbone measurement (train img/s, sampling img/s
  and latency per batch size, peak memory), timed on copies so measuring never changes the trained weights.
- `run_throughput_suite(...)`: the `imagenet256-throughput` suite. Every family at paper size (REPA SiT-XL/2,
  LightningDiT-XL/1 + VA-VAE f16d32, FAE + its XL generator and decoders, STARFlow 1.4B, TARFlow ImageNet-64)
  with RANDOM weights (speed does not depend on weight values; no weights files needed) on synthetic inputs of
  the exact shapes: training img/s at the recipe's per-GPU batch (bf16 autocast, fused SDPA, eager and
  torch.compile), peak memory, MFU (counted FLOPs / s over the bf16 dense peak, both the peak measured by a
  large matmul in the same run and the datasheet's); one full paper sampler call (all NFEs, guidance
  included) plus decoding per batch size: latency, img/s, sampling MFU; STARFlow sequential (KV cache) vs
  block Jacobi: img/s and the per-image max deviation between them. `--preset tiny` runs the same code at
  tiny sizes on CPU (CI). Rows go to <run dir>/throughput.jsonl as they are measured (partial results
  survive a kill) and to the results store; `bench.throughput_report` writes tables, goals and plots.

FLOPs are counted, not estimated: torch's FlopCounterMode over one eager training step (forward + backward,
encoder features included where the recipe computes them online) and over one generator forward and one
decode at batch 1 (sampling FLOPs = forward-equivalents of the sampler call x forward FLOPs + decode FLOPs).
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import time
from pathlib import Path

import torch

from baselines.api import Backbone, randn_per_sample, sample_generators
from bench.progress import log, setup_logging
from bench.throughput_run import Family, sync, synthetic_batch, train_step


def _peak_mb(device: str) -> tuple[str, float]:
    if device.startswith("cuda"):
        return "peak_mem_mb", torch.cuda.max_memory_allocated() / 2**20
    # CPU: the process's peak resident set (includes the interpreter and data), labelled as such
    return "peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the embedded suites' measurement (called by bench/train.py) --------------------------------------------
def train_images_per_second(
    bb: Backbone, batch: int, image_size: int, num_classes: int, device: str, steps: int = 5, warmup: int = 2
) -> float:
    gen = copy.deepcopy(bb.generator).train()
    fam = Family(bb.name, "", image_size, per_gpu_batch=batch)
    inputs = synthetic_batch(bb, fam, batch, num_classes, device)
    opt = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-6)
    step = train_step(bb, gen, opt, inputs, contextlib.nullcontext, device)
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def sample_latency(
    bb: Backbone, batch: int, image_size: int, num_classes: int, device: str, sampler, repeats: int = 1
) -> float:
    """Seconds to generate one batch of images (generator sampling + decode), after one warm-up call."""
    shape = bb.tokenizer.latent_shape(image_size)
    gens = sample_generators(0, range(batch))
    noise = randn_per_sample(gens, shape).to(device)
    labels = (torch.arange(batch) % num_classes).to(device)
    has_steps = "steps" in sampler.field_names()
    small = sampler.replace(steps=min(2, sampler.steps)) if has_steps else sampler
    bb.sample_images(labels, noise, gens, small)  # warm-up (allocations, compilation)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        bb.sample_images(labels, noise, gens, sampler)
    sync(device)
    return (time.perf_counter() - t0) / repeats


def measure_backbone(bb: Backbone, store, name: str, suite, device: str, seed: int = 0) -> dict:
    r = bb.recipe
    sampler = bb.sampler
    nfe = bb.generator.nfe(sampler)
    d = bb.generator.describe(sampler)
    out = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    params = sum(p.numel() for p in bb.generator.parameters())
    store.log_metric(name, "throughput", "params", params, device=device)
    store.log_metric(
        name,
        "throughput",
        "tokenizer_params",
        sum(p.numel() for p in bb.tokenizer.parameters()),
        device=device,
    )
    store.log_metric(name, "throughput", "flops_per_forward", bb.generator.flops_per_image(), device=device)
    tr = train_images_per_second(bb, r.batch_size, suite.image_size, suite.num_classes, device)
    store.log_metric(name, "throughput", "train_img_per_s", tr, n_samples=r.batch_size, device=device)
    out["train_img_per_s"] = tr
    for b in suite.throughput_batch_sizes:
        lat = sample_latency(bb, b, suite.image_size, suite.num_classes, device, sampler)
        fields = dict(n_samples=b, sampler=d["sampler"], steps=d["steps"], nfe=nfe, device=device)
        store.log_metric(name, "throughput", "sample_latency_s", lat, **fields)
        store.log_metric(name, "throughput", "sample_img_per_s", b / lat, **fields)
        out["sample_img_per_s"] = b / lat
    key, mb = _peak_mb(device)
    store.log_metric(name, "throughput", key, mb, device=device)
    log.info(
        f"[{name}] throughput: train {tr:.1f} img/s, sampling {out['sample_img_per_s']:.1f} img/s (nfe {nfe}), {key} {mb:.0f}"
    )
    return out


# --- the imagenet256-throughput suite: `invoke bench --suite imagenet256-throughput` and the GPU script ----------
SUITE = "imagenet256-throughput"
STORE_METRICS = {  # (phase, metric in the row) -> store metric name
    ("train", "img_per_s"): "train_img_per_s", ("train", "mfu"): "train_mfu", ("train", "peak_mem_mb"): "peak_mem_mb",
    ("sample", "img_per_s"): "sample_img_per_s", ("sample", "latency_s"): "sample_latency_s",
    ("sample", "mfu"): "sample_mfu", ("build", "params"): "params", ("build", "tokenizer_params"): "tokenizer_params",
}  # fmt: skip


def _store_rows(store, row: dict) -> None:
    """The headline numbers also go to the results store, so `invoke report` shows them beside the FIDs."""
    if row["status"] != "ok":
        return
    for (phase, key), metric in STORE_METRICS.items():
        if row["phase"] == phase and row.get(key) is not None:
            name = metric + ("_compiled" if row.get("compile") and phase == "train" else "")
            store.log_metric(row["backbone"], "throughput", name, row[key], n_samples=row.get("batch_size"),
                             nfe=row.get("nfe"), device=row["device"])  # fmt: skip


def run_throughput_suite(backbones: str | None = None, out: str = "results", seed: int = 0, device: str = "cuda",
                         run_id: str | None = None, *, preset: str | None = None, report_dir: str | None = None,
                         kernels_json: str | None = None, command: str = "", **plan_fields) -> int:  # fmt: skip
    """Measure the suite's families into results/imagenet256-throughput/<run_id>/ (throughput.jsonl, the
    store's metrics.jsonl, throughput.md/.json/.png) and, with `report_dir`, the same tables there.
    preset: "paper" (default on CUDA) or "tiny" (default on CPU). Returns 1 if any measurement failed."""
    import dataclasses

    from bench.errors import OptionError
    from bench.kernels.roofline import device_roofline, slug
    from bench.store import RunStore
    from bench.suites import check_output_dir
    from bench.throughput_report import write_report
    from bench.throughput_run import PAPER_FAMILIES, Plan, ThroughputRun

    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise OptionError(
            f"--device {device}: CUDA is not available (on CPU the tiny preset runs: --device cpu)"
        )
    if not cuda and device != "cpu":
        raise OptionError(f"unknown device {device!r}; use cpu or cuda[:N]")
    preset = preset or ("paper" if cuda else "tiny")
    if preset not in ("paper", "tiny"):
        raise OptionError(f"unknown throughput preset {preset!r}; known: paper, tiny")
    if preset == "paper" and not cuda:
        raise OptionError(
            "the paper-size throughput suite needs a GPU (--device cuda); on CPU use --preset tiny"
        )
    names = tuple(b.strip() for b in (backbones or "").split(",") if b.strip()) or tuple(PAPER_FAMILIES)
    unknown = [n for n in names if n not in PAPER_FAMILIES]
    if unknown:
        raise OptionError(
            f"unknown backbone(s) {', '.join(unknown)} for {SUITE}; known: {', '.join(PAPER_FAMILIES)}"
        )
    known_fields = {f.name for f in dataclasses.fields(Plan)} - {"preset", "families", "seed"}
    bad = sorted(set(plan_fields) - known_fields)
    if bad:
        raise OptionError(f"unknown throughput option(s) {bad}; known: {sorted(known_fields)}")
    plan = Plan(preset=preset, families=names, seed=seed, dtype="bf16" if cuda else "fp32", **plan_fields)
    root = check_output_dir(out)
    config = {"suite": SUITE, "device": device, "plan": dataclasses.asdict(plan)}
    run_id = run_id or f"{preset}-{slug(device)}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = RunStore(root, SUITE, run_id, seed=seed, config=config, device=device)
    rows_path = store.dir / "throughput.jsonl"
    rows_path.write_text("")
    setup_logging(store.dir / "log.txt")
    log.info(f"{SUITE}: preset {preset}, {', '.join(names)} on {device}; rows -> {rows_path}")
    roof = device_roofline(torch.device(device), quick=True)
    (store.dir / "roofline.json").write_text(json.dumps(roof, indent=1) + "\n")
    log.info(
        f"measured bf16 matmul peak {roof['peak_flops_bf16'] / 1e12:.1f} TFLOP/s, copy {roof['copy_bandwidth'] / 1e9:.0f} GB/s"
    )

    def sink(row: dict) -> None:
        with open(rows_path, "a") as f:  # one line per row, flushed: a killed run keeps what it measured
            f.write(json.dumps(row, default=str) + "\n")
        _store_rows(store, row)

    run = ThroughputRun(plan, device, sink, roof)
    num_classes = 1000 if preset == "paper" else 8
    # Pass 1: the first family completely, every other one eager (training, sampling sweep, Jacobi); pass 2:
    # compiled training of the others, in the same priority order, with what the budget leaves (compilation is
    # the slow part; a budgeted run puts the family whose goals need it first).
    eager = tuple(c for c in plan.compile_modes if not c)
    for i, name in enumerate(names):
        run.family(name, num_classes, compile_modes=plan.compile_modes if i == 0 else eager)
    if True in plan.compile_modes:
        for name in names[1:]:
            run.family(name, num_classes, phases=("train",), compile_modes=(True,))
    from bench.throughput_report import read_rows

    rows = read_rows(rows_path)
    command = command or f"invoke bench --suite {SUITE} --device {device}"
    for d in {store.dir, Path(report_dir) if report_dir else store.dir}:
        paths = write_report(rows, roof, d, command, kernels_json)
        log.info(f"wrote {', '.join(str(p) for p in paths)}")
    failed = [r for r in rows if r["status"].startswith("error")]
    for r in failed:
        log.info(f"FAILED [{r['backbone']}] {r['phase']} batch {r.get('batch_size')}: {r['status']}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.throughput`: the suite with its budget knobs (what scripts/gpu_check.sh runs)."""
    import argparse
    import shlex
    import sys

    from bench.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=run_throughput_suite.__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default=None, choices=("paper", "tiny"))
    p.add_argument("--backbones", default="", help="comma list (default: all five families)")
    p.add_argument(
        "--batch-sizes", default="", help="sampling batch sizes, e.g. 1,16,64 (default 1,4,16,64,256)"
    )
    p.add_argument(
        "--compile", default="both", choices=("both", "on", "off"), help="training with torch.compile"
    )
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--jacobi-batch", type=int, default=4)
    p.add_argument("--sampler-steps", type=int, default=0, help="override the paper's steps (dry runs only)")
    p.add_argument(
        "--budget-s", type=float, default=0, help="stop starting measurements after this many seconds"
    )
    p.add_argument("--out", default="results")
    p.add_argument("--run-id", default="")
    p.add_argument("--report-dir", default="", help="also write the tables and plots here")
    p.add_argument("--kernels-json", default="", help="a kernels --latency JSON whose goals join the table")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    fields = dict(train_steps=a.train_steps, jacobi_batch=a.jacobi_batch,
                  compile_modes={"both": (False, True), "on": (True,), "off": (False,)}[a.compile])  # fmt: skip
    if a.batch_sizes:
        try:
            fields["sample_batch_sizes"] = tuple(int(b) for b in a.batch_sizes.split(","))
        except ValueError:
            print(
                f"error: --batch-sizes {a.batch_sizes!r}: expected a comma list of integers", file=sys.stderr
            )
            return 2
    if a.sampler_steps:
        fields["sampler_steps"] = a.sampler_steps
    if a.budget_s:
        fields["budget_s"] = a.budget_s
    try:
        return run_throughput_suite(a.backbones or None, a.out, a.seed, a.device, a.run_id or None, preset=a.preset,
                                    report_dir=a.report_dir or None, kernels_json=a.kernels_json or None,
                                    command="python -m bench.throughput " + shlex.join(argv), **fields)  # fmt: skip
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
