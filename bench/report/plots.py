"""Paper-style figures, sized for one column of a paper (3.25 in wide, 7 pt text). Each function takes a tidy
DataFrame and an output stem, writes `<stem>.png` and `<stem>.pdf` and returns both paths.

`matplotlib.figure.Figure` on the Agg canvas (no pyplot state), matplotlib's bundled DejaVu Sans, and files
without timestamps or software tags: the same data gives byte-identical files. One colour per backbone in every
figure (`colors`); values of different feature extractors never share an axis (one figure per extractor).
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

WIDTH = 3.25  # inches: one column of a two-column paper
_RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs on every machine
    "font.size": 7,
    "axes.labelsize": 7,
    "axes.titlesize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "pdf.fonttype": 42,  # embedded TrueType: text stays searchable
    "svg.hashsalt": "genbench",
    "path.simplify": False,
}
# Fixed colours for the known backbones (colorblind palette); others get the remaining ones in name order.
KNOWN = ("repa", "sit", "vavae_lightningdit", "fae", "starflow", "tarflow")
_PALETTE = sns.color_palette("colorblind", n_colors=10)


def backbone_colors(backbones: Sequence[str]) -> dict[str, tuple]:
    out = {b: _PALETTE[i] for i, b in enumerate(KNOWN)}
    rest = [_PALETTE[i] for i in range(len(KNOWN), len(_PALETTE))]
    for i, b in enumerate(sorted(set(backbones) - set(KNOWN))):
        out[b] = rest[i % len(rest)] if i < len(rest) else sns.color_palette("husl", 64)[(7 * i) % 64]
    return out


@contextlib.contextmanager
def _style():
    with sns.axes_style("whitegrid", {"grid.linewidth": 0.4}), matplotlib.rc_context(_RC):
        yield


def _save(fig: Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    bbox = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).padded(0.03)
    fig.savefig(png, dpi=300, bbox_inches=bbox, metadata={"Software": None})
    fig.savefig(pdf, bbox_inches=bbox, metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                                                 "Creator": None})  # fmt: skip
    return [png, pdf]


def _plain(x: float, _pos=None) -> str:
    return f"{x:g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.0e}".replace("e+", "e")


def _log_axis(axis, lo: float, hi: float) -> None:
    """Log scale with plain-number ticks; under a decade of data, 'nice' linear values on the log axis."""
    decades = np.log10(hi / lo) if lo > 0 and hi > 0 else 10.0
    if decades < 1:
        loc = ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10])
        axis.set_major_locator(
            ticker.FixedLocator([t for t in loc.tick_values(lo, hi) if lo <= t <= hi and t > 0])
        )
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,)))
    axis.set_major_formatter(ticker.FuncFormatter(_plain))
    axis.set_minor_formatter(ticker.NullFormatter())


def _figure(height: float = 2.2):
    fig = Figure(figsize=(WIDTH, height))
    return fig, fig.subplots()


def _legend(ax, ncol: int = 3) -> None:
    h, labels = ax.get_legend_handles_labels()
    if not h:
        return
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    ax.legend([h[i] for i in order], [labels[i] for i in order], loc="upper center", bbox_to_anchor=(0.5, -0.22),
              ncol=ncol, handlelength=1.6, columnspacing=1.0)  # fmt: skip


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: data frame lacks column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what}: no rows to plot")


def convergence(
    curves: pd.DataFrame,
    floors: pd.DataFrame,
    stem: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    colors: dict[str, tuple],
    logx: bool = False,
    integer_x: bool = False,
    title: str = "",
) -> list[Path]:
    """Metric against x, one line per series (mean over seeds, band = min..max where several), and each
    backbone's tokenizer floor as a dashed line of its colour. curves: series, backbone, x, y, lo, hi;
    floors: backbone, value (may be empty)."""
    _require(curves, ["series", "backbone", "x", "y", "lo", "hi"], Path(stem).name)
    c = curves[np.isfinite(curves["x"]) & np.isfinite(curves["y"]) & (curves["y"] > 0)]
    if logx:
        c = c[c["x"] > 0]
    if c.empty:
        raise ValueError(f"{Path(stem).name}: no finite positive values")
    with _style():
        fig, ax = _figure()
        for s in sorted(c["series"].unique()):
            g = c[c["series"] == s].sort_values("x")
            color = colors.get(g["backbone"].iloc[0], "black")
            ax.plot(g["x"], g["y"], marker="o", color=color, label=s)
            if (g["hi"] > g["lo"]).any():
                ax.fill_between(g["x"], g["lo"], g["hi"], color=color, alpha=0.18, linewidth=0)
        ys = list(c["y"])
        if floors is not None and not floors.empty:
            for bb, v in sorted(zip(floors["backbone"], floors["value"])):
                if np.isfinite(v) and v > 0:
                    ax.axhline(v, linestyle="--", linewidth=0.9, color=colors.get(bb, "black"))
                    ys.append(v)
            ax.plot([], [], linestyle="--", color="0.35", linewidth=0.9, label="tokenizer floor (rFID)")
        ax.set_yscale("log")
        ax.set_ylim(min(ys) / 1.25, max(ys) * 1.25)
        _log_axis(ax.yaxis, *ax.get_ylim())
        if logx:
            ax.set_xscale("log")
            _log_axis(ax.xaxis, *ax.get_xlim())
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
            if integer_x:
                ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        _legend(ax)
        return _save(fig, stem)


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher x, lower y), sorted by x."""
    pts = sorted(range(len(x)), key=lambda i: (-x[i], y[i]))
    front, best = [], np.inf
    for i in pts:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return sorted(front, key=lambda i: x[i])


