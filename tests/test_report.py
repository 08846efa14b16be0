"""Reports from a results store written by bench.store.RunStore (the real writer, its one schema): leaderboard
with intervals, one meaning per column, measured vs published separation, figures, grids, byte-identical
rebuilds, torn lines, resumed duplicates, CLI exit codes, the published-numbers file."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report import DEDUP_KEY, build_reports, load_paper_reported, load_results, main, plots, tables
from bench.store import RunStore

T0 = 1_800_000_000.0
ENV = {
    "git_sha": "0123456789abcdef0123",
    "git_dirty": True,
    "torch": "2.x",
    "python": "3.11",
    "device": "cpu (test)",
}


def _config(seed: int, backbones=("repa", "starflow", "tarflow")) -> dict:
    tok = {"repa": 783048, "starflow": 783048, "tarflow": 0, "fae": 1000}
    return {"suite": "toy", "seed": seed, "device": "cpu",
            "backbones": {b: {"family": b, "params": {"generator": 1000, "tokenizer": tok[b]},
                              "notes": {"guidance": f"{b} guidance note"}} for b in backbones}}  # fmt: skip


def _store(
    root: Path, suite: str, seed: int, run_id: str, backbones=("repa", "starflow", "tarflow")
) -> RunStore:
    s = RunStore(root, suite, run_id, seed=seed, config=_config(seed, backbones), device="cpu")
    (s.dir / "env.json").write_text(json.dumps(ENV))  # fixed provenance: env_info would record this checkout
    return s


# Measured values: distinctive numbers that no paper prints.
FID = {
    "repa": (811.125, 433.625, 222.375),
    "starflow": (905.5, 702.25, 611.75),
    "tarflow": (3011.5, 301.25, 55.125),
}
SAMPLER = {
    "repa": dict(sampler="sde", steps=32, nfe=54, guidance=1.8),  # diffusion CFG scale
    "starflow": dict(sampler="jacobi", steps=None, nfe=260, guidance=2.5),  # legacy row: flow weight w
    "tarflow": dict(sampler="sequential", steps=None, nfe=506, guidance=2.3),
}


def _fill(s: RunStore, seed: int, *, bootstrap: bool = False, torn: bool = False) -> None:
    t = T0 + 1000 * seed
    for bb in FID:
        s.log_metric(bb, "stage1", "loss", 1.0, epoch=1, time=t)
        for i, ep in enumerate((1, 2, 3)):
            s.log_metric(bb, "train", "loss", 2.0 / ep, epoch=ep, train_flops=ep * 3e14, time=t + 600 * ep)
            fid = FID[bb][i] + 3.125 * seed
            s.log_metric(bb, "eval", "fid", fid, epoch=ep, extractor="smoke", n_samples=64, time=t + 600 * ep + 60,
                         train_flops=ep * 3e14, **SAMPLER[bb])  # fmt: skip
            if bootstrap and ep == 3:
                s.log_metric(
                    bb,
                    "eval",
                    "fid_ci_low",
                    fid - 11.5,
                    epoch=ep,
                    extractor="smoke",
                    n_samples=64,
                    **SAMPLER[bb],
                )
                s.log_metric(
                    bb,
                    "eval",
                    "fid_ci_high",
                    fid + 12.5,
                    epoch=ep,
                    extractor="smoke",
                    n_samples=64,
                    **SAMPLER[bb],
                )
        s.log_metric(bb, "eval", "bits_per_dim", 4.0625 if bb == "tarflow" else 0.8125, epoch=3, n_samples=32)
        if bb != "tarflow":
            s.log_metric(bb, "tokenizer", "rfid", 41.5 + seed, extractor="smoke", n_samples=64, time=t + 1)
        for bs in (8, 16):
            s.log_metric(bb, "throughput", "sample_img_per_s", {"repa": 7.5, "starflow": 19.5, "tarflow": 33.5}[bb] * bs / 8,
                         n_samples=bs, sampler=SAMPLER[bb]["sampler"], nfe=SAMPLER[bb]["nfe"])  # fmt: skip
        s.log_metric(bb, "throughput", "params", 2_500_000.0)
        s.log_metric(bb, "run", "wall_s", 1234.5 + seed, epoch=3)
        grid = s.backbone_dir(bb) / "grids"
        grid.mkdir(exist_ok=True)
        for ep in (1, 3):
            _png(grid / f"epoch_{ep:04d}.png", seed=ep + 10 * len(bb))
    s.log_metric("repa", "eval", "fid", 811.125 + 77, epoch=3, extractor="smoke", n_samples=64, **SAMPLER["repa"],
                 time=T0 + 1000 * seed + 1)  # superseded below: a resumed run re-logs epoch 3  # fmt: skip
    s.log_metric("repa", "eval", "fid", FID["repa"][2] + 3.125 * seed, epoch=3, extractor="smoke", n_samples=64,
                 train_flops=9e14, time=t + 1860, **SAMPLER["repa"])  # fmt: skip
    if torn:
        with open(s.metrics_path, "a") as f:
            f.write('{"run_id": "x", "metric": "fi')


def _png(path: Path, seed: int) -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1, 1))
    fig.figimage(rng.uniform(size=(32, 32, 3)))
    fig.savefig(path, dpi=32, metadata={"Software": None})


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "results"
    for seed in (0, 1, 2):  # three seeds of one suite
        _fill(_store(root, "toy", seed, f"seed{seed}"), seed, torn=seed == 2)
    _fill(_store(root, "boot", 0, "seed0"), 0, bootstrap=True)  # one seed with bootstrap rows
    return root


@pytest.fixture(scope="session")
def built(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    with pytest.warns(RuntimeWarning, match="corrupt trailing line"):
        build_reports(store, out)
    return out


class _Tables(HTMLParser):
    """Cells of every <table id=...> in a page: id -> (header, rows of cell text)."""

    def __init__(self):
        super().__init__()
        self.tables, self._id, self._cell, self._row = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._id = a.get("id")
            self.tables[self._id] = ([], [])
        elif tag == "tr" and self._id:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            head, rows = self.tables[self._id]
            if head:
                rows.append(self._row)
            else:
                head.extend(self._row)
            self._row = None
        elif tag == "table":
            self._id = None


def _html_tables(path: Path) -> dict[str, pd.DataFrame]:
    p = _Tables()
    p.feed(path.read_text())
    return {k: pd.DataFrame(rows, columns=head) for k, (head, rows) in p.tables.items()}


def test_load_results_dedups_and_skips_torn_line(store):
    with pytest.warns(RuntimeWarning, match="corrupt trailing line"):
        df = load_results(store)
    assert not df.duplicated(subset=list(DEDUP_KEY)).any()
    repa3 = df[
        (df.suite == "toy")
        & (df.backbone == "repa")
        & (df.metric == "fid")
        & (df.epoch == 3)
        & (df.seed == 0)
    ]
    assert repa3["value"].tolist() == [222.375]  # the resumed run's last row wins
    assert set(df.suite) == {"toy", "boot"}
    # density split by space: tarflow has no tokenizer (pixel bits/dim), starflow a latent one
    bpd = df[df.metric == "bits_per_dim"].groupby("backbone")["quantity"].first()
    assert bpd["tarflow"] == "pixel_bits_per_dim" and bpd["starflow"] == "latent_bits_per_dim"
    # guidance conventions: diffusion CFG scale vs the flows' weight w (legacy rows)
    fid = df[df.metric == "fid"].groupby("backbone")[["cfg_scale", "flow_weight"]].first()
    assert fid.loc["repa", "cfg_scale"] == 1.8 and np.isnan(fid.loc["repa", "flow_weight"])
    assert fid.loc["tarflow", "flow_weight"] == 2.3 and np.isnan(fid.loc["tarflow", "cfg_scale"])


def test_leaderboard_intervals_floors_and_columns(built):
    lb = _html_tables(built / "toy" / "index.html")["leaderboard"].set_index("backbone")
    vals = np.array([FID["repa"][2] + 3.125 * s for s in (0, 1, 2)])
    hw = stats.t.ppf(0.975, 2) * vals.std(ddof=1) / np.sqrt(3)
    assert lb.loc["repa", "last FID (smoke, N=64)"] == f"{vals.mean():.4g} ± {hw:.4g} (n=3)"
    assert lb.loc["repa", "seeds"] == "3"
    assert lb.loc["tarflow", "best FID (smoke, N=64)"] == f"{FID['tarflow'][2] + 3.125:.4g} (ep 3)"
    assert lb.loc["repa", "tokenizer floor rFID (smoke)"].startswith("42.5 ± ")
    assert lb.loc["tarflow", "tokenizer floor rFID (smoke)"] == ""  # no tokenizer, no floor
    assert (
        lb.loc["tarflow", "pixel bits/dim"] == "4.062 ± 0 (n=3)"
        and lb.loc["tarflow", "latent bits/dim"] == ""
    )
    assert (
        lb.loc["starflow", "latent bits/dim"] == "0.8125 ± 0 (n=3)"
        and lb.loc["starflow", "pixel bits/dim"] == ""
    )
    assert (
        lb.loc["repa", "guidance scale (1 = off)"] == "1.8"
        and lb.loc["repa", "flow guidance w (0 = off)"] == ""
    )
    assert (
        lb.loc["tarflow", "flow guidance w (0 = off)"] == "2.3"
        and lb.loc["tarflow", "guidance scale (1 = off)"] == ""
    )
    assert lb.loc["repa", "NFE / image"] == "54" and lb.loc["repa", "sampler steps"] == "32"
    assert lb.loc["starflow", "NFE / image"] == "260" and lb.loc["starflow", "sampler steps"] == ""
    assert lb.loc["tarflow", "sample img/s (best batch)"] == "67"
    boot = _html_tables(built / "boot" / "index.html")["leaderboard"].set_index("backbone")
    v = FID["starflow"][2]
    assert boot.loc["starflow", "last FID (smoke, N=64)"] == f"{v:.4g} [{v - 11.5:.4g}, {v + 12.5:.4g}]"


def test_no_column_mixes_meanings(store, tmp_path):
    """Every leaderboard column is fed by one quantity; the guidance conventions, NFE vs steps and pixel vs latent
    densities never share one. A row in the typed-settings convention (with a protocol field) is a CFG scale."""
    with pytest.warns(RuntimeWarning):
        df = load_results(store)
    d = tables.with_keys(df[df.suite == "toy"])
    lb = tables.leaderboard(d, d[d.phase == "throughput"])
    assert lb.sources and all(len(s) == 1 for s in lb.sources.values()), lb.sources
    assert lb.sources["guidance scale (1 = off)"] == {"cfg_scale"} and lb.sources[
        "flow guidance w (0 = off)"
    ] == {"flow_weight"}
    assert lb.sources["NFE / image"] == {"nfe"} and lb.sources["sampler steps"] == {"steps"}
    assert lb.sources["pixel bits/dim"] == {"pixel_bits_per_dim"}
    assert lb.sources["latent bits/dim"] == {"latent_bits_per_dim"}
    with pytest.raises(AssertionError, match="mixing"):
        tables.check_meanings(tables.Table(lb.text, lb.sort, {"guidance": {"cfg_scale", "flow_weight"}}))
    from bench.report.load import _guidance_split

    # a run with typed sampler settings (config.json records their kind) logs a scale for every family
    typed = RunStore(tmp_path / "r", "typed", "r0", seed=0, device="cpu", config={"backbones": {"starflow": {
        "recipe": {"sampler": {"kind": "autoregressive-flow", "guidance": 2.5}}, "params": {"tokenizer": 5}}}})  # fmt: skip
    typed.log_metric("starflow", "eval", "fid", 99.5, epoch=1, extractor="smoke", n_samples=8, sampler="jacobi",
                     nfe=260, guidance=3.5)  # fmt: skip
    row = load_results(tmp_path / "r").iloc[0]
    assert row["cfg_scale"] == 3.5 and np.isnan(row["flow_weight"])
    cfg, w = _guidance_split(2.5, "jacobi", "paper")  # a protocol field: the typed convention too
    assert cfg == 2.5 and np.isnan(w)
    cfg, w = _guidance_split(2.5, "jacobi", None)  # legacy flow row: the weight w
    assert np.isnan(cfg) and w == 2.5


def test_measured_and_published_never_mix(built):
    paper = load_paper_reported()
    pages = _html_tables(built / "toy" / "index.html")
    lb, pub = pages["leaderboard"], pages["published"]
    measured_cells = {c for c in lb.to_numpy().ravel() if re.search(r"\d", c)}
    published_values = set(paper["value"])
    # no published number in a measured cell (cells hold one formatted value, or "mean ± hw (n=k)")
    tokens = {t for c in measured_cells for t in re.findall(r"-?\d+(?:\.\d+)?", c)}
    assert not tokens & published_values, tokens & published_values
    # every published cell is a value of paper_reported.csv for the suite's backbones, and none is measured
    paper_cols = [c for c in pub.columns if c.startswith("paper ")]
    assert paper_cols and "paper FID" in paper_cols
    pub_vals = {v for c in paper_cols for cell in pub[c] for v in cell.split(" / ") if v}
    mine = set(paper.loc[paper.backbone.isin(["repa", "starflow", "tarflow"]), "value"])
    assert pub_vals and pub_vals <= mine
    assert not pub_vals & tokens
    assert set(pub["backbone"]) <= {"repa", "starflow", "tarflow"}
    # the same in the Markdown: the published section holds no measured value
    md = (built / "toy" / "summary.md").read_text()
    pub_md = md[md.index("## Published") : md.index("\n## ", md.index("## Published") + 3)]
    assert "222.4" not in pub_md and "1.42" in pub_md


def test_figures_grids_and_tables_written(built):
    out = built / "toy"
    for stem in ("fid_vs_epoch", "fid_vs_compute", "fid_vs_hours", "fid_vs_throughput"):
        for ext in (".png", ".pdf"):
            assert (out / f"{stem}{ext}").stat().st_size > 2000, stem
    from matplotlib.image import imread

    h, w = imread(out / "fid_vs_epoch.png").shape[:2]
    assert 3.0 * 300 <= w <= 3.6 * 300  # one paper column at 300 dpi
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["repa.png", "starflow.png", "tarflow.png"]
    page = (out / "index.html").read_text()
    assert "grids/repa.png" in page and "epoch_0003" in page and "fid_vs_hours.png" in page
    assert "0123456789ab" in page and "invoke bench --suite toy" in page  # provenance: sha, command
    tex = (out / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "guidance scale (1 = off)" in tex
    assert (built / "index.html").read_text().count("/index.html'") == 2
    assert not (out / "kernel_latency.png").exists()


def test_kernel_plot_and_absent_grids(tmp_path):
    root = tmp_path / "results"
    s = _store(root, "k", 0, "r0", backbones=("repa",))
    s.log_metric("repa", "eval", "fid", 50.5, epoch=1, extractor="smoke", n_samples=8, **SAMPLER["repa"])
    rows = [{"op": "swiglu", "dtype": "bf16", "direction": "fwd", "bytes": b, "flops": b, "triton_ms": b / 2e9,
             "eager_ms": b / 1e9, "compile_ms": b / 1.5e9} for b in (1e6, 1e7, 1e8)]  # fmt: skip
    (s.dir / "latency.json").write_text(json.dumps({"kind": "genbench.kernels.latency", "copy_bandwidth": 3e12,
                                                    "peak_flops_bf16": 1e15, "rows": rows}))  # fmt: skip
    build_reports(root, tmp_path / "out")
    assert (tmp_path / "out" / "k" / "kernel_latency.png").stat().st_size > 2000
    page = (tmp_path / "out" / "k" / "index.html").read_text()
    assert "No sample grids" in page and "kernel_latency.png" in page


def test_rebuild_is_byte_identical(store, built, tmp_path):
    """A second `invoke report` on the same store writes the same bytes: tables, HTML, PNG and PDF."""
    with pytest.warns(RuntimeWarning):
        again = build_reports(store, tmp_path / "again")
    names = sorted(p.relative_to(tmp_path / "again").as_posix() for p in again)
    assert names == sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    assert {
        "toy/index.html",
        "toy/summary.md",
        "toy/summary.tex",
        "toy/fid_vs_epoch.png",
        "index.html",
    } <= set(names)
    for n in names:
        assert (tmp_path / "again" / n).read_bytes() == (built / n).read_bytes(), n


def test_pareto_front():
    assert plots.pareto_front([10, 20, 30, 5], [5.0, 6.0, 4.0, 1.0]) == [3, 2]
    assert plots.pareto_front([1, 2], [2.0, 1.0]) == [1]


@pytest.mark.filterwarnings("ignore:.*corrupt trailing line:RuntimeWarning")
def test_main_exit_codes(store, tmp_path, capsys):
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no runs" in capsys.readouterr().err
    assert main(["--results", str(store), "--out", str(tmp_path / "r"), "--suite", "nope"]) == 2
    assert "available: ['boot', 'toy']" in capsys.readouterr().err
    assert main(["--results", str(store), "--out", str(tmp_path / "r"), "--suite", "boot", "--no-plots"]) == 0
    assert (tmp_path / "r" / "boot" / "index.html").is_file()


def test_paper_reported_file():
    p = load_paper_reported()
    # each row names its source (a paper, an official repository or an author's slides) and where in it
    assert p["source"].str.contains(r"arXiv:\d{4}\.\d{5}|README|slides", regex=True).all()
    assert p["source"].str.contains(r"abstract|table|README|output", regex=True).all()
    fae800 = p[
        (p.backbone == "fae") & (p.epochs == "800") & (p.metric == "fid") & p.system.str.startswith("FAE")
    ]
    assert set(zip(fae800.guidance, fae800.value)) == {("none", "1.48"), ("cfg", "1.29")}
    adm = p[p.backbone == "adm"].set_index("metric")["value"]
    assert (
        adm["fid"] == "3.9425574129223264" and adm["is"] == "215.8370361328125"
    )  # as the README prints them
    # one number per (system, setting, guidance, metric, source); where two sources differ, the note says so
    key = ["backbone", "system", "dataset", "epochs", "sampler", "steps", "guidance", "metric"]
    for _, g in p.groupby(key):
        assert not g.duplicated(["source"]).any(), g
        if g["value"].astype(float).nunique() > 1:
            assert g["note"].str.contains("disagree").all(), g
