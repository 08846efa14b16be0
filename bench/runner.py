"""`invoke bench`: validate everything up front, then train/evaluate/measure each backbone of a suite into the
results store, and close with a summary table.

`python -m bench.runner ARGS` is the same entry point as a plain command line: `invoke bench --nproc N` re-runs
it under torchrun (bench.distributed), every process executes `run_bench`, rank 0 writes the store."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tabulate import tabulate

from bench import distributed as D
from bench import jobs as jobs_mod
from bench.errors import MissingInputError, OptionError, UserError, require_positive
from bench.evaluate import sampler_protocols
from bench.progress import log, setup_logging
from bench.store import RunStore, config_hash, read_metrics
from bench.suites import SuiteError, check_output_dir, check_requirements, dry_run_suite, get_suite, resolve


@dataclass(frozen=True)
class BenchArgs:
    """Everything `invoke bench` accepts (tasks.py and the torchrun re-invocation build one of these)."""

    suite: str = "smoke"
    backbones: str | None = None
    out: str = "results"
    seed: int = 0
    device: str = "cpu"
    run_id: str | None = None
    preset: str | None = None  # "tiny": the imagenet256 dry run
    epochs: int | None = None
    num_samples: int | None = None
    image_size: int | None = None
    sample_steps: int | None = None
    micro_batch: int | None = None
    ckpt_every: int = 0
    precision: str = "recipe"
    compile: bool = False
    fsdp: bool = False
    labels: str = "equal"
    from_release: bool = False
    # DataLoader workers per rank (imagenet suites); None: bench.step_loader's default
    workers: int | None = None
    jobs: int = 0  # worker processes for the families on CPU (bench.jobs); 0 = auto
    recipe: str | None = None  # "repa.stage1_lr=1e-3,all.epochs=8": recipe overrides (they enter config.json)
    # "tokenizer": stage 1 and the floor rows only (not in config: the same run without it continues)
    stop_after: str | None = None


def _folder_classes(folder: str | None) -> int | None:
    """The number of class folders of an ImageNet-layout folder (None when it is not one: checked later)."""
    if not folder or not Path(folder).is_dir():
        return None
    n = sum(1 for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    return n or None


def recipe_overrides(suite, text: str) -> dict:
    """--recipe 'repa.stage1_lr=1e-3,all.epochs=8' -> the suite's overrides with these merged in. Values are Python
    literals (numbers, strings, tuples, None); an unknown field is refused by bench.preflight like a suite's own."""
    out = {b: dict(v) for b, v in suite.overrides.items()}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        target, eq, raw = item.partition("=")
        bb, dot, field = target.strip().partition(".")
        if not (eq and dot and bb and field):
            raise OptionError(f"--recipe {item!r}: expected BACKBONE.FIELD=VALUE, e.g. repa.stage1_lr=1e-3")
        if bb != "all" and bb not in suite.backbones:
            raise OptionError(f"--recipe {item!r}: unknown backbone {bb!r} in suite {suite.name}; known: all, {', '.join(suite.backbones)}")  # fmt: skip
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()  # a bare word: a string option (lr_schedule=cosine)
        for b in suite.backbones if bb == "all" else (bb,):
            out.setdefault(b, {})[field.strip()] = value
    return out


def build_suite(a: BenchArgs):
    # the command line's sizes (None or 0: the suite's own), named as the user typed them
    require_positive(**{"--epochs": a.epochs, "--num-samples": a.num_samples, "--image-size": a.image_size,
                        "--sample-steps": a.sample_steps, "--micro-batch": a.micro_batch})  # fmt: skip
    if a.ckpt_every < 0:
        raise OptionError(f"--ckpt-every must be >= 0 (0: checkpoint every epoch only), got {a.ckpt_every}")
    suite = get_suite(a.suite)
    if a.preset not in (None, "", "paper", "tiny"):
        raise OptionError(f"unknown --preset {a.preset!r}; known: paper, tiny")
    if a.preset == "tiny":
        if suite.name != "imagenet256":
            raise OptionError(
                "--preset tiny is the imagenet256 dry run; the embedded suites are tiny already"
            )
        classes = None if a.from_release else _folder_classes(os.environ.get("GENBENCH_IMAGENET"))
        suite = dry_run_suite(
            a.epochs or 2, a.num_samples or 64, a.image_size or 256, a.sample_steps, classes
        )
    else:
        if a.epochs:
            suite = replace(suite, eval_epochs=tuple(e for e in suite.eval_epochs if e < a.epochs) + (a.epochs,),
                            overrides={b: {**suite.overrides.get(b, {}), "epochs": a.epochs} for b in suite.backbones})  # fmt: skip
        if a.num_samples:
            suite = replace(suite, n_eval_samples=a.num_samples)
        if a.image_size:
            suite = replace(suite, image_size=a.image_size)
        if a.sample_steps:
            suite = replace(suite, sample_steps=a.sample_steps)
    if a.recipe:
        suite = replace(suite, overrides=recipe_overrides(suite, a.recipe))
    if a.stop_after not in (None, "", "tokenizer"):
        raise OptionError(f"unknown --stop-after {a.stop_after!r}; known: tokenizer")
    if a.labels not in ("equal", "random"):
        raise OptionError(f"unknown --labels {a.labels!r}; known: equal, random")
    if a.precision not in ("recipe", "no", "bf16", "fp16"):
        raise OptionError(f"unknown --precision {a.precision!r}; known: recipe, no, bf16, fp16")
    return suite


