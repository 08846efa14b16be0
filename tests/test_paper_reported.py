"""reports/paper_reported.csv: the published numbers, one per (system, setting, metric, source), each with its
source, values exactly as printed, and every disagreement between two sources marked in both rows' notes."""

import pandas as pd

from bench.report.load import PAPER_COLUMNS, load_paper_reported

SETTING = ["backbone", "system", "dataset", "epochs", "sampler", "steps", "guidance", "metric"]
ROW = [c for c in PAPER_COLUMNS if c not in ("metric", "value", "note")]


def _paper() -> pd.DataFrame:
    return load_paper_reported()


def test_schema_and_sources():
    p = _paper()
    assert tuple(p.columns) == PAPER_COLUMNS  # the reader's schema, nothing more
    # every row names a primary source and where in it (a table, an abstract, an official README or output)
    assert p["source"].str.contains(r"arXiv:\d{4}\.\d{5}|README|slides", regex=True).all()
    assert p["source"].str.contains(r"[Tt]able|abstract|README|output", regex=True).all()
    for c in ("epochs", "params_M", "steps"):  # numeric where given
        given = p.loc[p[c] != "", c]
        assert pd.to_numeric(given, errors="coerce").notna().all(), (c, given.tolist())
    # one number per metric within a table row of one source
    assert not p.duplicated([*ROW, "metric"]).any()


def test_disagreements_are_marked():
    p = _paper()
    n_marked = 0
    for _, g in p.groupby(SETTING):
        if g["value"].astype(float).nunique() > 1:
            assert g["note"].str.contains("disagree").all(), g
            n_marked += 1
    assert n_marked >= 2  # SiT-XL/2 without CFG (8.3 vs 8.61), DiT-XL/2 without CFG (9.6 vs 9.62)
    sit = p[(p.system == "SiT-XL/2") & (p.guidance == "none") & (p.metric == "fid") & (p.epochs == "1400")]
    assert set(sit["value"]) == {"8.3", "8.61"}


def test_paper_tables_complete():
    """The five metrics of the system-level tables, with and without guidance, as the papers print them."""
    p = _paper()

    def row(backbone, system, epochs, guidance, source):
        g = p[
            (p.backbone == backbone) & (p.system == system) & (p.epochs == epochs) & (p.guidance == guidance)
        ]
        g = g[g.source.str.contains(source, regex=False)]
        return dict(zip(g.metric, g.value))

    lit = "VA-VAE f16d32 + LightningDiT-XL/1"
    assert row("vavae_lightningdit", lit, "800", "cfg", "2501.01423") == {
        "fid": "1.35", "sfid": "4.15", "is": "295.3", "precision": "0.79", "recall": "0.65"}  # fmt: skip
    assert row("vavae_lightningdit", lit, "64", "none", "2501.01423")["sfid"] == "4.22"
    assert row("repa", "SiT-XL/2 + REPA", "800", "cfg + guidance interval", "Table 4") == {
        "fid": "1.42", "sfid": "4.70", "is": "305.7", "precision": "0.80", "recall": "0.65"}  # fmt: skip
    assert row("repa", "SiT-XL/2 + REPA", "200", "cfg", "Table 4")["is"] == "264.0"  # trailing zero kept
    assert row("sit", "SiT-XL/2", "1400", "cfg", "Table 4")["fid"] == "2.06"
    assert row("repa", "SiT-B/2 + REPA", "80", "none", "Table 3") == {"fid": "24.4"}
    # every system compared here has rows with and without guidance except where no source prints them
    for bb in ("repa", "sit", "dit", "vavae_lightningdit", "fae"):
        gs = set(p.loc[(p.backbone == bb) & (p.metric == "fid"), "guidance"])
        assert "none" in gs and any(g.startswith(("cfg", "CFG")) for g in gs), (bb, gs)
