"""The command line: the invoke tasks of the project, installed with the package.

`genbench TASK ...` (the console script declared in pyproject.toml) runs them from any directory; in a checkout
`invoke TASK ...` finds the same collection through the thin root tasks.py. Tasks only parse options and call
library functions; every bench.errors.UserError becomes one `error: ...` line and exit code 2, other exceptions
keep their traceback. New tasks go here (and into `namespace` below).
"""

from __future__ import annotations

import functools
import shlex
import sys
from importlib import metadata

from invoke import Collection, Exit, Program, task


def _user_error(e: Exception) -> Exit:
    return Exit(f"error: {e}", code=2)


def _user_errors(fn):
    """Every task turns a bench.errors.UserError into one line + exit code 2; other exceptions keep their traceback."""

    @functools.wraps(fn)  # invoke reads the task's options from the wrapped signature
    def wrapper(c, *args, **kwargs):
        from bench.errors import UserError

        try:
            return fn(c, *args, **kwargs)
        except UserError as e:
            raise _user_error(e) from None

    return wrapper


@task(help={
    "suite": "suite name (smoke, patches64, imagenet256, imagenet256-throughput)",
    "backbones": "comma list of backbones (default: the suite's)",
    "out": "results root (default: results)",
    "seed": "run seed (default 0)",
    "device": "cpu or cuda",
    "run_id": "run directory name (default: derived from seed and configuration; an existing run resumes)",
    "resume": "continue the run in this directory (results/<suite>/<run_id>)",
    "nproc": "processes on this node, launched through torchrun (gloo on CPU, NCCL on CUDA)",
    "micro_batch": "samples per forward/backward (gradient accumulation; the unit of the loss's random draws)",
    "ckpt_every": "also checkpoint every K optimizer steps (always: every epoch, before each evaluation)",
    "preset": "tiny: the imagenet256 dry run (tiny presets, stand-in encoders)",
    "epochs": "training epochs (and the last evaluation epoch)",
    "num_samples": "samples per evaluation (imagenet256: 50000)",
    "image_size": "image size of a dry run (default 256)",
    "sample_steps": "replace the samplers' integration steps (CPU dry runs)",
    "labels": "equal (default, num_samples / classes per class) or random",
    "precision": "recipe (default; CPU: fp32), no, bf16, fp16",
    "compile": "torch.compile the training step",
    "fsdp": "shard parameters, gradients and optimizer state over the processes (FSDP2)",
    "from_release": "sample and score the released checkpoints (bench.release) instead of training",
    "workers": "DataLoader worker processes per rank for ImageNet images / cached latents (default: 0 on CPU, up to 8 per GPU)",
    "jobs": "CPU: run the families in this many worker processes (default 0 = one per core; 1 = serial)",
    "recipe": "recipe overrides, comma list of BACKBONE.FIELD=VALUE (BACKBONE 'all': every one), e.g. repa.stage1_lr=1e-3",
    "stop_after": "tokenizer: stop each family after stage 1 and its floor rows (a later run without it continues)",
})  # fmt: skip
@_user_errors
def bench(c, suite="smoke", backbones="", out="results", seed=0, device="cpu", run_id="", resume="", nproc=1,
          micro_batch=0, ckpt_every=0, preset="", epochs=0, num_samples=0, image_size=0, sample_steps=0, labels="equal",
          precision="recipe", compile=False, fsdp=False, from_release=False, workers=-1, jobs=0, recipe="", stop_after=""):  # fmt: skip
    """Train, sample, evaluate and measure a suite's backbones into results/<suite>/<run_id>/."""
    from bench import distributed
    from bench.errors import require_positive
    from bench.runner import BenchArgs, args_to_argv, plan, resume_args, run

    require_positive(**{"--nproc": int(nproc)})
    a = BenchArgs(suite=suite, backbones=backbones or None, out=out, seed=int(seed), device=device,
                  run_id=run_id or None, preset=preset or None, epochs=int(epochs) or None,
                  num_samples=int(num_samples) or None, image_size=int(image_size) or None,
                  sample_steps=int(sample_steps) or None, micro_batch=int(micro_batch) or None,
                  ckpt_every=int(ckpt_every), precision=precision, compile=bool(compile), fsdp=bool(fsdp),
                  labels=labels, from_release=bool(from_release), workers=None if int(workers) < 0 else int(workers), jobs=int(jobs),
                  recipe=recipe or None, stop_after=stop_after or None)  # fmt: skip
    if resume:
        a = resume_args(
            resume,
            device=device,
            ckpt_every=int(ckpt_every),
            compile=bool(compile),
            workers=None if int(workers) < 0 else int(workers),
        )
    if int(nproc) > 1 and not distributed.launched_by_torchrun():
        plan(a)  # every input checked before any process starts
        code = distributed.launch(int(nproc), args_to_argv(a))
    else:
        code = run(a)
    if code:
        raise Exit(code=code)


