"""Commands for the flow families (STARFlow, TARFlow).

    python -m baselines.flow_sizes sizes          # parameter counts of every preset, built on the meta device
    python -m baselines.flow_sizes jacobi-bench   # sequential vs block-wise Jacobi sampling -> reports/starflow/

(`python -m baselines.starflow ...` runs the same commands.)

jacobi-bench measures, for each model: the agreement of Jacobi at tolerance 0 and at the default tolerance with
exact sequential sampling, wall time (best of --repeats), NFE (sequential network calls of one flow block; a CFG
pair counts 2, a prefix pass 1) and FLOP-weighted forward equivalents. Models: the golden parity cases (random
weights by construction), and tiny TARFlow / STARFlow presets trained here for --train-steps on the embedded
photo crops (a freshly initialised flow is the identity map, on which Jacobi converges trivially). The tiny
STARFlow is trained on a stand-in latent (4x4 average-pooled pixels, 8x8x3) so the bench needs no autoencoder;
--starflow-checkpoint takes a real smoke-run generator state_dict (tiny preset on 8x8x4 KL latents) instead.
With --smoke-run RUN_DIR (a finished `invoke bench --suite smoke` run holding starflow/ and tarflow/ checkpoints)
it also samples 256 images per mode from the trained EMA and raw generators with the recipe's sampler and reports
FID with the suite's extractor: the FID change caused by Jacobi decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines import starflow, tarflow
from baselines.backbones.starflow import StarFlowGenerator
from baselines.backbones.tarflow import TarFlowGenerator
from baselines.parity import golden_root, load_case

PUBLISHED_SIZES = {("starflow", "1.4B"): 1.4e9, ("starflow", "3.8B"): 3.86e9}  # PAPERS.md / arXiv 2506.06276


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_sizes() -> list[dict[str, Any]]:
    """Parameter counts of every STARFlow and TARFlow preset, built on the meta device (no memory, no init)."""
    rows = []
    with torch.device("meta"):
        for name, cfg in starflow.StarFlow_configs.items():
            m = starflow.StarFlow(**cfg)
            total, deep = count_parameters(m), count_parameters(m.blocks[-1])
            rows.append(
                {
                    "family": "starflow",
                    "preset": name,
                    "params": total,
                    "deep_block": deep,
                    "shallow_blocks": total - deep,
                }
            )
        for name, cfg in tarflow.TarFlow_configs.items():
            rows.append(
                {
                    "family": "tarflow",
                    "preset": name,
                    "params": count_parameters(tarflow.TarFlow(**cfg)),
                }
            )
    return rows


def _cmd_sizes(args) -> int:
    for r in preset_sizes():
        pub = PUBLISHED_SIZES.get((r["family"], r["preset"]))
        size = f"{r['params'] / 1e9:.3f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.3f}M"
        split = (
            f"  deep {r['deep_block'] / 1e6:.1f}M + shallow {r['shallow_blocks'] / 1e6:.1f}M"
            if "deep_block" in r
            else ""
        )
        extra = f"  (published: {pub / 1e9:.2f}B)" if pub else ""
        print(f"{r['family']:9s} {r['preset']:12s} {r['params']:>14,d} params = {size}{split}{extra}")
    return 0


# --- Jacobi benchmark ------------------------------------------------------------------------------------------


def load_golden(case_dir: Path):
    case, model = load_case(case_dir)
    return case.config, model, case.io


def _cost(model, stats) -> tuple[int, float]:
    """(nfe, forward equivalents) of one reverse call from its per-block DecodeStats."""
    if isinstance(model, starflow.StarFlow):
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


def _cmd_jacobi_bench(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    jac = dict(jacobi_block=args.block, jacobi_tol=args.tol, jacobi_max_iters=args.max_iters)
    out: dict[str, Any] = {"command": "python -m baselines.flow_sizes jacobi-bench " + " ".join(sys.argv[2:]), "jacobi": jac,
                           "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "cases": {}}  # fmt: skip
    root = Path(args.golden) if args.golden else golden_root()
    for case in ("starflow_tiny", "tarflow_tiny"):
        if root is None or not (root / case).is_dir():
            print(f"{case}: golden data not found (set --golden or GENBENCH_GOLDEN); skipped")
            continue
        config, model, io = load_golden(root / case)
        w = float(config["conventions"]["reverse_cfg"]["guidance"])
        y_cfg = io["y_cfg"] if case.startswith("starflow") else io["y"]
        for name, (y, g) in {"reverse": (io["y"], 0.0), "reverse_cfg": (y_cfg, w)}.items():
            out["cases"][f"golden {case} {name} (B={io['z_sample'].shape[0]})"] = jacobi_benchmark(
                model, io["z_sample"], y, g, repeats=args.repeats, **jac
            )
    g = torch.Generator().manual_seed(args.seed)
    B, K = args.batch, 8
    labels = torch.arange(B) % K
    x, y = _embedded()
    if args.train_steps > 0:
        tf_gen, tf_loss = train_briefly(
            TarFlowGenerator(tarflow.TarFlow_models["tiny"](), 0.05), x, y, args.train_steps
        )
        zt = tf_gen.model.patchify(torch.randn(B, 3, 32, 32, generator=g))
        key = f"tiny tarflow, {args.train_steps} steps (loss {tf_loss:.3f}), B={B}"
        out["cases"][key] = jacobi_benchmark(tf_gen.model, zt, labels, 0.0, repeats=args.repeats, **jac)
        out["cases"][key + ", guidance 1"] = jacobi_benchmark(
            tf_gen.model, zt, labels, 1.0, repeats=args.repeats, **jac
        )
    if args.starflow_checkpoint:
        sf_gen = StarFlowGenerator(starflow.StarFlow_models["tiny"](), K)
        state = torch.load(args.starflow_checkpoint, map_location="cpu", weights_only=True)
        sf_gen.load_state_dict(state.get("ema", state), strict=True)
        what, shape = f"checkpoint {Path(args.starflow_checkpoint).name}", (4, 8, 8)
    elif args.train_steps > 0:
        lat = F.avg_pool2d(x, 4)  # stand-in latent: 8x8x3 pooled pixels, standardised
        lat = (lat - lat.mean((0, 2, 3), keepdim=True)) / lat.std((0, 2, 3), keepdim=True)
        sf_gen = StarFlowGenerator(starflow.StarFlow_models["tiny"](in_channels=3), K)
        sf_gen, sf_loss = train_briefly(sf_gen, lat, y, args.train_steps)
        what, shape = f"{args.train_steps} steps on 8x8x3 pooled pixels (loss {sf_loss:.3f})", (3, 8, 8)
    else:
        sf_gen = None
    if sf_gen is not None:
        zs = torch.randn(B, *shape, generator=g)
        yy = sf_gen.condition(labels)
        y_cfg = torch.cat([yy, sf_gen.condition(torch.full_like(labels, K))])
        out["cases"][f"tiny starflow, {what}, B={B}"] = jacobi_benchmark(
            sf_gen.model, zs, yy, 0.0, repeats=args.repeats, **jac
        )
        out["cases"][f"tiny starflow, {what}, B={B}, guidance 1"] = jacobi_benchmark(
            sf_gen.model, zs, y_cfg, 1.0, repeats=args.repeats, **jac
        )
    if args.smoke_run:
        out["smoke_fid"] = smoke_fid(Path(args.smoke_run), jac, n=args.smoke_samples)
    write_report(out, Path(args.out))
    return 0


def smoke_fid(run_dir: Path, jac: dict[str, Any], n: int = 256) -> dict[str, Any]:
    """FID (suite extractor) of sequential / Jacobi / Jacobi-at-tol-0 samples of the flows of a finished smoke run."""
    from bench.data import embedded_images, to_model_range
    from bench.evaluate import score, suite_reference
    from bench.metrics import get_extractor
    from bench.sample import generate
    from bench.suites import SMOKE
    from bench.train import make_backbone

    ext = get_extractor(SMOKE.extractor)
    ref = suite_reference(SMOKE, ext)
    res: dict[str, Any] = {"run": str(run_dir), "n_samples": n, "extractor": ext.name}
    for name in ("starflow", "tarflow"):
        if not (run_dir / name / "stage2.pt").is_file():
            print(f"{run_dir / name / 'stage2.pt'} not found; skipped")
            continue
        bb = make_backbone(SMOKE, name, 0)
        if (
            bb.tokenizer.trainable
        ):  # stage-1 weights, then the latent statistics exactly as train_generator sets them
            key = bb.tokenizer.shared_key  # a shared tokenizer (SD-VAE stand-in) lives in the run's _shared/
            stage1 = run_dir / "_shared" / f"{key}.pt" if key else run_dir / name / "stage1.pt"
            bb.tokenizer.load_state_dict(torch.load(stage1, weights_only=True)["tokenizer"])
            img, _ = embedded_images(
                SMOKE.image_size, SMOKE.n_train_per_class, "train", num_classes=SMOKE.num_classes
            )
            with torch.no_grad():
                bb.tokenizer.eval()
                bb.tokenizer.set_latent_stats(bb.tokenizer.encode(to_model_range(img)))
        state = torch.load(run_dir / name / "stage2.pt", weights_only=True)
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
    p = argparse.ArgumentParser(
        prog="python -m baselines.flow_sizes", description="STARFlow / TARFlow commands"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sizes", help="parameter counts of the STARFlow and TARFlow presets (meta device)")
    jb = sub.add_parser("jacobi-bench", help="sequential vs Jacobi sampling: agreement, wall time, NFE")
    jb.add_argument(
        "--golden", default=None, help="golden root (default: $GENBENCH_GOLDEN or ../shared/golden)"
    )
    jb.add_argument("--out", default="reports/starflow")
    jb.add_argument("--block", type=int, default=16)
    jb.add_argument("--tol", type=float, default=1e-3)
    jb.add_argument("--max-iters", type=int, default=32)
    jb.add_argument("--batch", type=int, default=64, help="sampling batch of the tiny models")
    jb.add_argument(
        "--train-steps", type=int, default=200, help="training steps of the tiny models (0: skip them)"
    )
    jb.add_argument(
        "--starflow-checkpoint", default=None, help="smoke-run stage2.pt (its 'ema' entry) or a state_dict"
    )
    jb.add_argument(
        "--smoke-run", default=None, help="a finished smoke run dir: adds the FID change of Jacobi decoding"
    )
    jb.add_argument("--smoke-samples", type=int, default=256)
    jb.add_argument("--repeats", type=int, default=3)
    jb.add_argument("--threads", type=int, default=0)
    jb.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return {"sizes": _cmd_sizes, "jacobi-bench": _cmd_jacobi_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
