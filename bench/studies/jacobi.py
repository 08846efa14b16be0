"""Sequential vs block-wise Jacobi decoding of the flows: `invoke jacobi-bench` (writes reports/starflow/).

For each model: the agreement of Jacobi at tolerance 0 and at the default tolerance with exact sequential
sampling, wall time (best of --repeats), NFE (sequential network calls of one flow block; a CFG pair counts 2, a
prefix pass 1) and FLOP-weighted forward equivalents. Models: the golden parity cases (random weights by
construction; found and loaded with `baselines.parity.golden_root/load_case`), and tiny TARFlow / STARFlow presets
trained here for `train_steps` on the embedded photo crops (a freshly initialised flow is the identity map, on which
Jacobi converges trivially). The tiny STARFlow is trained on a stand-in latent (4x4 average-pooled pixels, 8x8x3)
so the bench needs no autoencoder; `starflow_checkpoint` takes a real smoke-run generator state_dict instead.
With `smoke_run` (a finished `invoke bench --suite smoke` run dir) it also samples the trained flows in each mode,
loaded with the trainer's own stage-1 / latent-statistics code, and reports the FID change caused by Jacobi.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from baselines.backbones.starflow import StarFlowGenerator
from baselines.backbones.tarflow import TarFlowGenerator
from baselines.parity import golden_root, load_case
from baselines.starflow import StarFlow, StarFlow_models
from baselines.tarflow import TarFlow_models
from bench.checkpoints import load_checkpoint
from bench.errors import MissingInputError


def _cost(model, stats) -> tuple[int, float]:
    """(nfe, forward equivalents) of one reverse call from its per-block DecodeStats."""
    if isinstance(model, StarFlow):
        flops = sum(
            (s.tokens + s.prefix_tokens) * s.rows * model.block_flops_per_token(s.block) for s in stats
        )
        calls = sum((s.passes + (1 if s.prefix_tokens else 0)) * s.rows for s in stats)
    else:
        flops = sum(s.tokens * s.rows * model.block_flops_per_token() for s in stats)
        calls = sum(s.passes * s.rows for s in stats)
    return calls, flops / model.flops_per_image()


@torch.no_grad()
def jacobi_benchmark(model, z, y, guidance: float, repeats: int = 3, **jacobi) -> dict[str, Any]:
    """Sequential vs block-wise Jacobi inversion of one model (z, y in the model's reverse() convention)."""
    res: dict[str, Any] = {}
    seq_out = None
    for name, mode, opts in (("sequential", "sequential", {}), ("jacobi_tol0", "jacobi", dict(jacobi, jacobi_tol=0.0)),
                             ("jacobi", "jacobi", jacobi)):  # fmt: skip
        best, out, stats = float("inf"), None, []
        for _ in range(repeats):
            stats = []
            t0 = time.perf_counter()
            out = model.reverse(z, y, guidance=guidance, mode=mode, stats=stats, **opts)
            best = min(best, time.perf_counter() - t0)
        seq_out = out if seq_out is None else seq_out
        nfe, fwd = _cost(model, stats)
        diff = out - seq_out
        res[name] = {"wall_s": best, "nfe": nfe, "forward_equivalents": fwd,
                     "max_abs_diff_vs_sequential": float(diff.abs().max()),
                     "rms_diff_vs_sequential": float(diff.pow(2).mean().sqrt()),
                     "rms_sample": float(seq_out.pow(2).mean().sqrt())}  # fmt: skip
    res["speedup_wall"] = res["sequential"]["wall_s"] / res["jacobi"]["wall_s"]
    res["speedup_nfe"] = res["sequential"]["nfe"] / res["jacobi"]["nfe"]
    return res


def _embedded(n_per_class: int = 64):
    from bench.data import embedded_images, to_model_range

    img, lab = embedded_images(32, n_per_class, "train", num_classes=8)
    return to_model_range(img), torch.from_numpy(lab)


def train_briefly(
    gen, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-3, batch: int = 64, seed: int = 0
):
    """AdamW (0.9, 0.95), wd 1e-4, constant lr, grad clip 1 (the smoke suite's stage-2 settings)."""
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    gen.train()
    loss = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        parts = gen.loss(x[idx], y[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        loss = float(parts["loss"].detach())
    return gen.eval(), loss


def run(
    *,
    out_dir: str | Path = "reports/starflow",
    golden: str | Path | None = None,
    block: int = 16,
    tol: float = 1e-3,
    max_iters: int = 32,
    batch: int = 64,
    train_steps: int = 200,
    starflow_checkpoint: str | None = None,
    smoke_run: str | None = None,
    smoke_samples: int = 256,
    repeats: int = 3,
    threads: int = 0,
    seed: int = 0,
    command: str = "invoke jacobi-bench",
) -> dict[str, Any]:
    """The whole study; returns what it writes to out_dir/jacobi_bench.{json,md}."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    jac = dict(jacobi_block=block, jacobi_tol=tol, jacobi_max_iters=max_iters)
    out: dict[str, Any] = {"command": command, "jacobi": jac, "device": "cpu", "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "cases": {}}  # fmt: skip
    if golden is not None and not Path(golden).is_dir():
        raise MissingInputError(f"golden root {golden} is not a directory")
    root = Path(golden) if golden else golden_root()
    for case in ("starflow_tiny", "tarflow_tiny"):
        if root is None or not (root / case).is_dir():
            print(f"{case}: golden data not found (pass golden= or set GENBENCH_GOLDEN); skipped")
            continue
        loaded, model = load_case(root / case)
        config, io = loaded.config, loaded.io
        w = float(config["conventions"]["reverse_cfg"]["guidance"])
        y_cfg = io["y_cfg"] if case.startswith("starflow") else io["y"]
        for name, (y, g) in {"reverse": (io["y"], 0.0), "reverse_cfg": (y_cfg, w)}.items():
            out["cases"][f"golden {case} {name} (B={io['z_sample'].shape[0]})"] = jacobi_benchmark(
                model, io["z_sample"], y, g, repeats=repeats, **jac
            )
    g = torch.Generator().manual_seed(seed)
    B, K = batch, 8
    labels = torch.arange(B) % K
    x, y = _embedded()
    if train_steps > 0:
        tf_gen, tf_loss = train_briefly(TarFlowGenerator(TarFlow_models["tiny"](), 0.05), x, y, train_steps)
        zt = tf_gen.model.patchify(torch.randn(B, 3, 32, 32, generator=g))
        key = f"tiny tarflow, {train_steps} steps (loss {tf_loss:.3f}), B={B}"
        out["cases"][key] = jacobi_benchmark(tf_gen.model, zt, labels, 0.0, repeats=repeats, **jac)
        out["cases"][key + ", guidance 1"] = jacobi_benchmark(
            tf_gen.model, zt, labels, 1.0, repeats=repeats, **jac
        )
    if starflow_checkpoint:
        sf_gen = StarFlowGenerator(StarFlow_models["tiny"](), K)
        state = torch.load(starflow_checkpoint, map_location="cpu", weights_only=True)
        sf_gen.load_state_dict(state.get("ema", state), strict=True)
        what, shape = f"checkpoint {Path(starflow_checkpoint).name}", (4, 8, 8)
    elif train_steps > 0:
        lat = F.avg_pool2d(x, 4)  # stand-in latent: 8x8x3 pooled pixels, standardised
        lat = (lat - lat.mean((0, 2, 3), keepdim=True)) / lat.std((0, 2, 3), keepdim=True)
        sf_gen = StarFlowGenerator(StarFlow_models["tiny"](in_channels=3), K)
        sf_gen, sf_loss = train_briefly(sf_gen, lat, y, train_steps)
        what, shape = f"{train_steps} steps on 8x8x3 pooled pixels (loss {sf_loss:.3f})", (3, 8, 8)
    else:
        sf_gen = None
    if sf_gen is not None:
        zs = torch.randn(B, *shape, generator=g)
        yy = sf_gen.condition(labels)
        y_cfg = torch.cat([yy, sf_gen.condition(torch.full_like(labels, K))])
        out["cases"][f"tiny starflow, {what}, B={B}"] = jacobi_benchmark(
            sf_gen.model, zs, yy, 0.0, repeats=repeats, **jac
        )
        out["cases"][f"tiny starflow, {what}, B={B}, guidance 1"] = jacobi_benchmark(
            sf_gen.model, zs, y_cfg, 1.0, repeats=repeats, **jac
        )
    if smoke_run:
        out["smoke_fid"] = smoke_fid(Path(smoke_run), jac, n=smoke_samples)
    write_report(out, Path(out_dir))
    return out


class _RunDir:
    """What `bench.train.BackboneRun` reads of a run store, read-only (nothing of the finished run is rewritten)."""

    def __init__(self, path: Path):
        self.dir = path

    def backbone_dir(self, name: str) -> Path:
        return self.dir / name

    def metrics(self) -> list[dict]:
        return []


def load_smoke_backbone(run_dir: Path, name: str):
    """A finished smoke run's backbone, read-only: the trainer's backbone and data (`BackboneRun`), stage 1 from the
    run's verified checkpoint (the shared SD-VAE stand-in from _shared/), then the latent statistics exactly as
    `train_generator` sets them. The caller loads a generator state from stage2.pt."""
    from bench.suites import SMOKE
    from bench.train import BackboneRun

    run = BackboneRun(SMOKE, name, _RunDir(run_dir), 0, "cpu", None, None)
    tok = run.bb.tokenizer
    if tok.trainable and run.bb.recipe.stage1_epochs > 0:
        key = tok.shared_key
        ckpt = run_dir / "_shared" / f"{key}.pt" if key else run_dir / name / "stage1.pt"
        if not ckpt.is_file():
            raise MissingInputError(f"{ckpt} not found: {run_dir} is not a finished smoke run")
        # verified load (CorruptInputError otherwise); never train_tokenizer, which would retrain a bad file
        tok.load_state_dict(load_checkpoint(ckpt)["tokenizer"])
        raw, _ = run.encode_all(run.x)
        tok.set_latent_stats(raw)
    return run.bb


def smoke_fid(run_dir: Path, jac: dict[str, Any], n: int = 256) -> dict[str, Any]:
    """FID (suite extractor) of sequential / Jacobi / Jacobi-at-tol-0 samples of the flows of a finished smoke run."""
    from bench.evaluate import score, suite_reference
    from bench.metrics import get_extractor
    from bench.sample import generate
    from bench.suites import SMOKE

    ext = get_extractor(SMOKE.extractor)
    ref = suite_reference(SMOKE, ext)
    res: dict[str, Any] = {"run": str(run_dir), "n_samples": n, "extractor": ext.name}
    for name in ("starflow", "tarflow"):
        if not (run_dir / name / "stage2.pt").is_file():
            print(f"{run_dir / name / 'stage2.pt'} not found; skipped")
            continue
        bb = load_smoke_backbone(run_dir, name)
        state = load_checkpoint(run_dir / name / "stage2.pt")
        for which in ("ema", "generator"):
            bb.generator.load_state_dict(state[which])
            for mode, opts in (("sequential", dict(mode="sequential")), ("jacobi", dict(mode="jacobi", **jac)),
                               ("jacobi_tol0", dict(mode="jacobi", **dict(jac, jacobi_tol=0.0)))):  # fmt: skip
                t0 = time.perf_counter()
                gen = generate(
                    bb, n, SMOKE.num_classes, 0, SMOKE.image_size, batch_size=SMOKE.sample_batch_size, **opts
                )
                wall = time.perf_counter() - t0
                fid = score(gen["images"], ref, ext, ("fid",), gen["n_nonfinite"])["fid"]
                st = bb.generator.last_sample_stats.as_dict()
                res[f"{name} {which} {mode}"] = {"fid": fid, "wall_s": wall, "nfe_last_batch": st["nfe"],
                                                 "forward_equivalents": st["forward_equivalents"],
                                                 "sampler": bb.sampler.replace(**opts).as_dict()}  # fmt: skip
                print(
                    f"{name} {which} {mode}: FID {fid:.1f}, {wall:.1f}s for {n}, nfe {st['nfe']}", flush=True
                )
    return res


def write_report(out: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "jacobi_bench.json").write_text(json.dumps(out, indent=2) + "\n")
    j = out["jacobi"]
    lines = ["# Sequential vs block-wise Jacobi sampling (CPU)", "",
             f"`{out['command']}`: block {j['jacobi_block']}, tol {j['jacobi_tol']}, max iters {j['jacobi_max_iters']}; "
             f"wall time best of several runs, {out['threads']} CPU threads, torch {out['torch']}. nfe = sequential "
             "network calls of one flow block (CFG pair = 2, condition prefix pass = 1); fwd-equiv = sampling FLOPs / "
             "one full forward of the flow. Differences are in the model's output space (pixels for TARFlow, latents "
             "for STARFlow); rms sample = RMS of the sequential sample, for scale.", "",
             "| model | mode | wall s | nfe | fwd-equiv | max abs diff | rms diff | rms sample | speed-up wall / nfe |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for case, r in out["cases"].items():
        for mode in ("sequential", "jacobi_tol0", "jacobi"):
            m = r[mode]
            sp = f"{r['speedup_wall']:.2f} / {r['speedup_nfe']:.2f}" if mode == "jacobi" else ""
            lines.append(f"| {case} | {mode} | {m['wall_s']:.3f} | {m['nfe']} | {m['forward_equivalents']:.2f} | "
                         f"{m['max_abs_diff_vs_sequential']:.1e} | {m['rms_diff_vs_sequential']:.1e} | "
                         f"{m['rms_sample']:.2f} | {sp} |")  # fmt: skip
    if "smoke_fid" in out:
        sf = out["smoke_fid"]
        lines += ["", f"## FID change on the smoke suite ({sf['n_samples']} samples, extractor {sf['extractor']})", "",
                  f"Run `{sf['run']}`; each trained flow sampled with its recipe sampler in three modes, EMA and raw "
                  "weights. nfe is measured on the last sampling batch.", "",
                  "| model | weights | mode | FID | wall s | nfe | fwd-equiv |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for key, r in sf.items():
            if isinstance(r, dict) and "fid" in r:
                name, which, mode = key.split(" ")
                lines.append(f"| {name} | {which} | {mode} | {r['fid']:.1f} | {r['wall_s']:.1f} | {r['nfe_last_batch']} | "
                             f"{r['forward_equivalents']:.2f} |")  # fmt: skip
    (out_dir / "jacobi_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out_dir / 'jacobi_bench.json'} and {out_dir / 'jacobi_bench.md'}")


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.studies.jacobi` (the invoke task `jacobi-bench` calls `run` directly)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.studies.jacobi", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--golden", default=None, help="golden root (default: $GENBENCH_GOLDEN or ../shared/golden)"
    )
    p.add_argument("--out", default="reports/starflow")
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iters", type=int, default=32)
    p.add_argument("--batch", type=int, default=64, help="sampling batch of the tiny models")
    p.add_argument(
        "--train-steps", type=int, default=200, help="training steps of the tiny models (0: skip them)"
    )
    p.add_argument(
        "--starflow-checkpoint", default=None, help="smoke-run stage2.pt (its 'ema' entry) or a state_dict"
    )
    p.add_argument(
        "--smoke-run", default=None, help="a finished smoke run dir: adds the FID change of Jacobi decoding"
    )
    p.add_argument("--smoke-samples", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(out_dir=a.out, golden=a.golden, block=a.block, tol=a.tol, max_iters=a.max_iters, batch=a.batch,
        train_steps=a.train_steps, starflow_checkpoint=a.starflow_checkpoint, smoke_run=a.smoke_run,
        smoke_samples=a.smoke_samples, repeats=a.repeats, threads=a.threads, seed=a.seed,
        command="python -m bench.studies.jacobi " + " ".join(argv if argv is not None else []))  # fmt: skip
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