def plan(a: BenchArgs):
    """All checks that can fail before any work: suite, backbones, output dir, data/weights, device."""
    suite = build_suite(a)
    names = resolve(suite, a.backbones)
    device = a.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"--device {device} requested but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SuiteError(f"unknown device {device!r}; use cpu or cuda[:N]")
    if a.from_release:  # no training: the reference, the extractor and the released files
        from bench.release import RELEASES, check_release_files

        if suite.data != "imagenet":
            raise OptionError("--from-release scores released ImageNet checkpoints: use --suite imagenet256")
        released = tuple(n for n in names if n in RELEASES)
        if a.backbones and len(released) < len(names):
            raise OptionError(f"no released checkpoint for {', '.join(n for n in names if n not in RELEASES)}; released: {', '.join(sorted(RELEASES))}")  # fmt: skip
        names = released
        suite = replace(suite, requires={k: v for k, v in suite.requires.items() if v in ("GENBENCH_ADM_REF", "GENBENCH_INCEPTION")})  # fmt: skip
        check_requirements(suite, device)
        check_release_files(names)
    elif suite.data == "imagenet" and a.preset != "tiny":  # paper presets: every weights file they load, too
        from bench.paper_inputs import SD_VAE_ENV, WEIGHTS_ENV, paper_input_problems

        generic = replace(suite, requires={k: v for k, v in suite.requires.items() if v not in (SD_VAE_ENV, WEIGHTS_ENV)})  # fmt: skip
        check_requirements(generic, device, extra=paper_input_problems(names))
    else:
        check_requirements(suite, device)
    root = check_output_dir(a.out)
    if suite.data not in ("embedded", "imagenet"):
        raise SuiteError(
            f"suite {suite.name} ({suite.data} data) is measured by `invoke throughput`, not trained"
        )
    return suite, names, root