@task(help={"results": "results root (default: results)", "out": "reports root (default: reports)",
            "suite": "only this suite (default: every suite in the store)"})  # fmt: skip
@_user_errors
def report(c, results="results", out="reports", suite=""):
    """Rebuild tables, figures and the HTML pages (reports/<suite>/index.html) from the results store alone."""
    from bench.report import main

    code = main(["--results", results, "--out", out] + (["--suite", suite] if suite else []))
    if code:
        raise Exit(code=code)


@task
@_user_errors
def test(c, args=""):
    """Run the test suite (as README and CI do)."""
    c.run(f"{sys.executable} -m pytest -q {args}", pty=False)


@task(help={"extractor": "feature extractor name", "weights": "weights file of the extractor",
            "metrics": "comma list of fid,sfid,is,prec,rec,kid,fid_ci,fid_inf (default: ADM's set, less what REF cannot provide)",
            "num_classes": "labels (arr_1) of SAMPLES and REF must lie in [0, N) (default 1000, ImageNet's)"})  # fmt: skip
@_user_errors
def fid(c, samples, ref, extractor="inception-v3-compat", weights="", metrics="", num_classes=1000):
    """Score SAMPLES.npz against REF.npz like the ADM evaluator; prints one JSON line (a bad input: one error
    line, exit code 2)."""
    from bench.metrics.cli import main

    argv = (
        [samples, ref, "--extractor", extractor, "--num-classes", str(num_classes)]
        + (["--metrics", metrics] if metrics else [])
        + (["--weights", weights] if weights else [])
    )
    code = main(argv)
    if code:
        raise Exit(code=code)


@task(
    help={
        "static": "compile for sm_90 on CPU and read the cubins",
        "latency": "GPU latency",
        "json": "write results here",
        "compare": "baseline JSON to gate against",
        "only": "comma list of op/case/dtype/kernel globs, e.g. 'swiglu/*'",
        "dtypes": "latency: comma list of bf16,fp32 (default both)",
    }
)
@_user_errors
def kernels(c, static=False, latency=False, json="", compare="", only="", dtypes=""):
    """Triton kernels: static cost gate (CPU) or latency against eager/compile and the roofline (GPU)."""
    from bench.kernels import main

    argv = (["--static"] if static else []) + (["--latency"] if latency else [])
    argv += (["--json", json] if json else []) + (["--compare", compare] if compare else [])
    argv += [a for g in only.split(",") if g.strip() for a in ("--only", g.strip())]
    argv += ["--dtypes", dtypes] if dtypes else []
    code = main(argv)
    if code:
        raise Exit(code=code)


@task(
    help={"cases": "golden case directories (default: every case under $GENBENCH_GOLDEN or ../shared/golden)"}
)
@_user_errors
def parity(c, cases=""):
    """Run parity against the official implementations' golden data."""
    from baselines.parity import golden_cases, main

    paths = shlex.split(cases) if cases else [str(p) for p in golden_cases()]
    if not paths:
        raise Exit(
            "error: no golden cases found (pass --cases, set GENBENCH_GOLDEN or place them at ../shared/golden)",
            code=2,
        )
    code = main(paths)
    if code:
        raise Exit(code=code)


