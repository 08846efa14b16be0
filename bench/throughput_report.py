"""Tables, goals and plots of an imagenet256-throughput run, from its rows alone (throughput.jsonl).

Goals (issue #17), evaluated on the rows of the same run:
- training MFU >= 45% and sampling MFU >= 50% for the DiT-style generators (REPA SiT-XL/2, LightningDiT-XL/1,
  FAE's XL generator), MFU against the bf16 matmul peak measured in the run;
- LightningDiT-XL/1 training img/s at batch 32 >= the official 166 img/s per H800 (5.2 it/s x 32, the release's
  log) scaled by this GPU's bf16 peak over the H800's (datasheet ratio: the H800's matmul efficiency is
  assumed equal to this GPU's);
- STARFlow block Jacobi >= 2x the sequential sampler's img/s, at a max deviation below the Jacobi tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.kernels.common import table
from bench.kernels.roofline import DATASHEET

TRAIN_MFU, SAMPLE_MFU, JACOBI_SPEEDUP = 0.45, 0.50, 2.0
LIGHTNINGDIT_H800_IMG_S, LIGHTNINGDIT_BATCH = 166.0, 32
DIT_STYLE = ("repa", "vavae_lightningdit", "fae")


def read_rows(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return rows


def _ok(rows, **match):
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _best(rows, key):
    rows = [r for r in rows if r.get(key) is not None]
    return max(rows, key=lambda r: r[key]) if rows else None


def _goal(goal, backbone, target, row, key, fmt, scale=1.0, extra=""):
    if row is None:
        return {"goal": goal, "backbone": backbone, "target": target, "value": None, "met": None,
                "detail": "not measured (no successful row)"}  # fmt: skip
    v = row[key] * scale
    return {"goal": goal, "backbone": backbone, "target": target, "value": v, "met": v >= target,
            "detail": fmt.format(v=v, t=target, r=row) + extra}  # fmt: skip


def goals(rows: list[dict], roof: dict) -> list[dict]:
    out = []
    for bb in DIT_STYLE:
        r = _best(_ok(rows, backbone=bb, phase="train"), "mfu")
        out.append(
            _goal(
                "training MFU >= 45%",
                bb,
                TRAIN_MFU * 100,
                r,
                "mfu",
                "{v:.1f}% (batch {r[batch_size]}, compile {r[compile]}, {r[img_per_s]:.1f} img/s)",
                100,
            )
        )
        r = _best(_ok(rows, backbone=bb, phase="sample"), "mfu")
        out.append(_goal("sampling MFU >= 50%", bb, SAMPLE_MFU * 100, r, "mfu",
                         "{v:.1f}% (batch {r[batch_size]}, {r[img_per_s]:.2f} img/s)", 100))  # fmt: skip
    sheet = roof.get("datasheet_bf16_flops")
    h800 = DATASHEET["H800"]["bf16_tflops"] * 1e12
    ratio, how = (
        (sheet / h800, "datasheet") if sheet else (roof["peak_flops_bf16"] / h800, "measured/H800 datasheet")
    )
    target = LIGHTNINGDIT_H800_IMG_S * ratio
    r = _best(
        _ok(rows, backbone="vavae_lightningdit", phase="train", batch_size=LIGHTNINGDIT_BATCH), "img_per_s"
    )
    out.append(_goal(f"LightningDiT-XL/1 train img/s >= 166 x peak ratio ({how} {ratio:.3f})", "vavae_lightningdit",
                     target, r, "img_per_s", "{v:.1f} img/s vs {t:.1f} (compile {r[compile]})"))  # fmt: skip
    r = next(iter(_ok(rows, backbone="starflow", phase="jacobi_vs_sequential")), None)
    if r is None:
        out.append(_goal("STARFlow Jacobi >= 2x sequential img/s", "starflow", JACOBI_SPEEDUP, None, "", ""))
    else:
        g = _goal("STARFlow Jacobi >= 2x sequential img/s", "starflow", JACOBI_SPEEDUP, r, "speedup",
                  "x{v:.2f}, max deviation {r[max_deviation]:.2e} vs tolerance {r[jacobi_tol]:.0e}")  # fmt: skip
        g["met"] = g["met"] and r["max_deviation"] < r["jacobi_tol"]
        out.append(g)
    return out


def _f(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def _gb(mb):
    return "-" if mb is None else f"{mb / 1024:.1f}"


def markdown(rows: list[dict], roof: dict, command: str = "", kernel_goals: list[list] | None = None) -> str:
    env = next((r for r in rows), {})
    head = (
        f"# imagenet256-throughput on {env.get('device', '?')}\n\n"
        + (f"Command: `{command}`\n\n" if command else "")
        + f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}. Random weights, synthetic "
        f"inputs of the exact shapes. bf16 matmul peak measured in this run: {roof['peak_flops_bf16'] / 1e12:.1f} "
        f"TFLOP/s; datasheet: {_f(roof.get('datasheet_bf16_flops') and roof['datasheet_bf16_flops'] / 1e12, '{:.1f}')} "
        "TFLOP/s. MFU = counted FLOPs (torch FlopCounterMode) per second over the matmul peak measured for the "
        "row's dtype (over the datasheet bf16 peak in the next column).\n"
    )
    if env.get("device") == "cpu":
        head += "\n**CPU run at the tiny preset: tests the measurement; these are not GPU numbers.**\n"
    train = [[r["backbone"], r.get("preset"), r.get("batch_size"), r.get("compile"), r.get("dtype"), _f(r.get("img_per_s")),
              _f(r.get("step_s") and r["step_s"] * 1e3), _gb(r.get("peak_mem_mb")),
              _f(r.get("flops_per_s") and r["flops_per_s"] / 1e12), _f(r.get("mfu") and 100 * r["mfu"], "{:.1f}"),
              _f(r.get("mfu_datasheet") and 100 * r["mfu_datasheet"], "{:.1f}"), r["status"]]
             for r in rows if r["phase"] == "train"]  # fmt: skip
    sample = [[r["backbone"], r.get("batch_size"), r.get("dtype"), r.get("nfe"), _f(r.get("latency_s")),
               _f(r.get("img_per_s")), _gb(r.get("peak_mem_mb")), _f(r.get("mfu") and 100 * r["mfu"], "{:.1f}"),
               _f(r.get("mfu_datasheet") and 100 * r["mfu_datasheet"], "{:.1f}"), r["status"]]
              for r in rows if r["phase"] == "sample"]  # fmt: skip
    dec = [[r["backbone"], r.get("mode", "jacobi vs sequential"), r.get("batch_size"), r.get("dtype"),
            _f(r.get("img_per_s")), _f(r.get("latency_s")), _f(r.get("speedup")), _f(r.get("max_deviation")),
            _f(r.get("jacobi_tol")), r["status"]]
           for r in rows if r["phase"] in ("decode", "jacobi_vs_sequential")]  # fmt: skip
    other = [[r["backbone"], r["phase"], r["status"]] for r in rows
             if r["phase"] not in ("train", "sample", "decode", "jacobi_vs_sequential", "build") or
             (r["phase"] == "build" and r["status"] != "ok")]  # fmt: skip
    gl = goals(rows, roof)
    goal_rows = [[g["goal"], g["backbone"], _f(g["target"], "{:.4g}"), _f(g["value"], "{:.4g}"),
                  "met" if g["met"] else "not measured" if g["met"] is None else "MISSED", g["detail"]] for g in gl]  # fmt: skip
    t = lambda h, r: table(h, r)  # noqa: E731
    text = head + "\n## Training (per GPU, recipe batch)\n\n" + t(
        ["backbone", "preset", "batch", "compile", "dtype", "img/s", "step ms", "peak GB", "TFLOP/s", "MFU %",
         "MFU % (datasheet)", "status"], train)  # fmt: skip
    text += "\n\n## Sampling (one full paper sampler call + decode)\n\n" + t(
        ["backbone", "batch", "dtype", "NFE", "latency s", "img/s", "peak GB", "MFU %", "MFU % (datasheet)",
         "status"], sample)  # fmt: skip
    if dec:
        text += "\n\n## STARFlow decoding: KV-cache sequential vs block Jacobi\n\n" + t(
            ["backbone", "mode", "batch", "dtype", "img/s", "latency s", "speed-up", "max deviation", "tolerance",
             "status"], dec)  # fmt: skip
    if other:
        text += "\n\n## Failed phases\n\n" + t(["backbone", "phase", "status"], other)
    text += "\n\n## Goals\n\n" + t(["goal", "backbone", "target", "measured", "verdict", "detail"], goal_rows)
    if kernel_goals:
        text += "\n\n## Triton kernel goals (reports/kernels)\n\n" + t(
            ["op", "rows meeting every goal", "model path", "missed"], kernel_goals
        )
    return text + "\n"


def plot(rows: list[dict], stem: Path) -> list[Path]:
    """Sampling img/s and latency against batch size per backbone; training img/s eager vs compile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = [r for r in rows if r["phase"] == "sample" and r["status"] == "ok"]
    train = [r for r in rows if r["phase"] == "train" and r["status"] == "ok"]
    if not sample and not train:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for bb in dict.fromkeys(r["backbone"] for r in sample):
        rs = sorted((r for r in sample if r["backbone"] == bb), key=lambda r: r["batch_size"])
        axes[0].plot([r["batch_size"] for r in rs], [r["img_per_s"] for r in rs], "o-", label=bb)
        axes[1].plot([r["batch_size"] for r in rs], [r["latency_s"] for r in rs], "o-", label=bb)
    for ax, ylabel in ((axes[0], "sampling img/s"), (axes[1], "latency of one sampler call (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    names = list(dict.fromkeys(r["backbone"] for r in train))
    for k, compiled in enumerate((False, True)):
        vals = [next((r["img_per_s"] for r in train if r["backbone"] == n and r["compile"] == compiled), 0)
                for n in names]  # fmt: skip
        axes[2].bar([i + 0.4 * k - 0.2 for i in range(len(names))], vals, 0.4,
                    label="torch.compile" if compiled else "eager")  # fmt: skip
    axes[2].set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    axes[2].set_ylabel("training img/s per GPU")
    axes[2].legend(fontsize=7)
    dev = rows[0].get("device", "?") if rows else "?"
    fig.suptitle(f"imagenet256-throughput on {dev}")
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def write_report(rows: list[dict], roof: dict, out_dir: str | Path, command: str = "",
                 kernels_json: str | Path | None = None) -> list[Path]:  # fmt: skip
    """throughput.json (rows, roofline, goals), throughput.md, throughput.png/pdf under out_dir."""
    from bench.kernels.common import write_json

    out = Path(out_dir)
    kgoals = None
    if kernels_json and Path(kernels_json).is_file():
        from bench.kernels.latency import op_summary

        kgoals = op_summary(json.loads(Path(kernels_json).read_text()))
    write_json(out / "throughput.json", {"kind": "genbench.throughput", "command": command, "roofline": roof,
                                         "goals": goals(rows, roof), "rows": rows})  # fmt: skip
    (out / "throughput.md").write_text(markdown(rows, roof, command, kgoals))
    try:
        plots = plot(rows, out / "throughput")
    except ImportError as e:  # a bare GPU image without matplotlib still gets its tables
        print(f"warning: plots skipped ({e})")
        plots = []
    return [out / "throughput.json", out / "throughput.md", *plots]


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.throughput_report RUN_DIR --out DIR`: the tables of a (possibly killed) run from its
    rows (throughput.jsonl) and its roofline (roofline.json)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.throughput_report", description=main.__doc__)
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--kernels-json", default="")
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    run = Path(a.run_dir)
    if not (run / "throughput.jsonl").is_file() or not (run / "roofline.json").is_file():
        print(f"error: {run} holds no throughput.jsonl + roofline.json (not a throughput run directory)")
        return 2
    rows = read_rows(run / "throughput.jsonl")
    roof = json.loads((run / "roofline.json").read_text())
    for path in write_report(rows, roof, a.out, a.command, a.kernels_json or None):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
