"""Paper-style plots. Each function takes a tidy DataFrame and an output path stem, writes `<stem>.png` and
`<stem>.pdf`, and returns both paths.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot state), seaborn styles are applied
through context managers only, and the PDF/PNG metadata carry no timestamps, so the same data gives the same
files. Values from different feature extractors are drawn in separate panels, never on one axis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_RC = {
    "pdf.fonttype": 42,  # embed TrueType: text stays editable/searchable in the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "genbench",
    "axes.titleweight": "bold",
    "legend.frameon": False,
}


@contextlib.contextmanager
def _paper_style():
    with (
        matplotlib.rc_context(_RC),
        sns.axes_style("whitegrid"),
        sns.plotting_context("paper", font_scale=1.35),
    ):
        yield


def _save(fig: Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    # Tight bounding box computed once (legend outside the axes included), reused by both formats.
    bbox = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).padded(0.06)
    fig.savefig(png, dpi=200, bbox_inches=bbox, metadata={"Software": None})
    fig.savefig(pdf, bbox_inches=bbox, metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    return [png, pdf]


def _plain(x: float, _pos=None) -> str:
    """Tick text without mathtext (fast, and reads as plain numbers: 50, 200, 1e12)."""
    return f"{x:g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.0e}".replace("e+", "e")


def _log_axis(axis, lo: float, hi: float) -> None:
    """Log scale with plain-number ticks. Under a decade of data, log ticks (1..9 x 10^k) are too sparse, so the
    ticks are 'nice' linear values placed on the log axis instead."""
    decades = np.log10(hi / lo) if lo > 0 and hi > 0 else 10.0
    if decades < 1:
        ticks = [
            t
            for t in ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            if lo <= t <= hi and t > 0
        ]
        axis.set_major_locator(ticker.FixedLocator(ticks))
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 4 else (1.0,)))
    axis.set_major_formatter(ticker.FuncFormatter(_plain))
    axis.set_minor_formatter(ticker.NullFormatter())


def _logscale(ax, x: bool, y: bool) -> None:
    if x:
        ax.set_xscale("log")
        _log_axis(ax.xaxis, *ax.get_xlim())
    if y:
        ax.set_yscale("log")
        _log_axis(ax.yaxis, *ax.get_ylim())


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: data frame lacks column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what}: no rows to plot")


def _palette(labels: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(labels, sns.color_palette("colorblind", n_colors=max(len(labels), 1))))


def _legend(axes) -> None:
    """One legend for all panels, sorted by label, outside the last axis (kept by the tight bounding box)."""
    seen: dict = {}
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(n, h)
    axes[-1].legend(
        [seen[n] for n in sorted(seen)], sorted(seen), loc="upper left", bbox_to_anchor=(1.02, 1.0)
    )


def _panels(df: pd.DataFrame, panel: str | None) -> list:
    return sorted(df[panel].dropna().astype(str).unique()) if panel else [None]


def _lines(
    df: pd.DataFrame,
    stem: str | Path,
    *,
    x: str,
    y: str,
    hue: str,
    panel: str | None,
    xlabel: str,
    ylabel: str,
    logx: bool,
    logy: bool,
    markers_only: bool = False,
    integer_x: bool = False,
) -> list[Path]:
    """One axis per panel value (e.g. extractor); one line (or point set) per hue value, sorted by label."""
    df = df.dropna(subset=[x, y]).copy()
    df = df[np.isfinite(df[x].astype(float)) & np.isfinite(df[y].astype(float))]
    if logx:
        df = df[df[x] > 0]
    if logy:
        df = df[df[y] > 0]
    if df.empty:
        raise ValueError(f"{Path(stem).name}: no finite (positive, for log axes) values of {x} / {y}")
    df[hue] = df[hue].astype(str)
    labels = sorted(df[hue].unique())
    colors = _palette(labels)
    panels = _panels(df, panel)
    with _paper_style():
        fig = Figure(figsize=(5.2 * len(panels), 3.8))
        fig.subplots_adjust(wspace=0.3)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, p in zip(axes, panels):
            d = df if p is None else df[df[panel].astype(str) == p]
            for lab in labels:
                s = d[d[hue] == lab].sort_values(x)
                if s.empty:
                    continue
                style = dict(color=colors[lab], label=lab, marker="o", markersize=5)
                if markers_only:
                    ax.plot(s[x], s[y], linestyle="none", **style)
                    for xv, yv in zip(s[x], s[y]):
                        ax.annotate(lab, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
                else:
                    ax.plot(s[x], s[y], linewidth=1.8, **style)
            _logscale(ax, logx, logy)
            if integer_x:
                ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if p is not None:
                ax.set_title(f"{panel}: {p}")
        _legend(axes)
        return _save(fig, stem)


def fid_vs_epoch(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """FID against training epochs. Columns: epoch, value (FID), series (legend label), extractor (panel)."""
    _require(df, ["epoch", "value", "series", "extractor"], "fid_vs_epoch")
    return _lines(
        df, stem, x="epoch", y="value", hue="series", panel="extractor",
        xlabel="training epochs", ylabel="FID (lower is better)", logx=False, logy=True, integer_x=True,
    )  # fmt: skip


def fid_vs_compute(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """FID against training compute. Columns: train_flops, value (FID), series, extractor."""
    _require(df, ["train_flops", "value", "series", "extractor"], "fid_vs_compute")
    return _lines(
        df, stem, x="train_flops", y="value", hue="series", panel="extractor",
        xlabel="training compute (FLOPs)", ylabel="FID (lower is better)", logx=True, logy=True,
    )  # fmt: skip


def fid_vs_throughput(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Final FID against sampling throughput, one point per series. Columns: sample_img_per_s, value, series,
    extractor."""
    _require(df, ["sample_img_per_s", "value", "series", "extractor"], "fid_vs_throughput")
    return _lines(
        df, stem, x="sample_img_per_s", y="value", hue="series", panel="extractor",
        xlabel="sampling throughput (images / s)", ylabel="FID (lower is better)",
        logx=True, logy=True, markers_only=True,
    )  # fmt: skip


