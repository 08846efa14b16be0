"""Tables and plots from the results store alone (no model code is imported).

`load_results` reads every `results/<suite>/<run_id>/metrics.jsonl` into one long DataFrame (a torn or corrupt
line, as a killed run leaves, is skipped with a warning; a resumed run's repeated rows keep the last one) and
attaches each run's provenance from env.json. `build_reports` writes, per suite, `summary.md` / `summary.tex`
(measured values; the papers' published numbers in a separate table), `convergence.md`, `metrics_long.csv`
and the plots of `bench.plots`. Values from different feature extractors (or sample counts) never share a
column, a curve or an axis. The same store gives byte-identical tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench import plots

COLUMNS = (
    "run_id", "suite", "backbone", "phase", "metric", "value", "epoch", "step", "images_seen", "train_flops",
    "n_samples", "extractor", "sampler", "steps", "nfe", "guidance", "device", "seed", "config_hash", "time",
)  # fmt: skip
# A resumed run re-logs rows; the last one per this key wins.
DEDUP_KEY = ("run_id", "backbone", "phase", "metric", "epoch", "extractor", "sampler", "steps", "guidance", "n_samples")  # fmt: skip
_NUMERIC = ("value", "epoch", "step", "images_seen", "train_flops", "n_samples", "steps", "nfe", "seed")
# Per-run provenance attached to every row (from env.json), plus where the row came from.
RUN_COLUMNS = ("run_dir", "line", "git_sha", "git_dirty", "torch", "triton", "cuda", "host")

# Metrics computed from generated samples: they depend on the sampler setting and on the extractor.
SAMPLE_METRICS = ("fid", "fd_dinov2", "sfid", "is", "precision", "recall", "kid", "n_nonfinite")
METRIC_NAMES = {
    "fid": "FID", "fd_dinov2": "FD-DINOv2", "sfid": "sFID", "is": "IS", "precision": "Precision", "recall": "Recall",
    "kid": "KID", "n_nonfinite": "non-finite samples", "bits_per_dim": "bits/dim", "linear_probe_acc": "probe acc",
}  # fmt: skip
KERNEL_LATENCY_UNITS = {"latency_ms": 1.0, "latency_us": 1e-3, "latency_s": 1e3}

DEFAULT_PAPER_CSV = Path(__file__).resolve().parents[1] / "reports" / "paper_reported.csv"
PAPER_COLUMNS = ("backbone", "system", "setting", "epochs", "metric", "value", "guidance", "source", "note")


# ----------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunInfo:
    """One run directory: its config.json and env.json (empty dicts when absent)."""

    suite: str
    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def notes(self) -> dict[str, Any]:
        """backbone -> notes, from the resolved config. Accepted shapes: {"backbones": {name: {"notes": ...}}},
        {"backbones": [{"name": ..., "notes": ...}]}, {"notes": {name: ...}}, {"backbone": name, "notes": ...}."""
        cfg, out = self.config, {}
        bbs = cfg.get("backbones")
        if isinstance(bbs, dict):
            out.update(
                {name: v.get("notes") for name, v in bbs.items() if isinstance(v, dict) and v.get("notes")}
            )
        elif isinstance(bbs, list):
            for v in bbs:
                if isinstance(v, dict) and v.get("notes"):
                    out[str(v.get("name") or v.get("backbone"))] = v["notes"]
        notes = cfg.get("notes")
        if isinstance(notes, dict) and isinstance(cfg.get("backbone"), str):
            out.setdefault(cfg["backbone"], notes)
        elif isinstance(notes, dict):
            out.update({k: v for k, v in notes.items() if k not in out})
        return out


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        warnings.warn(f"{path}: not valid JSON ({e}); ignored", RuntimeWarning, stacklevel=3)
        return {}
    return obj if isinstance(obj, dict) else {}


def _run_dirs(results_dir: Path) -> list[Path]:
    return sorted(p.parent for p in results_dir.glob("*/*/metrics.jsonl") if p.is_file())


def load_runs(results_dir: str | Path) -> list[RunInfo]:
    """Every run directory (one holding a metrics.jsonl) under results_dir, sorted by (suite, run_id)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    return [
        RunInfo(
            suite=d.parent.name,
            run_id=d.name,
            path=d,
            config=_read_json(d / "config.json"),
            env=_read_json(d / "env.json"),
        )
        for d in _run_dirs(results_dir)
    ]


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _read_rows(run: RunInfo) -> list[dict]:
    path = run.path / "metrics.jsonl"
    rows = []
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            where = "trailing" if i == len(lines) else "mid-file"
            warnings.warn(
                f"{path}:{i}: skipped a corrupt {where} line (torn write of a killed run?)",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if not isinstance(row, dict):
            warnings.warn(
                f"{path}:{i}: skipped a line that is not a JSON object", RuntimeWarning, stacklevel=3
            )
            continue
        row = {k: _hashable(v) for k, v in row.items()}
        row["run_id"] = row.get("run_id") or run.run_id
        row["suite"] = row.get("suite") or run.suite
        row["run_dir"] = f"{run.suite}/{run.run_id}"
        row["line"] = i
        rows.append(row)
    return rows


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """All metric rows of all runs under results_dir (long format: COLUMNS, then any extra keys the rows carry,
    then RUN_COLUMNS), with resumed duplicates reduced to their last row. Raises FileNotFoundError when the
    directory is missing; returns an empty frame (with the columns) when it holds no rows."""
    rows: list[dict] = []
    for run in load_runs(results_dir):
        env = run.env
        prov = {"git_sha": env.get("git_sha"), "git_dirty": env.get("git_dirty"), "torch": env.get("torch"),
                "triton": env.get("triton"), "cuda": env.get("cuda"), "host": env.get("host")}  # fmt: skip
        rows.extend({**r, **{k: v for k, v in prov.items() if k not in r}} for r in _read_rows(run))
    extras = sorted({k for r in rows for k in r} - set(COLUMNS) - set(RUN_COLUMNS))
    df = pd.DataFrame(rows, columns=[*COLUMNS, *extras, *RUN_COLUMNS])
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df = df.sort_values(["run_dir", "line"], kind="stable")
    # Extra keys a row carries (beyond the store's fields) also identify the measurement.
    df = df.drop_duplicates(subset=[*DEDUP_KEY, *extras], keep="last")
    return df.sort_values(["suite", "run_dir", "line"], kind="stable").reset_index(drop=True)


def load_paper_reported(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers (reports/paper_reported.csv by default)."""
    path = Path(path) if path is not None else DEFAULT_PAPER_CSV
    if not path.is_file():
        raise FileNotFoundError(f"published-numbers file {path} does not exist")
    # Read as text: a published number is shown exactly as the paper prints it ("2.40", not "2.400").
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    bad = df.loc[pd.to_numeric(df["value"], errors="coerce").isna(), "value"].tolist()
    if bad:
        raise ValueError(f"{path}: non-numeric value(s) {bad}")
    return df


# ----------------------------------------------------------------------------------------------- formatting


def _isnull(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _key(v: Any) -> str:
    """Stable text for a grouping key: '' for null, integers without '.0'."""
    if _isnull(v):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _num(v: Any, scale: float = 1.0) -> str:
    """Fixed number formatting (4 significant digits), so the same store gives identical tables."""
    if _isnull(v):
        return ""
    if isinstance(v, str):
        return v
    v = float(v) * scale
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 9999.5 else f"{v:.4g}"


def _setting(sampler: Any, steps: Any, guidance: Any) -> str:
    parts = [_key(sampler)]
    if _key(steps):
        parts.append(f"{_key(steps)} steps")
    if _key(guidance):
        parts.append(f"g={_key(guidance)}")
    return ", ".join(p for p in parts if p)


def _col(metric: str, extractor: Any = None, n: Any = None, prefix: str = "") -> str:
    inner = ", ".join(p for p in (_key(extractor), f"N={_key(n)}" if _key(n) else "") if p)
    name = f"{METRIC_NAMES.get(metric, metric)}{(' ' + prefix) if prefix else ''}"
    return f"{name} ({inner})" if inner else name


def _table(df: pd.DataFrame, fmt: str) -> str:
    """Markdown ('github') or LaTeX ('latex_booktabs') table of an all-string frame."""
    if fmt == "github":
        cells = [[str(c).replace("|", "\\|") for c in row] for row in df.itertuples(index=False)]
        headers = [str(h).replace("|", "\\|") for h in df.columns]
    else:
        cells, headers = (
            [list(map(str, row)) for row in df.itertuples(index=False)],
            [str(h) for h in df.columns],
        )
    return tabulate(cells, headers=headers, tablefmt=fmt, disable_numparse=True, missingval="")


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


# ----------------------------------------------------------------------------------------------- tables


def _last(rows: pd.DataFrame) -> pd.Series:
    """The row at the latest epoch (rows without an epoch count as latest), ties broken by file order."""
    order = rows.assign(_e=rows["epoch"].fillna(np.inf)).sort_values(["_e", "run_dir", "line"], kind="stable")
    return order.iloc[-1]


def _cell(rows: pd.DataFrame, epoch: bool = False, scale: float = 1.0) -> str:
    """The last value of rows as text ('' when none), optionally with the epoch it was measured at."""
    if rows.empty:
        return ""
    r = _last(rows)
    return _num(r["value"], scale) + (f" (ep {_key(r['epoch'])})" if epoch and _key(r["epoch"]) else "")


def _best(rows: pd.DataFrame) -> str:
    finite = rows[np.isfinite(rows["value"])]
    if finite.empty:
        return ""
    b = finite.sort_values(["value", "epoch", "line"], kind="stable").iloc[0]
    return _num(b["value"]) + (f" (ep {_key(b['epoch'])})" if _key(b["epoch"]) else "")


def _with_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Text grouping keys (null -> ''), so grouping and sorting never meet NaN or mixed types."""
    return df.assign(
        k_bb=df["backbone"].map(_key),
        k_run=df["run_id"].map(_key),
        k_dev=df["device"].map(_key),
        k_setting=[_setting(a, b, c) for a, b, c in zip(df["sampler"], df["steps"], df["guidance"])],
        # linear-probe extractors are logged as "<backbone>_latent": one column per probed thing, not per backbone
        k_ext=[
            _key(x).removeprefix(f"{_key(b)}_") if m == "linear_probe_acc" else _key(x)
            for x, b, m in zip(df["extractor"], df["backbone"], df["metric"])
        ],
        k_n=df["n_samples"].map(_key),
    )


def _row_keys(d: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(backbone, run, sampler setting) of each table row: one per setting the sample-based metrics used."""
    sample = d[(d["phase"] == "eval") & d["metric"].isin(SAMPLE_METRICS)]
    keys = []
    for bb, run in sorted(set(zip(d["k_bb"], d["k_run"]))):
        mine = sample[(sample["k_bb"] == bb) & (sample["k_run"] == run)]
        keys += [(bb, run, s) for s in sorted(set(mine["k_setting"])) or [""]]
    return keys


def _labeler(keys: list[tuple[str, str, str]]):
    """(backbone, run, setting) -> legend/column label; run id and setting are added only where needed."""
    runs = pd.DataFrame(keys, columns=["bb", "run", "s"])
    multi_run = bool((runs.groupby("bb")["run"].nunique() > 1).any())
    multi_setting = bool((runs.groupby(["bb", "run"])["s"].nunique() > 1).any())
    return lambda bb, run, s: (
        bb + (f" [{run}]" if multi_run else "") + (f" ({s})" if multi_setting and s else "")
    )


def _eval_for(d: pd.DataFrame, bb: str, run: str, s: str) -> pd.DataFrame:
    """Eval rows of one table row: sample-based metrics of setting s, plus setting-free ones (bits/dim, probe)."""
    ev = d[(d["phase"] == "eval") & (d["k_bb"] == bb) & (d["k_run"] == run)]
    return ev[~ev["metric"].isin(SAMPLE_METRICS) | (ev["k_setting"] == s)]


# (column, metric, scale): best over the measured batch sizes; a column appears only when its metric exists.
SUMMARY_THROUGHPUT = (
    ("train img/s (best batch)", "train_img_per_s", 1.0),
    ("sample img/s (best batch)", "sample_img_per_s", 1.0),
    ("peak mem (MB)", "peak_mem_mb", 1.0),
    ("peak RSS (MB)", "peak_rss_mb", 1.0),
    ("params (M)", "params", 1e-6),
)


def _summary_rows(d: pd.DataFrame, keys: list, thr: pd.DataFrame, thr_same_suite: bool) -> pd.DataFrame:
    ev = d[d["phase"] == "eval"]
    fid = ev[ev["metric"] == "fid"]
    fid_cols = sorted(set(zip(fid["k_ext"], fid["k_n"])))
    probe_exts = sorted(set(ev.loc[ev["metric"] == "linear_probe_acc", "k_ext"]))
    has_bpd = bool((ev["metric"] == "bits_per_dim").any())
    out = []
    for bb, run, s in keys:
        mine = d[(d["k_bb"] == bb) & (d["k_run"] == run)]
        train = mine[mine["phase"] == "train"]
        e = _eval_for(d, bb, run, s)
        row = {
            "backbone": bb,
            "run": run,
            "epochs": _num((train if train["epoch"].notna().any() else mine)["epoch"].max()),
        }
        for ext, n in fid_cols:  # one column pair per (extractor, N): never mixed
            f = e[(e["metric"] == "fid") & (e["k_ext"] == ext) & (e["k_n"] == n)]
            row[_col("fid", ext, n, "last")] = _cell(f)
            row[_col("fid", ext, n, "best")] = _best(f)
        if has_bpd:
            row["bits/dim"] = _cell(e[e["metric"] == "bits_per_dim"])
        for ext in probe_exts:
            row[_col("linear_probe_acc", ext)] = _cell(
                e[(e["metric"] == "linear_probe_acc") & (e["k_ext"] == ext)]
            )
        t = thr[(thr["k_bb"] == bb) & ((thr["k_run"] == run) if thr_same_suite else True)]
        for name, metric, scale in SUMMARY_THROUGHPUT:
            if (thr["metric"] == metric).any():
                row[name] = _num(t.loc[t["metric"] == metric, "value"].max(), scale)
        wall = mine[(mine["phase"] == "run") & (mine["metric"] == "wall_s")]
        if ((d["phase"] == "run") & (d["metric"] == "wall_s")).any():
            row["wall (s)"] = _cell(wall)
        sample = e[e["metric"].isin(SAMPLE_METRICS)]
        first = sample.iloc[0] if not sample.empty else pd.Series(dtype=object)
        row["NFE"] = _key(sample["nfe"].dropna().iloc[-1]) if sample["nfe"].notna().any() else ""
        row.update({c: _key(first.get(c)) for c in ("sampler", "steps", "guidance")})
        out.append(row)
    return pd.DataFrame(out)


def _eval_last_rows(d: pd.DataFrame, keys: list) -> pd.DataFrame:
    """Every eval metric at its last evaluated epoch; one column per (metric, extractor, N)."""
    ev = d[d["phase"] == "eval"]
    order = {m: i for i, m in enumerate([*SAMPLE_METRICS, "bits_per_dim", "linear_probe_acc"])}
    cols = sorted(set(zip(ev["metric"], ev["k_ext"], ev["k_n"])), key=lambda c: (order.get(c[0], 99), c))
    out = []
    for bb, run, s in keys:
        e = _eval_for(d, bb, run, s)
        if not e.empty:
            row = {"backbone": bb, "run": run, "setting": s}
            row.update(
                {
                    _col(m, x, n): _cell(e[(e["metric"] == m) & (e["k_ext"] == x) & (e["k_n"] == n)], True)
                    for m, x, n in cols
                }
            )
            out.append(row)
    return pd.DataFrame(out)


THROUGHPUT_COLUMNS = {
    "train_img_per_s": "train img/s", "sample_img_per_s": "sample img/s", "sample_latency_s": "sample latency (s)",
    "peak_mem_mb": "peak mem (MB)", "peak_rss_mb": "peak RSS (MB)", "params": "params (M)",
    "tokenizer_params": "tokenizer params (M)",
}  # fmt: skip


def _throughput_rows(thr: pd.DataFrame) -> pd.DataFrame:
    """One row per (backbone, run, device, batch size[, sampler setting]) with every throughput metric."""
    out = []
    groups = sorted(
        set(zip(thr["k_bb"], thr["k_run"], thr["k_dev"], thr["k_n"])),
        key=lambda k: (*k[:3], float(k[3] or 0)),
    )
    for bb, run, dev, bs in groups:
        g = thr[(thr["k_bb"] == bb) & (thr["k_run"] == run) & (thr["k_dev"] == dev) & (thr["k_n"] == bs)]
        for s in sorted(set(g["k_setting"]) - {""}) or [""]:
            gs = g[g["k_setting"].isin([s, ""])]
            row = {"backbone": bb, "run": run, "device": dev, "batch": bs, "sampler": s}
            for m, name in THROUGHPUT_COLUMNS.items():
                if (thr["metric"] == m).any():
                    row[name] = _cell(gs[gs["metric"] == m], scale=1e-6 if m.endswith("params") else 1.0)
            out.append(row)
    return pd.DataFrame(out)


def _by_epoch(rows: pd.DataFrame, label) -> pd.DataFrame:
    """epoch x series table of the last value per (series, epoch)."""
    rows = rows[rows["epoch"].notna()]
    if rows.empty:
        return pd.DataFrame()
    series = [label(b, r, s) for b, r, s in zip(rows["k_bb"], rows["k_run"], rows["k_setting"])]
    rows = rows.assign(series=series).sort_values(["epoch", "run_dir", "line"], kind="stable")
    piv = rows.groupby(["epoch", "series"])["value"].last().unstack("series")
    table = pd.DataFrame({"epoch": [_key(e) for e in piv.index]})
    for c in sorted(piv.columns):
        table[c] = [_num(v) for v in piv[c]]
    return table


def _kernel_frame(d: pd.DataFrame) -> pd.DataFrame:
    """Kernel rows -> (op, impl, size, latency_ms). Rows give op/impl/size in their own keys when present, else
    in extractor/sampler/n_samples; metric latency_ms|latency_us|latency_s is a measurement, roofline_ms (or
    impl == "roofline") the roofline bound."""
    k = d[d["phase"] == "kernels"]
    if k.empty:
        return pd.DataFrame(columns=["op", "impl", "size", "latency_ms"])

    def pick(own: str, fallback: str) -> pd.Series:
        s = k[own] if own in k.columns else pd.Series(np.nan, index=k.index)
        return s.where(s.notna(), k[fallback])

    size = pd.to_numeric(pick("size", "n_samples"), errors="coerce")
    impl = pick("impl", "sampler").map(_key)
    scale = k["metric"].map(KERNEL_LATENCY_UNITS)
    is_roof = k["metric"].isin(["roofline_ms"])
    impl = impl.where(~is_roof, "roofline")
    scale = scale.where(~is_roof, 1.0)
    f = pd.DataFrame(
        {
            "op": pick("op", "extractor").map(_key),
            "impl": impl,
            "size": size,
            "latency_ms": k["value"] * scale,
        }
    )
    return f[scale.notna()].sort_values(["op", "impl", "size"], kind="stable").reset_index(drop=True)


def _kernel_table(kf: pd.DataFrame) -> pd.DataFrame:
    if kf.empty:
        return pd.DataFrame()
    roof = kf[kf["impl"] == "roofline"].groupby(["op", "size"])["latency_ms"].last()
    meas = kf[kf["impl"] != "roofline"].groupby(["op", "size", "impl"])["latency_ms"].last().reset_index()
    out = []
    for r in meas.itertuples(index=False):
        rl = roof.get((r.op, r.size))
        out.append({"op": r.op, "size": _key(r.size), "impl": r.impl, "latency (ms)": _num(r.latency_ms),
                    "roofline (ms)": _num(rl), "% of roofline": _num(100 * rl / r.latency_ms) if rl is not None else ""})  # fmt: skip
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------- report


def _published(paper: pd.DataFrame, d: pd.DataFrame) -> pd.DataFrame:
    """Published rows for the suite's backbones (+ the ADM evaluator check when the suite uses Inception)."""
    wanted = set(d["backbone"].map(_key))
    if (d["extractor"] == "inception-v3-compat").any():
        wanted.add("adm")
    p = paper[paper["backbone"].isin(wanted)]
    out = p[list(PAPER_COLUMNS)].reset_index(drop=True)
    return out.rename(columns={"value": "published value"})


def _notes_rows(runs: Sequence[RunInfo], d: pd.DataFrame) -> pd.DataFrame:
    """One row per (backbone, run, note key) for the backbones each run measured."""
    out = []
    for run in runs:
        notes = run.notes()
        for bb in sorted(set(d.loc[d["run_id"].map(_key) == run.run_id, "backbone"].map(_key)) - {""}):
            n = notes.get(bb)
            if isinstance(n, dict) and n:
                out += [
                    {"backbone": bb, "run": run.run_id, "note": str(k), "value": _note_value(v)}
                    for k, v in sorted(n.items())
                ]
            elif n:
                out.append({"backbone": bb, "run": run.run_id, "note": "", "value": _note_value(n)})
            else:
                out.append(
                    {"backbone": bb, "run": run.run_id, "note": "", "value": "(no notes in config.json)"}
                )
    return pd.DataFrame(out)


def _note_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _provenance_rows(runs: Sequence[RunInfo]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": r.run_id,
                "git sha": _key(r.env.get("git_sha"))[:12],
                "dirty": _key(r.env.get("git_dirty")),
                "device": _key(r.env.get("device")),
                "torch": _key(r.env.get("torch")),
                "triton": _key(r.env.get("triton")),
                "cuda": _key(r.env.get("cuda")),
            }
            for r in runs
        ]  # fmt: skip
    )


def _sections(sections: list[tuple[str, str, pd.DataFrame]], fmt: str) -> str:
    parts = []
    for title, caption, table in sections:
        if table is None or table.empty:
            continue
        body = _table(table, fmt)
        if fmt == "github":
            parts.append(f"## {title}\n\n{caption}\n\n{body}\n" if caption else f"## {title}\n\n{body}\n")
        else:
            cap = _tex_escape(f"{title}. {caption}" if caption else title)
            parts.append(
                f"\\begin{{table}}[t]\n\\centering\\small\n\\caption{{{cap}}}\n\\resizebox{{\\linewidth}}{{!}}{{%\n{body}}}\n\\end{{table}}\n"
            )
    return "\n".join(parts)


def _plot(fn, df: pd.DataFrame, stem: Path) -> list[Path]:
    try:
        return fn(df, stem)
    except ValueError as e:  # plots raise ValueError only for "nothing plottable"
        warnings.warn(f"{stem.name}: not plotted ({e})", RuntimeWarning, stacklevel=2)
        return []


def _convergence_md(suite: str, d: pd.DataFrame, label) -> str:
    parts = [f"# Suite `{suite}`: convergence (measured)\n"]
    fid = d[(d["phase"] == "eval") & (d["metric"] == "fid")]
    for ext, n in sorted(set(zip(fid["k_ext"], fid["k_n"]))):
        t = _by_epoch(fid[(fid["k_ext"] == ext) & (fid["k_n"] == n)], label)
        parts.append(f"## {_col('fid', ext, n)} by epoch\n\n{_table(t, 'github')}\n" if not t.empty else "")
    for phase, title in (("train", "Generator training loss"), ("stage1", "Stage-1 (tokenizer) loss")):
        t = _by_epoch(d[(d["phase"] == phase) & (d["metric"] == "loss")], label)
        parts.append(f"## {title} by epoch\n\n{_table(t, 'github')}\n" if not t.empty else "")
    return "\n".join(p for p in parts if p)


def _suite_plots(
    d: pd.DataFrame, label, thr: pd.DataFrame, thr_same_suite: bool, kf: pd.DataFrame, out: Path
) -> list[Path]:
    written: list[Path] = []
    fid = d[(d["phase"] == "eval") & (d["metric"] == "fid") & d["value"].notna()].copy()
    if not fid.empty:
        fid["series"] = [label(b, r, s) for b, r, s in zip(fid["k_bb"], fid["k_run"], fid["k_setting"])]
        fid["extractor"] = [f"{e}, N={n}" if n else e for e, n in zip(fid["k_ext"], fid["k_n"])]
        written += _plot(plots.fid_vs_epoch, fid, out / "fid_vs_epoch")
        # Training compute at each evaluated epoch: the eval row's own train_flops, else the train row's.
        train = d[(d["phase"] == "train") & d["train_flops"].notna() & d["epoch"].notna()]
        flops = train.groupby(["k_run", "k_bb", "epoch"])["train_flops"].last()
        fill = pd.Series(
            [flops.get(k, np.nan) for k in zip(fid["k_run"], fid["k_bb"], fid["epoch"])], index=fid.index
        )
        comp = fid.assign(train_flops=fid["train_flops"].fillna(fill))
        if comp["train_flops"].notna().any():
            written += _plot(plots.fid_vs_compute, comp, out / "fid_vs_compute")
        sps = thr[thr["metric"] == "sample_img_per_s"] if not thr.empty else thr
        pts = []
        for (series, ext), g in fid.groupby(["series", "extractor"], sort=True):
            last = _last(g)
            t = (
                sps[
                    (sps["k_bb"] == last["k_bb"])
                    & ((sps["k_run"] == last["k_run"]) if thr_same_suite else True)
                ]
                if not sps.empty
                else sps
            )
            if not t.empty:
                pts.append(
                    {
                        "series": series,
                        "extractor": ext,
                        "value": last["value"],
                        "sample_img_per_s": t["value"].max(),
                    }
                )
        if pts:
            written += _plot(plots.fid_vs_throughput, pd.DataFrame(pts), out / "fid_vs_throughput")
    if not kf.empty:
        written += _plot(plots.kernel_latency, kf, out / "kernel_latency")
    return written


def _suite_report(
    suite: str, df: pd.DataFrame, runs: list[RunInfo], paper: pd.DataFrame, out: Path, make_plots: bool = True
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    raw = df[df["suite"] == suite]
    raw.to_csv(out / "metrics_long.csv", index=False)
    d = _with_keys(raw)
    suite_runs = [r for r in runs if r.suite == suite]
    keys = _row_keys(d)
    label = _labeler(keys)

    # Throughput: this suite's rows, else its companion "<suite>-throughput" suite (same models, no data).
    thr, thr_suite = d[d["phase"] == "throughput"], suite
    if thr.empty and (df["suite"] == f"{suite}-throughput").any():
        thr_suite = f"{suite}-throughput"
        thr = _with_keys(df[(df["suite"] == thr_suite) & (df["phase"] == "throughput")])
    kf = _kernel_frame(d)

    measured = "Measured by this harness. FID columns are per feature extractor and sample count N; never compare across them."
    if thr_suite != suite:
        measured += f" Throughput columns come from suite `{thr_suite}` (same backbones)."
    published = "Copied from the papers / official READMEs (see source); comparable to measured values only where data, budget and evaluator match."
    sections = [
        ("Measured results", measured, _summary_rows(d, keys, thr, thr_suite == suite)),
        ("Evaluation at the last evaluated epoch (measured)", "(ep N) = epoch of the value.", _eval_last_rows(d, keys)),
        (f"Throughput (measured, suite {thr_suite})", "", _throughput_rows(thr)),
        ("Kernel latency (measured)", "", _kernel_table(kf)),
        ("Backbone notes (from config.json)", "Choices that change results, e.g. which CFG behaviour is used.", _notes_rows(suite_runs, d)),
        ("Published numbers (paper-reported, NOT measured here)", published, _published(paper, d)),
        ("Runs", "Provenance from env.json.", _provenance_rows(suite_runs)),
    ]  # fmt: skip
    head = "generated by `invoke report` from the results store alone"
    (out / "summary.md").write_text(
        f"# Suite `{suite}`\n\nTables {head}.\n\n" + _sections(sections, "github")
    )
    tex = _sections([(f"Suite {suite}: {t}", c, x) for t, c, x in sections], "latex_booktabs")
    (out / "summary.tex").write_text(
        f"% Suite {suite}: tables {head}; do not edit. Needs booktabs, graphicx.\n" + tex
    )
    (out / "convergence.md").write_text(_convergence_md(suite, d, label))
    written = [out / "summary.md", out / "summary.tex", out / "convergence.md", out / "metrics_long.csv"]
    if make_plots:
        written += _suite_plots(d, label, thr, thr_suite == suite, kf, out)
    return written


def build_reports(
    results_dir: str | Path,
    out_dir: str | Path,
    suites: Sequence[str] | None = None,
    *,
    paper_csv: str | Path | None = None,
    make_plots: bool = True,
) -> list[Path]:
    """Write out_dir/<suite>/{summary.md, summary.tex, convergence.md, metrics_long.csv, *.png, *.pdf} for every
    suite in the store (or those named). A "<suite>-throughput" companion suite gets its own report and also
    feeds the throughput columns of <suite>'s summary. Returns the written paths."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    runs = load_runs(results_dir)
    df = load_results(results_dir)
    if df.empty:
        raise ValueError(
            f"results directory {results_dir} holds no runs with metric rows (expected <suite>/<run_id>/metrics.jsonl)"
        )
    available = sorted(set(df["suite"].map(_key)))
    suites = available if suites is None else list(suites)
    unknown = sorted(set(suites) - set(available))
    if unknown:
        raise ValueError(f"suite(s) {unknown} not in {results_dir}; available: {available}")
    paper = load_paper_reported(paper_csv)
    written: list[Path] = []
    for suite in suites:
        written += _suite_report(suite, df, runs, paper, out_dir / suite, make_plots)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="invoke report", description="Rebuild tables and plots from the results store."
    )
    ap.add_argument("--results", default="results", help="results store (default: results)")
    ap.add_argument("--out", default="reports", help="output directory (default: reports)")
    ap.add_argument("--suite", action="append", default=None, help="only this suite (repeatable)")
    ap.add_argument(
        "--paper-csv", default=None, help="published numbers (default: reports/paper_reported.csv)"
    )
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    args = ap.parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(
            f"error: results directory {results} does not exist; run `invoke bench` first or pass --results",
            file=sys.stderr,
        )
        return 2
    if not _run_dirs(results):
        print(
            f"error: results directory {results} holds no runs (expected {results}/<suite>/<run_id>/metrics.jsonl)",
            file=sys.stderr,
        )
        return 2
    try:
        paths = build_reports(
            results, args.out, args.suite, paper_csv=args.paper_csv, make_plots=not args.no_plots
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