def efficiency(points: pd.DataFrame, stem: str | Path, *, colors: dict[str, tuple], ylabel: str,
               title: str = "") -> list[Path]:  # fmt: skip
    """Final metric against sampling throughput, one point per series, Pareto front in grey.
    points: series, backbone, x (img/s), y."""
    _require(points, ["series", "backbone", "x", "y"], Path(stem).name)
    p = points[np.isfinite(points["x"]) & np.isfinite(points["y"]) & (points["x"] > 0) & (points["y"] > 0)]
    p = p.sort_values("series").reset_index(drop=True)
    if p.empty:
        raise ValueError(f"{Path(stem).name}: no finite positive points")
    front = pareto_front(list(p["x"]), list(p["y"]))
    with _style():
        fig, ax = _figure()
        f = p.loc[front]
        ax.plot(f["x"], f["y"], color="0.55", linewidth=0.9, linestyle="-", drawstyle="steps-post",
                label="Pareto front", zorder=1)  # fmt: skip
        for r in p.itertuples():
            ax.plot([r.x], [r.y], marker="o", markersize=5, linestyle="none", color=colors.get(r.backbone, "black"),
                    label=r.series, zorder=2)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(p["x"].min() / 1.4, p["x"].max() * 1.4)
        ax.set_ylim(p["y"].min() / 1.3, p["y"].max() * 1.3)
        _log_axis(ax.xaxis, *ax.get_xlim())
        _log_axis(ax.yaxis, *ax.get_ylim())
        ax.set_xlabel("sampling throughput (images / s)")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        _legend(ax)
        return _save(fig, stem)


def kernel_latency(rows: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Latency against bytes moved, one panel per op, one line per implementation, the roofline bound dashed.
    rows: op, impl, bytes, latency_ms (impl "roofline" = the bound)."""
    _require(rows, ["op", "impl", "bytes", "latency_ms"], "kernel_latency")
    rows = rows[(rows["bytes"] > 0) & (rows["latency_ms"] > 0)]
    ops = sorted(rows["op"].unique())
    impls = sorted(set(rows["impl"]) - {"roofline"})
    pal = dict(zip(impls, sns.color_palette("dark", n_colors=max(len(impls), 1))))
    ncol = min(2, len(ops))
    nrow = -(-len(ops) // ncol)
    with _style():
        fig = Figure(figsize=(WIDTH * ncol / 2 if ncol > 1 else WIDTH, 1.7 * nrow + 0.3))
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, op in zip(axes, ops):
            d = rows[rows["op"] == op]
            for impl in impls:
                s = d[d["impl"] == impl].groupby("bytes")["latency_ms"].min()
                if not s.empty:
                    ax.plot(s.index / 1e6, s.values, marker="o", color=pal[impl], label=impl)
            r = d[d["impl"] == "roofline"].groupby("bytes")["latency_ms"].min()
            if not r.empty:
                ax.plot(
                    r.index / 1e6, r.values, linestyle="--", color="black", linewidth=0.9, label="roofline"
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(op)
            ax.set_xlabel("bytes moved (MB)")
            ax.set_ylabel("latency (ms)")
        for ax in axes[len(ops) :]:
            ax.set_visible(False)
        fig.subplots_adjust(hspace=0.7, wspace=0.45)
        _legend(axes[len(ops) - 1], ncol=4)
        return _save(fig, stem)


def sample_grids(grids: Sequence[tuple[str, str | Path]], stem: str | Path, caption: str = "") -> list[Path]:
    """The backbones' sample grids side by side (one panel each, titled by backbone), full text width
    (6.75 in): the figure* of a two-column paper."""
    from matplotlib.image import imread

    if not grids:
        raise ValueError("sample_grids: no grids")
    n = len(grids)
    ncol = min(n, 6)
    nrow = -(-n // ncol)
    with _style():
        fig = Figure(figsize=(6.75, 6.75 / ncol * nrow + 0.25))
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, (label, path) in zip(axes, grids):
            ax.imshow(imread(path), interpolation="nearest")
            ax.set_title(label)
        for ax in axes:
            ax.set_axis_off()
        if caption:
            fig.suptitle(caption, y=0.02, fontsize=6)
        fig.subplots_adjust(wspace=0.05, hspace=0.15)
        return _save(fig, stem)
