"""Tables from the store's rows: the leaderboard (one row per backbone and sampler setting, intervals across
seeds or from bootstrap rows), throughput, convergence by epoch, published numbers, notes and provenance.

Each table is a `Table`: display text, numeric sort keys (for the HTML page) and, per column, the set of
quantities its values came from. A column is built from one quantity only (`check_meanings`); the guidance
conventions, NFE vs sampler steps and pixel vs latent densities are separate quantities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from bench.report.load import PAPER_COLUMNS, RunInfo, isnull, key

# Metrics computed from generated samples: they depend on the sampler setting and on the extractor.
SAMPLE_METRICS = ("fid", "fd_dinov2", "sfid", "is", "precision", "recall", "kid", "n_nonfinite")
NAMES = {
    "fid": "FID", "fd_dinov2": "FD-DINOv2", "sfid": "sFID", "is": "IS", "precision": "precision",
    "recall": "recall", "kid": "KID", "n_nonfinite": "non-finite samples",
    "pixel_bits_per_dim": "pixel bits/dim", "latent_bits_per_dim": "latent bits/dim",
    "pixel_bits_per_dim_clean": "pixel bits/dim (clean)", "pixel_bits_per_dim_noisy": "pixel bits/dim (noisy)",
    "latent_bits_per_dim_clean": "latent bits/dim (clean)", "latent_bits_per_dim_noisy": "latent bits/dim (noisy)",
    "linear_probe_acc": "probe acc", "rfid": "rFID", "psnr": "PSNR (dB)", "lpips": "LPIPS",
}  # fmt: skip
# (column, quantity, scale): best over the measured batch sizes.
THROUGHPUT = (
    ("train img/s", "train_img_per_s", 1.0),
    ("sample img/s", "sample_img_per_s", 1.0),
    ("peak mem (MB)", "peak_mem_mb", 1.0),
    ("peak RSS (MB)", "peak_rss_mb", 1.0),
    ("params (M)", "params", 1e-6),
    ("tokenizer params (M)", "tokenizer_params", 1e-6),
)
# Sampler description columns: each one field, one meaning.
SAMPLER_COLUMNS = (
    ("sampler", "sampler"),
    ("sampler steps", "steps"),
    ("NFE / image", "nfe"),
    ("guidance scale (1 = off)", "cfg_scale"),
    ("flow guidance w (0 = off)", "flow_weight"),
)


@dataclass
class Table:
    text: pd.DataFrame
    sort: pd.DataFrame | None = None
    sources: dict[str, set[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.text.empty


def check_meanings(t: Table) -> None:
    """Raise when a column holds values of more than one quantity."""
    mixed = {c: sorted(s) for c, s in t.sources.items() if len(s) > 1}
    if mixed:
        raise AssertionError(f"columns mixing quantities: {mixed}")


# ----------------------------------------------------------------------------------------------- formatting


def num(v, scale: float = 1.0) -> str:
    """Fixed formatting (4 significant digits), so the same store gives identical tables."""
    if isnull(v):
        return ""
    if isinstance(v, str):
        return v
    v = float(v) * scale
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 9999.5 else f"{v:.4g}"


def setting(sampler, steps, cfg, w) -> str:
    parts = [key(sampler)]
    if key(steps):
        parts.append(f"{key(steps)} steps")
    if key(cfg):
        parts.append(f"CFG {num(cfg)}")
    if key(w):
        parts.append(f"w={num(w)}")
    return ", ".join(p for p in parts if p)


def col(quantity: str, ext: str = "", n: str = "", prefix: str = "") -> str:
    name = NAMES.get(quantity, quantity)
    inner = ", ".join(x for x in (ext, f"N={n}" if n else "") if x)
    return f"{prefix}{name}" + (f" ({inner})" if inner else "")


def interval(values: Sequence[float], lo: float | None = None, hi: float | None = None) -> tuple[str, float]:
    """Text and sort key: mean +- 95% t-interval over several seeds; value [lo, hi] for one value with a
    bootstrap interval; the value alone otherwise."""
    v = np.asarray([x for x in values if not isnull(x)], dtype=float)
    if len(v) == 0:
        return "", np.nan
    if len(v) >= 2:
        m, sd = float(v.mean()), float(v.std(ddof=1))
        hw = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
        return f"{num(m)} ± {num(hw)} (n={len(v)})", m
    if lo is not None and hi is not None and not (isnull(lo) or isnull(hi)):
        return f"{num(v[0])} [{num(lo)}, {num(hi)}]", float(v[0])
    return num(v[0]), float(v[0])


def to_text(t: Table, fmt: str) -> str:
    d = t.text
    return tabulate(d.to_numpy().tolist(), headers=list(d.columns), tablefmt=fmt, disable_numparse=True,
                    missingval="")  # fmt: skip


# ----------------------------------------------------------------------------------------------- helpers


def with_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Text grouping keys (null -> '') so grouping and sorting never meet NaN or mixed types."""
    return df.assign(
        k_bb=df["backbone"].map(key),
        k_run=df["run_id"].map(key),
        k_setting=[setting(*a) for a in zip(df["sampler"], df["steps"], df["cfg_scale"], df["flow_weight"])],
        # linear-probe extractors are logged as "<backbone>_<what>": one column per probed thing
        k_ext=[
            key(x).removeprefix(f"{key(b)}_") if m == "linear_probe_acc" else key(x)
            for x, b, m in zip(df["extractor"], df["backbone"], df["metric"])
        ],
        k_n=df["n_samples"].map(key),
    )