def _workers(a: BenchArgs, device: str) -> int:
    import os

    from bench.step_loader import default_workers

    if a.workers is not None:
        if int(a.workers) < 0:
            raise OptionError(f"--workers must be >= 0 (0: load in the training process), got {a.workers}")
        return int(a.workers)
    return default_workers(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class RunData:
    """A run's images in memory as [-1, 1] NCHW (bench.data.data_sources: the embedded crops, or an ImageNet-layout
    folder with ADM's center crop at dry-run scale), its reference, and the embedded held-out splits."""

    MAX_IN_MEMORY = 50_000  # beyond this the run must train from the latent cache (bench.latent_cache)

    def __init__(self, suite, seed: int = 0, train: bool = True):
        from bench.data import data_sources

        self.suite = suite
        if train:
            self.sources = data_sources(suite)
        else:  # released checkpoints: only the reference batch
            import os

            self.sources = type("Sources", (), {"reference": Path(os.environ["GENBENCH_ADM_REF"])})()
        self.has_test = suite.data == "embedded"
        # ImageNet trains the generator from the shared latent cache; embedded suites encode in memory
        self.latent_cache = suite.data == "imagenet"
        self._train = None

    def _embedded(self, n_per_class: int, split: str, device):
        from bench.data import embedded_images, to_model_range

        s = self.suite
        images, labels = embedded_images(s.image_size, n_per_class, split, num_classes=s.num_classes)
        return to_model_range(images).to(device), torch.from_numpy(labels).to(device)

    def train(self, device):
        if self._train is None:
            from bench.data import to_model_range

            src = self.sources.train
            if len(src) > self.MAX_IN_MEMORY:
                raise OptionError(
                    f"{src.describe()}: {len(src)} images; more than {self.MAX_IN_MEMORY} need the latent cache "
                    "(bench.latent_cache), which the trainer does not read yet"
                )
            images, labels = src.arrays()
            if int(labels.max()) >= self.suite.num_classes:
                raise OptionError(
                    f"{src.describe()}: {int(labels.max()) + 1} classes; the suite has {self.suite.num_classes}"
                )
            self._train = (to_model_range(images), torch.as_tensor(labels, dtype=torch.long))
        x, y = self._train
        return x.to(device), y.to(device)

    def reference(self):
        """Real images (uint8 NHWC) of an embedded suite, or the path of the ADM reference batch."""
        ref = self.sources.reference
        return ref if isinstance(ref, Path) else ref.arrays()[0]

    def test(self, device):
        return self._embedded(max(8, self.suite.n_ref_per_class // 4), "test", device)

    def probe(self, device):
        return self._embedded(self.suite.n_ref_per_class, "test", device)


class _StoreView:
    """What ranks > 0 see of the run directory (rank 0 owns every write)."""

    def __init__(self, path: Path):
        self.dir = path

    def metrics(self):
        return read_metrics(self.dir / "metrics.jsonl")

    def backbone_dir(self, backbone: str) -> Path:
        return self.dir / backbone

    def log_metric(self, *a, **k):
        return None


def summary_rows(rows: list[dict], names) -> list[list]:
    table = []
    for name in names:
        mine = [r for r in rows if r["backbone"] == name]

        def last(metric, mine=mine):
            cand = [r for r in mine if r["metric"] == metric and r["value"] is not None]
            return cand[-1]["value"] if cand else None

        fids = [r for r in mine if r["metric"] == "fid" and r.get("protocol") in (None, "paper")]
        table.append([
            name,
            fids[0]["value"] if fids else None, fids[-1]["value"] if fids else None,
            max((r["epoch"] or 0) for r in fids) if fids else None,
            last("bits_per_dim"), last("train_img_per_s"), last("sample_img_per_s"),
            (last("params") or 0) / 1e6 if last("params") else None, last("wall_s"),
        ])  # fmt: skip
    return table


SUMMARY_HEADERS = ["backbone", "first FID", "last FID", "epochs", "bits/dim", "train img/s", "sample img/s",
                   "params (M)", "wall (s)"]  # fmt: skip


def _config(a: BenchArgs, suite, bbs: dict) -> dict:
    from bench.train import backbone_config

    cfg = {"suite": suite.name, "seed": a.seed, "device": a.device.split(":")[0],
           "backbones": {n: backbone_config(bb) for n, bb in bbs.items()},
           "eval_epochs": list(suite.eval_epochs), "n_eval_samples": suite.n_eval_samples,
           "extractor": suite.extractor}  # fmt: skip
    # options that change the numbers are part of the configuration (and of the default run id)
    extra = {"preset": a.preset, "image_size": a.image_size if a.preset else None, "sample_steps": suite.sample_steps,
             "micro_batch": a.micro_batch or suite.micro_batch, "precision": a.precision, "labels": a.labels,
             "protocols": list(suite.protocols)}  # fmt: skip
    if any(v not in (None, "recipe", "equal") for k, v in extra.items() if k not in ("protocols", "micro_batch")) or \
            extra["micro_batch"] is not None or suite.protocols != ("paper",):  # fmt: skip
        cfg["options"] = extra
    return cfg


def run_bench(suite_name: str = "smoke", backbones: str | None = None, out: str = "results", seed: int = 0,
              device: str = "cpu", run_id: str | None = None, **options) -> int:  # fmt: skip
    """Run a suite (see BenchArgs for the options); returns 0 when every backbone finished, 1 when one failed
    (an internal bug: its traceback is in the log, the other families still run). A bad input raises a UserError
    (exit 2): before any work where it can be checked, else at once when found, the rows so far kept; NaN/Inf
    samples (a family without its FID) after the other families have run."""
    return run(BenchArgs(suite_name, backbones, out, seed, device, run_id, **options))


def run(a: BenchArgs) -> int:
    if a.suite == "imagenet256-throughput":  # no data, random weights: bench/throughput.py (gpu, #17)
        from bench.throughput import run_throughput_suite

        return run_throughput_suite(a.backbones, a.out, a.seed, a.device, a.run_id)
    from bench.evaluate import suite_reference
    from bench.metrics import NonFiniteSamplesError, get_extractor
    from bench.preflight import check_recipe, check_scoring
    from bench.train import BackboneRun, ReleaseRun, RunOptions, make_backbone

    suite, names, root = plan(a)
    device = D.init(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        if a.from_release:
            from bench.release import load_release

            bbs = {n: load_release(n, preset="tiny" if a.preset == "tiny" else None, num_classes=suite.num_classes, image_size=suite.image_size, device=device)
                   for n in names}  # fmt: skip
        else:
            bbs = {n: make_backbone(suite, n, a.seed) for n in names}  # built once per run
    except FileNotFoundError as e:  # a paper preset's weights (tokenizer, encoder) are local files
        raise MissingInputError(str(e).splitlines()[0]) from None
    config = _config(a, suite, bbs)
    for bb in bbs.values():  # an unknown protocol fails here, before any work, not at the first evaluation
        sampler_protocols(bb, suite.protocols)
    require_positive(n_eval_samples=suite.n_eval_samples, sample_batch_size=suite.sample_batch_size, micro_batch=a.micro_batch,
                     **{f"{n}.{k}": c["recipe"][k] for n, c in config["backbones"].items() for k in ("epochs", "batch_size", "stage1_batch_size")})  # fmt: skip
    for n, bb in bbs.items():  # what the trainer would refuse only at stage 2, refused now
        check_recipe(n, bb.recipe)
    run_id = a.run_id or f"seed{a.seed}-{config_hash(config)[:8]}"
    worker = jobs_mod.is_worker()
    if worker:  # the parent holds the lock and wrote config.json / args.json for the whole run
        run_dir = root / suite.name / run_id
        store = RunStore(root, suite.name, run_id, seed=a.seed, config=json.loads((run_dir / "config.json").read_text()),
                         device=device, lock=False)  # fmt: skip
    elif D.is_main():
        store = RunStore(root, suite.name, run_id, seed=a.seed, config=config, device=device)
        for n in names:
            store.backbone_dir(n)
        (store.dir / "args.json").write_text(json.dumps({k: v for k, v in vars(a).items()}, indent=1) + "\n")
    D.barrier()
    if not D.is_main():
        store = _StoreView(root / suite.name / run_id)
    setup_logging(store.dir / "log.txt" if D.is_main() else None, enabled=D.is_main())
    done = {r["backbone"] for r in store.metrics() if r["phase"] == _done_phase(a)}
    pending = [n for n in names if n not in done]
    n_jobs = 1 if worker else jobs_mod.resolve_jobs(a.jobs, device, D.world(), len(jobs_mod.groups(pending, bbs)), suite)
    if not worker:
        log.info(f"genbench: suite {suite.name}, backbones {', '.join(names)}, run {store.dir}, "
                 + (f"{n_jobs} jobs (worker processes, bench.jobs)" if n_jobs > 1 else f"{D.world()} process(es)"))  # fmt: skip
    torch.manual_seed(a.seed)
    extractor = reference = None
    if D.is_main():
        weights = None
        if suite.extractor == "inception-v3-compat":
            import os

            weights = os.environ.get("GENBENCH_INCEPTION")
    data = RunData(suite, a.seed, train=not a.from_release)
    if D.is_main():  # the parent too: a smoke extractor trained here is cached for the workers
        extractor = get_extractor(suite.extractor, weights=weights, device=device)
        reference = suite_reference(suite, extractor, data.reference())
        # what the first evaluation would refuse (metric, feature width, resolution), refused before training
        check_scoring(suite, extractor, reference, strict_resolution=a.preset != "tiny")
    if n_jobs > 1:
        return _run_parallel(a, suite, names, pending, bbs, store, run_id, n_jobs, device)
    opts = RunOptions(device=device, micro_batch=a.micro_batch or suite.micro_batch, ckpt_every=a.ckpt_every,
                      precision=a.precision, compile=a.compile, fsdp=a.fsdp, labels=a.labels,
                      workers=_workers(a, device), throughput=not worker, stop_after=a.stop_after)  # fmt: skip
    failed, diverged = [], []
    t0 = time.perf_counter()
    for name in names:
        if name not in pending:  # finished before this invocation (this process writes the store from here on)
            log.info(f"[{name}] already complete in {store.dir}; skipping")
            continue
        try:
            kind = ReleaseRun if a.from_release else BackboneRun
            kind(suite, name, store, a.seed, opts, reference, extractor, data, bbs[name]).run()
        except NonFiniteSamplesError as e:  # that family's own result: the others still run, then exit 2
            if D.world() > 1:
                raise
            diverged.append(str(e))
        except UserError as e:  # a bad input found mid-run: stop now (exit 2, one line); rows so far are kept
            if D.is_main():
                log.info(f"[{name}] stopped: {e}", extra={"file_only": True})  # the task prints it
                store.close()
            raise
        except Exception as e:  # one family failing must not lose the others' results; reported below
            if D.world() > 1:
                raise  # the other ranks would wait forever in a collective
            log.info(f"[{name}] FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            failed.append(name)
        bbs[name] = None  # free its memory before the next family
    if D.is_main() and not worker:
        _close(store, names, t0, failed)
    D.shutdown()
    if diverged and not failed:  # an internal bug (exit 1, tracebacks in the log) outranks them
        raise NonFiniteSamplesError("; ".join(diverged))
    return 1 if failed else 0


def _done_phase(a: BenchArgs) -> str:
    """The row phase that marks a family finished: its 'run' row, or with --stop-after tokenizer its floor rows."""
    return "tokenizer" if a.stop_after == "tokenizer" else "run"


def _close(store, names, t0: float, failed) -> None:
    table = summary_rows(store.metrics(), names)
    log.info("\n" + tabulate(table, headers=SUMMARY_HEADERS, floatfmt=".3g", missingval="-"))
    log.info(f"run {store.dir} finished in {time.perf_counter() - t0:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    store.close()  # release the run's lock (an exception releases it at process exit)


def _run_parallel(a: BenchArgs, suite, names, pending, bbs, store, run_id: str, n_jobs: int, device: str) -> int:
    """The families in `n_jobs` worker processes (bench.jobs), then each one's throughput here, uncontended."""
    t0 = time.perf_counter()
    assignment = jobs_mod.assign(pending, bbs, n_jobs)
    argv = args_to_argv(replace(a, run_id=run_id, backbones=None, jobs=0))
    # a worker that meets a bad input (or non-finite samples) prints its one line and exits 2; the others finish
    code = jobs_mod.run_workers(assignment, argv, store.dir, log)
    rows = store.metrics()
    done = {r["backbone"] for r in rows if r["phase"] == _done_phase(a)}
    failed = [n for n in pending if n not in done]
    if suite.throughput_batch_sizes and not a.stop_after:
        from bench.throughput import measure_backbone

        for n in names:
            if n in done and not any(r["backbone"] == n and r["phase"] == "throughput" for r in rows):
                measure_backbone(bbs[n], store, n, suite, device, seed=a.seed)
    _close(store, names, t0, [n for n in failed if code != 2])
    return code or (1 if failed else 0)


def resume_args(run_dir: str | Path, **overrides) -> BenchArgs:
    """The arguments of the run in RUN_DIR (its args.json), so `--resume RUN_DIR` continues it."""
    p = Path(run_dir)
    f = p / "args.json"
    if not f.is_file():
        raise MissingInputError(f"--resume {p}: no args.json there (not a run directory of `invoke bench`)")
    saved = json.loads(f.read_text())
    saved.update(out=str(p.parent.parent), run_id=p.name)
    # how the run executes may change on resume; what it computes may not
    saved.update({k: v for k, v in overrides.items() if k in ("device", "ckpt_every", "compile") and v})
    if overrides.get("workers") is not None:
        saved["workers"] = overrides["workers"]
    return BenchArgs(**{k: v for k, v in saved.items() if k in BenchArgs.__dataclass_fields__})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.runner", description="genbench: run a suite")
    for f, d in BenchArgs.__dataclass_fields__.items():
        flag = "--" + f.replace("_", "-")
        if isinstance(d.default, bool):
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=int if f in ("seed", "epochs", "num_samples", "image_size", "sample_steps", "micro_batch",
                                                   "ckpt_every", "workers", "jobs") else str, default=d.default)  # fmt: skip
    p.add_argument("--resume", default=None, help="continue the run in this directory")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = vars(parser().parse_args(argv))
    resume = ns.pop("resume")
    a = resume_args(resume, **ns) if resume else BenchArgs(**ns)
    try:
        return run(a)
    except UserError as e:
        if D.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not D.is_main() and _peer_lost(e):  # another rank stopped first and said why (bench.torchrun)
            return 1
        raise


def _peer_lost(e: Exception) -> bool:
    """A collective that failed because another rank's process ended (its own message is the one that counts)."""
    text = str(e)
    return isinstance(e, getattr(torch.distributed, "DistNetworkError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer")
    )


def args_to_argv(a: BenchArgs) -> list[str]:
    """The command line of `python -m bench.runner` that reproduces `a` (for the torchrun re-invocation)."""
    argv = []
    for f, d in BenchArgs.__dataclass_fields__.items():
        v = getattr(a, f)
        if v == d.default or v is None:
            continue
        flag = "--" + f.replace("_", "-")
        argv += [flag] if isinstance(v, bool) else [flag, str(v)]
    return argv


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_bench", "run", "plan", "BenchArgs", "SuiteError", "main", "resume_args", "args_to_argv"]