@task(name="flow-sizes")
@_user_errors
def flow_sizes(c):
    """Parameter counts of every STARFlow / TARFlow preset (meta device, no memory)."""
    from bench.studies.sizes import format_sizes, preset_sizes

    print("\n".join(format_sizes(preset_sizes())))


@task(name="jacobi-bench", help={
    "out": "report folder (default reports/starflow)", "golden": "golden root (default: $GENBENCH_GOLDEN or ../shared/golden)",
    "block": "Jacobi block", "tol": "Jacobi tolerance", "max_iters": "Jacobi iterations per block",
    "batch": "sampling batch of the tiny models", "train_steps": "training steps of the tiny models (0: skip them)",
    "starflow_checkpoint": "smoke-run stage2.pt (its 'ema' entry) or a state_dict",
    "smoke_run": "a finished smoke run dir: adds the FID change of Jacobi decoding",
    "smoke_samples": "samples per mode for smoke_run", "repeats": "timing repeats (best of)",
    "threads": "torch threads (0: default)", "seed": "seed",
})  # fmt: skip
@_user_errors
def jacobi_bench(c, out="reports/starflow", golden="", block=16, tol=1e-3, max_iters=32, batch=64, train_steps=200,
                 starflow_checkpoint="", smoke_run="", smoke_samples=256, repeats=3, threads=0, seed=0):  # fmt: skip
    """Sequential vs block-wise Jacobi sampling of the flows: agreement, wall time, NFE (-> reports/starflow/)."""
    from bench.studies.jacobi import run

    run(out_dir=out, golden=golden or None, block=int(block), tol=float(tol), max_iters=int(max_iters),
        batch=int(batch), train_steps=int(train_steps), starflow_checkpoint=starflow_checkpoint or None,
        smoke_run=smoke_run or None, smoke_samples=int(smoke_samples), repeats=int(repeats), threads=int(threads),
        seed=int(seed), command="invoke jacobi-bench " + " ".join(sys.argv[2:]))  # fmt: skip


@task(help={
    "suite": "suite to study (default patches64)", "seeds": "comma list of run seeds (default 0,1,2)",
    "out": "the study's results store (default results/study-<suite>)", "reports": "reports root (default reports)",
    "backbones": "comma list of backbones (default: the suite's)", "device": "cpu or cuda",
    "epochs": "budget: training epochs (and last evaluation epoch) instead of the suite's",
    "num_samples": "budget: samples per evaluation instead of the suite's",
    "sample_steps": "budget: replace the samplers' integration steps", "boot": "bootstrap draws per evaluation",
    "plots": "write the figures (--no-plots: tables and HTML only)",
})  # fmt: skip
@_user_errors
def study(c, suite="patches64", seeds="0,1,2", out="", reports="reports", backbones="", device="cpu", epochs=0,
          num_samples=0, sample_steps=0, boot=200, plots=True):  # fmt: skip
    """Every seed of a suite into one store (finished seeds skipped), bootstrap rows, then <reports>/<suite>/."""
    from bench.studies.patches64 import run_study

    code = run_study(suite=suite, seeds=seeds, out=out or None, reports=reports, backbones=backbones or None,
                     device=device, epochs=int(epochs) or None, num_samples=int(num_samples) or None,
                     sample_steps=int(sample_steps) or None, n_boot=int(boot), make_plots=bool(plots),
                     command="invoke study " + " ".join(shlex.quote(a) for a in sys.argv[2:]))  # fmt: skip
    if code:
        raise Exit(code=code)


@task(help={"json": "print the rows as JSON instead of Markdown"})
@_user_errors
def recipes(c, json=False):
    """Every backbone's paper recipes and protocols, each setting beside its source (reports/recipes.md)."""
    from bench.recipes import main

    code = main(["--json"] if json else [])
    if code:
        raise Exit(code=code)


namespace = Collection(bench, report, test, fid, kernels, parity, flow_sizes, jacobi_bench, recipes, study)


def _version() -> str:
    try:
        return metadata.version("genbench")
    except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH without an install
        return "unknown"


program = Program(namespace=namespace, name="genbench", binary="genbench", version=_version())


def main() -> None:
    """Console script `genbench`."""
    program.run()


if __name__ == "__main__":
    main()