def last(rows: pd.DataFrame) -> pd.Series:
    """The row at the latest epoch (rows without an epoch count as latest), ties broken by file order."""
    order = rows.assign(_e=rows["epoch"].fillna(np.inf)).sort_values(["_e", "run_dir", "line"], kind="stable")
    return order.iloc[-1]


def row_keys(d: pd.DataFrame) -> list[tuple[str, str]]:
    """(backbone, sampler setting) of each leaderboard row: one per setting its sample metrics used."""
    sample = d[(d["phase"] == "eval") & d["metric"].isin(SAMPLE_METRICS)]
    out = []
    for bb in sorted(set(d["k_bb"]) - {""}):
        mine = sample[sample["k_bb"] == bb]
        out += [(bb, s) for s in sorted(set(mine["k_setting"])) or [""]]
    return out


def _eval_rows(d: pd.DataFrame, bb: str, s: str) -> pd.DataFrame:
    ev = d[(d["phase"] == "eval") & (d["k_bb"] == bb)]
    return ev[~ev["metric"].isin(SAMPLE_METRICS) | (ev["k_setting"] == s)]


class _Builder:
    """Collects one table's cells, sort keys and the quantity each column's values came from."""

    def __init__(self):
        self.rows: list[dict] = []
        self.sorts: list[dict] = []
        self.sources: dict[str, set[str]] = {}

    def new(self) -> None:
        self.rows.append({})
        self.sorts.append({})

    def put(self, column: str, text: str, sort=np.nan, quantity: str | None = None) -> None:
        self.rows[-1][column] = text
        self.sorts[-1][column] = sort if not isnull(sort) else (np.nan if text == "" else text)
        if quantity is not None and text != "":
            self.sources.setdefault(column, set()).add(quantity)

    def table(self, drop_empty: bool = False) -> Table:
        cols: list[str] = []
        for r in self.rows:
            cols += [c for c in r if c not in cols]
        if drop_empty:  # a column no row fills (e.g. the flows' weight in a run without flows) says nothing
            cols = [c for c in cols if any(r.get(c, "") != "" for r in self.rows)]
        text = pd.DataFrame(self.rows, columns=cols).fillna("")
        return Table(text, pd.DataFrame(self.sorts, columns=cols), self.sources)


# ----------------------------------------------------------------------------------------------- leaderboard