def kernel_latency(
    df: pd.DataFrame, stem: str | Path, size_label: str = "problem size (elements)"
) -> list[Path]:
    """Kernel latency against problem size, one panel per op, one line per implementation, and the roofline
    bound (dashed black) where rows with impl == "roofline" exist. Columns: op, impl, size, latency_ms."""
    _require(df, ["op", "impl", "size", "latency_ms"], "kernel_latency")
    df = df.dropna(subset=["size", "latency_ms"])
    df = df[(df["size"] > 0) & (df["latency_ms"] > 0)].copy()
    if df.empty:
        raise ValueError("kernel_latency: no positive (size, latency) pairs")
    df["impl"] = df["impl"].astype(str)
    ops = sorted(df["op"].astype(str).unique())
    impls = sorted(i for i in df["impl"].unique() if i != "roofline")
    colors = _palette(impls)
    with _paper_style():
        fig = Figure(figsize=(4.6 * len(ops), 3.8))
        fig.subplots_adjust(wspace=0.35)
        axes = fig.subplots(1, len(ops), squeeze=False)[0]
        for ax, op in zip(axes, ops):
            d = df[df["op"].astype(str) == op]
            for impl in impls:
                s = d[d["impl"] == impl].sort_values("size")
                if not s.empty:
                    ax.plot(
                        s["size"],
                        s["latency_ms"],
                        marker="o",
                        markersize=4,
                        linewidth=1.8,
                        color=colors[impl],
                        label=impl,
                    )
            r = d[d["impl"] == "roofline"].sort_values("size")
            if not r.empty:
                ax.plot(
                    r["size"],
                    r["latency_ms"],
                    linestyle="--",
                    color="black",
                    linewidth=1.4,
                    label="roofline bound",
                )
            _logscale(ax, True, True)
            ax.set_xlabel(size_label)
            ax.set_ylabel("latency (ms)")
            ax.set_title(op)
        _legend(axes)
        return _save(fig, stem)
