"""Reports from a synthetic results store: tables, separation of extractors and of published numbers, plots,
torn lines, resumed duplicates, CLI exit codes, determinism."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import plots
from bench.report import DEDUP_KEY, build_reports, load_paper_reported, load_results, main

FIELDS = (
    "run_id", "suite", "backbone", "phase", "metric", "value", "epoch", "step", "images_seen", "train_flops",
    "n_samples", "extractor", "sampler", "steps", "nfe", "guidance", "device", "seed", "config_hash", "time",
)  # fmt: skip


def _row(run_id, suite, backbone, phase, metric, value, **kw):
    r = dict.fromkeys(FIELDS)
    r.update(
        run_id=run_id,
        suite=suite,
        backbone=backbone,
        phase=phase,
        metric=metric,
        value=value,
        device="cpu",
        seed=0,
    )
    r.update(kw)
    return r


def _write_run(
    root: Path, suite: str, run_id: str, rows: list[dict], config: dict, torn: str | None = None
) -> None:
    d = root / suite / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "env.json").write_text(
        json.dumps({"git_sha": "0123456789abcdef", "git_dirty": False, "torch": "2.x", "device": "cpu"})
    )
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "metrics.jsonl").write_text(text + (torn or ""))


def _fid(run, suite, bb, epoch, value, ext="smoke", n=64, **kw):
    kw = {"sampler": "euler", "steps": 8, "nfe": 16, "guidance": 1.5, **kw}
    return _row(run, suite, bb, "eval", "fid", value, epoch=epoch, extractor=ext, n_samples=n, **kw)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    a = []
    for ep, flops in ((1, 1e12), (2, 2e12), (3, 3e12)):
        a.append(_row("runA", "smoke", "fae", "train", "loss", 1.0 / ep, epoch=ep, train_flops=flops))
        a.append(_row("runA", "smoke", "repa", "train", "loss", 2.0 / ep, epoch=ep, train_flops=2 * flops))
    a += [
        _fid("runA", "smoke", "fae", 1, 80.0),
        _fid("runA", "smoke", "fae", 2, 50.25),
        _fid("runA", "smoke", "fae", 3, 60.5),
    ]
    a += [_fid("runA", "smoke", "fae", 3, 33.75, ext="inception-v3-compat")]
    a += [_fid("runA", "smoke", "repa", 1, 90.0), _fid("runA", "smoke", "repa", 3, 99.0)]
    a += [_fid("runA", "smoke", "repa", 3, 70.25)]  # resumed run re-logged epoch 3: this row wins
    a += [_row("runA", "smoke", "fae", "eval", "linear_probe_acc", 0.625, epoch=3, extractor="fae_latent")]
    for bb, base in (("fae", 100.0), ("repa", 40.0)):
        for bs in (8, 16):
            a.append(
                _row(
                    "runA",
                    "smoke",
                    bb,
                    "throughput",
                    "sample_img_per_s",
                    base * bs / 8,
                    n_samples=bs,
                    sampler="euler",
                    steps=8,
                    nfe=16,
                )
            )
            a.append(
                _row("runA", "smoke", bb, "throughput", "train_img_per_s", 3 * base * bs / 8, n_samples=bs)
            )
            a.append(_row("runA", "smoke", bb, "throughput", "peak_mem_mb", 10.0 * bs, n_samples=bs))
        a.append(_row("runA", "smoke", bb, "throughput", "params", 2_500_000.0, n_samples=8))
    cfg_a = {
        "backbones": {
            "fae": {"notes": {"guidance": "interval CFG"}},
            "repa": {"notes": {"guidance": "CFG on all channels"}},
        }
    }
    _write_run(root, "smoke", "runA", a, cfg_a, torn='{"run_id": "runA", "metric": "fi')

    b = [_row("runB", "smoke", "tarflow", "train", "loss", 5.0, epoch=2, train_flops=5e11)]
    b += [_fid("runB", "smoke", "tarflow", 2, 120.5, sampler="sequential", steps=None, nfe=4, guidance=None)]
    b += [_row("runB", "smoke", "tarflow", "eval", "bits_per_dim", 3.375, epoch=2)]
    # kernel rows in the store's own fields: op -> extractor, implementation -> sampler, size -> n_samples
    for impl, lat in (("triton", 0.02), ("eager", 0.05), ("roofline", 0.01)):
        metric = "roofline_ms" if impl == "roofline" else "latency_ms"
        for size in (1024, 4096):
            k = dict(extractor="swiglu", sampler=None if impl == "roofline" else impl, n_samples=size)
            b.append(_row("runB", "smoke", "tarflow", "kernels", metric, lat * size / 1024, **k))
    _write_run(
        root, "smoke", "runB", b, {"backbones": [{"name": "tarflow", "notes": {"sampler": "KV cache"}}]}
    )

    c = [_fid("runC", "other", "repa", 1, 44.0)]
    _write_run(root, "other", "runC", c, {})
    return root


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    nxt = md.find("\n## ", start + 3)
    return md[start : nxt if nxt >= 0 else len(md)]


def _md_table(section: str) -> pd.DataFrame:
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_load_results_dedups_and_skips_torn_line(store):
    with pytest.warns(RuntimeWarning, match="corrupt trailing line"):
        df = load_results(store)
    assert not df.duplicated(subset=list(DEDUP_KEY)).any()
    repa3 = df[(df.backbone == "repa") & (df.metric == "fid") & (df.epoch == 3)]
    assert repa3["value"].tolist() == [70.25]
    assert set(df.suite) == {"smoke", "other"}
    assert (df.loc[df.run_id == "runA", "git_sha"] == "0123456789abcdef").all()
    assert (df.phase == "kernels").sum() == 6  # distinct (op, impl, size) rows survive the dedup


def test_build_reports_tables(store, tmp_path):
    out = tmp_path / "reports"
    with pytest.warns(RuntimeWarning, match="corrupt"):
        written = build_reports(store, out)
    assert {p.parent.name for p in written} == {"smoke", "other"}
    md = (out / "smoke" / "summary.md").read_text()
    meas = _md_table(_section(md, "Measured results")).set_index("backbone")
    # extractors in separate columns, never mixed
    assert meas.loc["fae", "FID last (smoke, N=64)"] == "60.5"
    assert meas.loc["fae", "FID best (smoke, N=64)"] == "50.25 (ep 2)"
    assert meas.loc["fae", "FID last (inception-v3-compat, N=64)"] == "33.75"
    assert meas.loc["repa", "FID last (smoke, N=64)"] == "70.25"
    assert meas.loc["repa", "FID last (inception-v3-compat, N=64)"] == ""
    assert meas.loc["tarflow", "bits/dim"] == "3.375"
    assert meas.loc["fae", "probe acc (latent)"] == "0.625"
    assert meas.loc["fae", "sample img/s (best batch)"] == "200"
    assert meas.loc["fae", "params (M)"] == "2.5"
    assert (
        meas.loc["fae", "NFE"] == "16"
        and meas.loc["fae", "sampler"] == "euler"
        and meas.loc["fae", "guidance"] == "1.5"
    )
    assert meas.loc["fae", "epochs"] == "3"
    assert not any(c.startswith("99") for c in meas.to_numpy().ravel())  # the superseded duplicate is gone

    # published numbers: only in the published table, labelled as such
    pub = _md_table(_section(md, "Published numbers"))
    assert "published value" in pub.columns and set(pub.backbone) <= {"fae", "repa", "tarflow", "adm"}
    assert "1.29" in pub["published value"].tolist() and "adm" in set(pub.backbone)
    paper_values = set(load_paper_reported()["value"])
    measured_md = md[: md.index("## Published numbers")]
    for title in ("Measured results", "Evaluation at the last evaluated epoch (measured)"):
        cells = set(_md_table(_section(measured_md, title)).to_numpy().ravel())
        assert not cells & paper_values, cells & paper_values

    kern = _md_table(_section(md, "Kernel latency"))
    assert len(kern) == 4 and set(kern.impl) == {"triton", "eager"}
    assert kern.set_index(["impl", "size"]).loc[("triton", "4096"), "% of roofline"] == "50"

    notes = _md_table(_section(md, "Backbone notes"))
    assert ("repa", "CFG on all channels") in set(zip(notes.backbone, notes.value))
    assert ("tarflow", "KV cache") in set(zip(notes.backbone, notes.value))

    tex = (out / "smoke" / "summary.tex").read_text()
    assert "\\toprule" in tex and "FID last (inception-v3-compat, N=64)" in tex and "60.5" in tex
    assert "Published numbers (paper-reported, NOT measured here)" in tex

    conv = (out / "smoke" / "convergence.md").read_text()
    t = _md_table(_section(conv, "FID last (smoke, N=64) by epoch".replace(" last", ""))).set_index("epoch")
    assert t.loc["2", "fae"] == "50.25" and t.loc["3", "repa"] == "70.25" and t.loc["2", "tarflow"] == "120.5"

    long = pd.read_csv(out / "smoke" / "metrics_long.csv")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert set(long.suite) == {"smoke"} and len(long) == len(
            load_results(store).query("suite == 'smoke'")
        )

    for stem in ("fid_vs_epoch", "fid_vs_compute", "fid_vs_throughput", "kernel_latency"):
        for ext in (".png", ".pdf"):
            p = out / "smoke" / f"{stem}{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
    assert not (out / "other" / "kernel_latency.png").exists()


def test_reports_are_deterministic(store, tmp_path):
    with pytest.warns(RuntimeWarning):
        a = build_reports(store, tmp_path / "a", ["smoke"], make_plots=False)
        b = build_reports(store, tmp_path / "b", ["smoke"], make_plots=False)
    assert [p.name for p in a] == ["summary.md", "summary.tex", "convergence.md", "metrics_long.csv"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


@pytest.mark.filterwarnings("ignore:.*corrupt trailing line:RuntimeWarning")
def test_main_exit_codes(store, tmp_path, capsys):
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no runs" in capsys.readouterr().err
    assert main(["--results", str(store), "--out", str(tmp_path / "r"), "--suite", "nope"]) == 2
    assert (
        main(["--results", str(store), "--out", str(tmp_path / "r"), "--suite", "other", "--no-plots"]) == 0
    )
    assert (tmp_path / "r" / "other" / "summary.md").is_file()


def test_paper_reported_file():
    p = load_paper_reported()
    assert list(p.columns[:9]) == [
        "backbone",
        "system",
        "setting",
        "epochs",
        "metric",
        "value",
        "guidance",
        "source",
        "note",
    ]
    assert p["source"].str.len().gt(0).all()
    fae800 = p[
        (p.backbone == "fae")
        & (p.epochs == "800")
        & (p.metric == "fid")
        & p.system.str.startswith("FAE + time shift")
    ]
    assert set(zip(fae800.guidance, fae800.value)) == {("none", "1.48"), ("cfg", "1.29")}
    assert (
        p.loc[p.system.str.startswith("TARFlow") & (p.metric == "fid"), "note"].str.contains("unsure").all()
    )


def test_plot_functions_validate_input(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        plots.fid_vs_epoch(pd.DataFrame({"epoch": [1]}), tmp_path / "x")
    df = pd.DataFrame(
        {"epoch": [1, 2], "value": [10.0, 5.0], "series": ["a", "a"], "extractor": ["smoke", "smoke"]}
    )
    paths = plots.fid_vs_epoch(df, tmp_path / "sub" / "fid")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_mid_file_torn_line_and_throughput_companion(tmp_path):
    root = tmp_path / "results"
    rows = [_fid("r1", "imagenet256", "repa", 80, 9.5)]
    _write_run(root, "imagenet256", "r1", rows, {})
    # a killed run's torn line, terminated, then the resumed run's rows
    path = root / "imagenet256" / "r1" / "metrics.jsonl"
    resumed = json.dumps(_fid("r1", "imagenet256", "repa", 160, 7.25))
    path.write_text(path.read_text() + '{"run_id": "r1", "val\n' + resumed + "\n")
    thr = [_row("t1", "imagenet256-throughput", "repa", "throughput", "sample_img_per_s", 12.5, n_samples=64)]
    _write_run(root, "imagenet256-throughput", "t1", thr, {})
    with pytest.warns(RuntimeWarning, match="corrupt mid-file line"):
        df = load_results(root)
    assert df.loc[df.metric == "fid", "value"].tolist() == [9.5, 7.25]  # rows after the torn line survive
    with pytest.warns(RuntimeWarning):
        written = build_reports(root, tmp_path / "out", make_plots=False)
    assert {p.parent.name for p in written} == {"imagenet256", "imagenet256-throughput"}
    meas = _md_table(
        _section((tmp_path / "out" / "imagenet256" / "summary.md").read_text(), "Measured results")
    )
    assert (
        meas.loc[0, "sample img/s (best batch)"] == "12.5" and meas.loc[0, "FID last (smoke, N=64)"] == "7.25"
    )