def leaderboard(d: pd.DataFrame, thr: pd.DataFrame) -> Table:
    """One row per (backbone, sampler setting) over all runs (seeds) of the suite."""
    ev = d[d["phase"] == "eval"]
    tok = d[d["phase"] == "tokenizer"]
    sm, other = ev[ev["metric"].isin(SAMPLE_METRICS)], ev[~ev["metric"].isin(SAMPLE_METRICS)]
    sample_cols = sorted(set(zip(sm["quantity"], sm["k_ext"], sm["k_n"])),
                         key=lambda c: (SAMPLE_METRICS.index(c[0]) if c[0] in SAMPLE_METRICS else 99, c))  # fmt: skip
    fid_cols = [c for c in sample_cols if c[0] == "fid"]
    other_eval = sorted(set(zip(other["quantity"], other["k_ext"])))
    tok_cols = sorted(set(zip(tok["quantity"], tok["k_ext"], tok["k_n"])))
    b = _Builder()
    for bb, s in row_keys(d):
        mine = d[d["k_bb"] == bb]
        e = _eval_rows(d, bb, s)
        runs = sorted(set(mine["k_run"]))
        b.new()
        b.put("backbone", bb)
        b.put("family", key(mine["family"].iloc[0]))
        b.put("seeds", str(len(runs)), len(runs))
        train = mine[mine["phase"] == "train"]
        ep = (train if train["epoch"].notna().any() else mine)["epoch"].max()
        b.put("epochs", num(ep), ep, "epoch")
        for q, ext, n in fid_cols:
            f = e[(e["quantity"] == q) & (e["k_ext"] == ext) & (e["k_n"] == n)]
            lasts = [last(g) for _, g in f.groupby("k_run")] if not f.empty else []
            lo = hi = None
            if len(lasts) == 1:
                ci = e[(e["k_ext"] == ext) & (e["k_n"] == n) & (e["epoch"] == lasts[0]["epoch"])]
                lo_r, hi_r = ci[ci["quantity"] == "fid_ci_low"], ci[ci["quantity"] == "fid_ci_high"]
                lo = lo_r["value"].iloc[-1] if not lo_r.empty else None
                hi = hi_r["value"].iloc[-1] if not hi_r.empty else None
            text, sort = interval([r["value"] for r in lasts], lo, hi)
            b.put(col(q, ext, n, "last "), text, sort, q)
            fin = f[np.isfinite(f["value"])]
            if not fin.empty:
                best = fin.groupby("epoch")["value"].mean().sort_index()
                bep = best.idxmin()
                b.put(col(q, ext, n, "best "), f"{num(best[bep])} (ep {key(bep)})", best[bep], q)
            else:
                b.put(col(q, ext, n, "best "), "")
            floor = tok[(tok["k_bb"] == bb) & (tok["quantity"] == "rfid") & (tok["k_ext"] == ext)]
            if not tok[tok["quantity"] == "rfid"].empty:
                rfids = [last(g)["value"] for _, g in floor.groupby("k_run")] if not floor.empty else []
                _put_floor(b, ext, sort, rfids)
        for q, ext, n in sample_cols:
            if q == "fid":
                continue
            f = e[(e["quantity"] == q) & (e["k_ext"] == ext) & (e["k_n"] == n)]
            text, sort = interval([last(g)["value"] for _, g in f.groupby("k_run")] if not f.empty else [])
            b.put(col(q, ext, n), text, sort, q)
        for q, ext in other_eval:
            if q.startswith(("fid_ci", "fid_boot")) or q in (
                "n_boot",
                "ci_level",
            ):  # the FID interval and its settings
                continue
            f = e[(e["quantity"] == q) & (e["k_ext"] == ext)]
            text, sort = interval([last(g)["value"] for _, g in f.groupby("k_run")] if not f.empty else [])
            b.put(col(q, ext), text, sort, q)
        for q, ext, n in tok_cols:
            if q == "rfid" and fid_cols:
                continue
            f = tok[(tok["k_bb"] == bb) & (tok["quantity"] == q) & (tok["k_ext"] == ext) & (tok["k_n"] == n)]
            text, sort = interval([last(g)["value"] for _, g in f.groupby("k_run")] if not f.empty else [])
            b.put(col(q, ext, n, "tokenizer "), text, sort, q)
        t = thr[thr["k_bb"] == bb] if not thr.empty else thr
        for name, q, scale in THROUGHPUT:
            if not thr.empty and (thr["quantity"] == q).any():
                v = t.loc[t["quantity"] == q, "value"].max() if not t.empty else np.nan
                b.put(name + (" (best batch)" if q.endswith("per_s") else ""), num(v, scale), v, q)
        wall = mine[(mine["phase"] == "run") & (mine["metric"] == "wall_s")]
        if ((d["phase"] == "run") & (d["metric"] == "wall_s")).any():
            text, sort = interval(
                [last(g)["value"] for _, g in wall.groupby("k_run")] if not wall.empty else []
            )
            b.put("wall (s)", text, sort, "wall_s")
        sample = e[e["metric"].isin(SAMPLE_METRICS)]
        for name, fieldname in SAMPLER_COLUMNS:
            vals = sample[fieldname].dropna() if not sample.empty else pd.Series(dtype=object)
            v = vals.iloc[-1] if len(vals) else None
            b.put(name, key(v) if fieldname == "sampler" else num(v), np.nan if fieldname == "sampler" else v,
                  fieldname)  # fmt: skip
    return b.table(drop_empty=True)


COMPACT = ("backbone", "seeds", "epochs", "last FID", "best FID", "tokenizer floor", "FID ÷ floor", "sample img/s",
           "NFE / image", "sampler", "guidance scale", "flow guidance")  # fmt: skip


def compact(t: Table) -> Table:
    """The leaderboard's headline columns (README, summary): FID, its floor, speed and the sampler setting."""
    cols = [c for c in t.text.columns if c.startswith(COMPACT)]
    return Table(
        t.text[cols], t.sort[cols] if t.sort is not None else None, {c: t.sources.get(c, set()) for c in cols}
    )


def throughput_table(thr: pd.DataFrame) -> Table:
    """One row per (backbone, run, device, batch size[, sampler setting]) with every throughput metric."""
    b = _Builder()
    if thr.empty:
        return b.table()
    groups = sorted(set(zip(thr["k_bb"], thr["k_run"], thr["device"].map(key), thr["k_n"])),
                    key=lambda k: (*k[:3], float(k[3] or 0)))  # fmt: skip
    for bb, run, dev, bs in groups:
        g = thr[
            (thr["k_bb"] == bb) & (thr["k_run"] == run) & (thr["device"].map(key) == dev) & (thr["k_n"] == bs)
        ]
        for s in sorted(set(g["k_setting"]) - {""}) or [""]:
            gs = g[g["k_setting"].isin([s, ""])]
            b.new()
            for c, v in (
                ("backbone", bb),
                ("run", run),
                ("device", dev),
                ("batch", bs),
                ("sampler setting", s),
            ):
                b.put(c, v)
            for name, q, scale in THROUGHPUT:
                if (thr["quantity"] == q).any():
                    r = gs[gs["quantity"] == q]
                    v = last(r)["value"] if not r.empty else np.nan
                    b.put(name, num(v, scale), v, q)
    return b.table()


def by_epoch(rows: pd.DataFrame, label) -> Table:
    """epoch x series table: mean over runs of the last value per (series, run, epoch)."""
    rows = rows[rows["epoch"].notna()]
    b = _Builder()
    if rows.empty:
        return b.table()
    rows = rows.assign(series=[label(x, s) for x, s in zip(rows["k_bb"], rows["k_setting"])])
    per_run = (
        rows.sort_values(["run_dir", "line"], kind="stable")
        .groupby(["epoch", "series", "k_run"])["value"]
        .last()
    )
    piv = per_run.groupby(["epoch", "series"]).mean().unstack("series")
    for ep in piv.index:
        b.new()
        b.put("epoch", key(ep), ep)
        for c in sorted(piv.columns):
            b.put(c, num(piv.loc[ep, c]), piv.loc[ep, c], key(rows["quantity"].iloc[0]))
    return b.table()


PAPER_METRIC_ORDER = ("fid", "sfid", "is", "precision", "recall")


def published(paper: pd.DataFrame, backbones: set[str], inception: bool) -> Table:
    """Published rows for the suite's backbones (+ the ADM evaluator check where the suite uses Inception), one
    row per (system, setting, guidance, source) with the metrics as "paper ..." columns, values as printed."""
    wanted = set(backbones) | ({"adm"} if inception else set())
    p = paper[paper["backbone"].isin(wanted)]
    idx = [c for c in PAPER_COLUMNS if c not in ("metric", "value", "note")]
    metrics = [m for m in PAPER_METRIC_ORDER if (p["metric"] == m).any()]
    metrics += sorted(set(p["metric"]) - set(metrics))
    b = _Builder()
    for k, g in p.groupby(idx, sort=False):
        b.new()
        for c, v in zip(idx, k):
            if c != "source":
                b.put(c, v, pd.to_numeric(v, errors="coerce") if c in ("epochs", "params_M", "steps") else v)
        for m in metrics:
            vals = g.loc[g["metric"] == m, "value"].tolist()
            b.put(col(m, prefix="paper "), " / ".join(vals), float(vals[0]) if vals else np.nan, f"paper:{m}")
        b.put("source", k[idx.index("source")])
        b.put("note", "; ".join(dict.fromkeys(n for n in g["note"] if n)))
    return b.table()


def notes_table(runs: Sequence[RunInfo], d: pd.DataFrame) -> Table:
    b = _Builder()
    for run in runs:
        for bb in sorted(set(d.loc[d["k_run"] == run.run_id, "k_bb"]) - {""}):
            n = run.backbone_config(bb).get("notes")
            items = (
                sorted(n.items())
                if isinstance(n, dict)
                else [("", n)]
                if n
                else [("", "(no notes in config.json)")]
            )
            for k, v in items:
                b.new()
                b.put("backbone", bb)
                b.put("run", run.run_id)
                b.put("note", str(k))
                b.put("value", v if isinstance(v, str) else str(v))
    return b.table()


def provenance_table(runs: Sequence[RunInfo]) -> Table:
    b = _Builder()
    for r in runs:
        b.new()
        b.put("run", r.run_id)
        b.put("git sha", key(r.env.get("git_sha"))[:12])
        b.put("dirty", key(r.env.get("git_dirty")))
        b.put("device", key(r.env.get("device")))
        for k in ("python", "torch", "triton", "cuda"):
            b.put(k, key(r.env.get(k)))
        b.put("command", r.command())
    return b.table()


def budget_table(runs: Sequence[RunInfo]) -> Table:
    """Per run: seed, evaluation epochs, samples per evaluation, the generator (and stage-1) epochs of each
    backbone, and the budget options it was started with (args.json: epochs, num_samples, sample_steps), so a
    report says what budget it ran at."""
    import json

    b = _Builder()
    for r in runs:
        c = r.config
        bbs = c.get("backbones") if isinstance(c.get("backbones"), dict) else {}
        if not bbs:
            continue
        args = {}
        if (r.path / "args.json").is_file():
            try:
                args = json.loads((r.path / "args.json").read_text())
            except json.JSONDecodeError:
                args = {}
        b.new()
        b.put("run", r.run_id)
        b.put("seed", key(c.get("seed")), c.get("seed"))
        b.put("eval epochs", ", ".join(str(e) for e in c.get("eval_epochs", [])))
        b.put("samples / evaluation", key(c.get("n_eval_samples")), c.get("n_eval_samples"))
        epochs = {}
        for name, bc in sorted(bbs.items()):
            rec = bc.get("recipe", {}) if isinstance(bc, dict) else {}
            s1 = rec.get("stage1_epochs")
            epochs[name] = f"{key(rec.get('epochs'))}" + (f" (+{key(s1)} stage 1)" if s1 else "")
        b.put("epochs (generator + tokenizer stage 1)", "; ".join(f"{k} {v}" for k, v in epochs.items()))
        opts = {
            k: args.get(k) for k in ("epochs", "num_samples", "sample_steps", "image_size") if args.get(k)
        }
        b.put(
            "budget options",
            ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items()) or "suite default",
        )
    return b.table()


def _put_floor(b: _Builder, ext: str, fid: float, rfids: list[float]) -> None:
    """The tokenizer-floor columns (rFID over the runs given, and FID ÷ its mean), leaderboard and per-seed alike."""
    ftext, fsort = interval(rfids)
    b.put(col("rfid", ext, "", "tokenizer floor "), ftext, fsort, "rfid")
    ratio = fid / fsort if rfids and fsort and not isnull(fid) else np.nan
    b.put(f"FID ÷ floor ({ext})", num(ratio), ratio, "fid_over_rfid")


def per_seed_table(d: pd.DataFrame) -> Table:
    """One row per (backbone, run): the last evaluated epoch's FID with its bootstrap interval within that seed
    (fid_ci_low / fid_ci_high rows), for each extractor and sample count."""
    ev = d[d["phase"] == "eval"]
    fid = ev[(ev["quantity"] == "fid") & ev["value"].notna()]
    tok = d[(d["phase"] == "tokenizer") & (d["quantity"] == "rfid") & d["value"].notna()]
    b = _Builder()
    for (bb, run), g in fid.groupby(["k_bb", "k_run"]):
        for (ext, n), h in g.groupby(["k_ext", "k_n"]):
            if "protocol" in h.columns and (h["protocol"].map(key) == "paper").any():
                h = h[h["protocol"].map(key) == "paper"]
            r = last(h)
            at = ev[(ev["k_bb"] == bb) & (ev["k_run"] == run) & (ev["k_ext"] == ext) & (ev["k_n"] == n)
                    & (ev["epoch"] == r["epoch"]) & (ev["k_setting"] == r["k_setting"])]  # fmt: skip
            lo, hi = (at.loc[at["quantity"] == q, "value"] for q in ("fid_ci_low", "fid_ci_high"))
            text, sort = interval(
                [r["value"]], lo.iloc[-1] if len(lo) else None, hi.iloc[-1] if len(hi) else None
            )
            b.new()
            b.put("backbone", bb)
            b.put("run", run)
            b.put("seed", key(r["seed"]), r["seed"])
            b.put("epoch", key(r["epoch"]), r["epoch"], "epoch")
            b.put(col("fid", ext, n, "last "), text, sort, "fid")
            # each seed trains its own tokenizer: its floor beside its FID (the claims' per-run floor check)
            fl = tok[(tok["k_bb"] == bb) & (tok["k_run"] == run) & (tok["k_ext"] == ext)]
            if not fl.empty:
                _put_floor(b, ext, r["value"], [last(fl)["value"]])
    return b.table()
