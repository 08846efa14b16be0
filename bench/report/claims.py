"""The seed papers' claims put to the test on a suite's store: a table built from the metric rows alone.

(a) FAE needs fewer epochs / training FLOPs than VA-VAE + LightningDiT to reach VA-VAE's final FID;
(b) REPA needs fewer than plain SiT (backbone `sit`) to reach SiT's final FID;
(c) STARFlow's FID against each diffusion family's at equal sampling throughput.

Method (stated in the report, `METHOD`):
- Curves: per run (= seed) and backbone, the FID rows of the "paper" sampler protocol, one extractor and sample
  count (the suite's most common), by evaluated epoch.
- Epochs to reach a target FID T: the first evaluated epoch whose FID <= T, linearly interpolated in log-FID
  against epoch from the evaluation before it (FID decays roughly geometrically with training, and log-FID keeps
  the interpolant positive and independent of the FID's scale). Reached already at the first evaluation: only an
  upper bound on the epochs (no epoch-0 FID to interpolate from); never reached: more than the last epoch.
  Training FLOPs at that epoch: the logged cumulative generator FLOPs (`train_flops`, tokenizer training not
  counted, as in the papers), linearly interpolated in epoch (FLOPs accrue linearly with steps).
- Speed-up = reference's epochs (or FLOPs) to reach its own final FID / the tested family's to reach the same FID.
- Equal throughput (c): a family's best measured sampling img/s (over batch sizes). When a diffusion family has
  FIDs and throughputs for several step counts that bracket STARFlow's throughput, its FID there is interpolated
  (log-FID linear in log-throughput); otherwise its one measured point bounds it, assuming more integration
  steps (slower) never give a worse FID: a diffusion family at least as fast as STARFlow has, at STARFlow's
  throughput, an FID at most its measured one (the ratio is then a lower bound), a slower one at least (upper
  bound). Measured quantity: FID_STARFlow / FID_diffusion (below 1: STARFlow better).
- Interval (95%): with two or more seeds, a t-interval of the log-ratio over seeds (geometric mean shown); with
  one seed, a parametric bootstrap within the seed: 2000 draws of every evaluated log-FID from
  N(log FID, fid_boot_std / FID) (the store's bootstrap rows, `fid_ci` metric: resampled sample features; from
  the interval width when only fid_ci_low/high are there), the whole computation repeated per draw, draws with a
  censored result put at the unfavourable extreme (0 or infinity) so the percentiles stay valid bounds. One seed
  without bootstrap rows: no interval.
- Verdict: the claim is "ratio above (or below) a threshold" (1 for the speed-ups; for (c) the paper's own
  STARFlow / diffusion FID ratio, so "approaching diffusion quality" means "no further behind than in the paper").
  Supported: the interval lies entirely on the claimed side; not supported: entirely on the other side; not
  resolvable at this scale: the interval straddles the threshold, or there is no interval, or rows are missing
  (which ones is said). With seeds, a censored seed on the unsafe side (e.g. a "not reached" when judging
  "supported") makes the verdict not resolvable. So does a side whose final FID is under FLOOR_FACTOR x its
  tokenizer's rFID (the floor rows of bench.floors) in any run: its tokenizer, not its generator, would decide it
  there (checked per run, as seeds train their own tokenizers and their floors differ).
Published numbers are shown in their own columns with their source, never mixed into the measured ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.claims_stats import (
    N_BOOT,
    NOT_SUPPORTED,
    SUPPORTED,
    UNRESOLVED,
    Curve,
    Estimate,
    Result,
    bootstrap,
    crossing,
    estimate,
    fid_at_throughput,
    fmt,
    over_seeds,
    speedup,
    starflow_ratio,
    verdict,
)
from bench.report.load import key
from bench.report.tables import Table, _Builder, num

FLOOR_FACTOR = 2.0  # a final FID under 2x its tokenizer's rFID is read as limited by the tokenizer (issue 14)
DIFFUSION = (
    "vavae_lightningdit",
    "fae",
    "repa",
    "sit",
)  # flow-matching DiT families (the diffusion side of (c))
METHOD = (
    "Built from the store alone. Epochs to reach a target FID: log-FID interpolated linearly between evaluated "
    "epochs; a speed-up '≥ x' means the tested family was already there at its first evaluation, '≤ x' that it "
    "never got there within the budget (x: the bound), '[..., censored]' an interval end such draws leave open. Training FLOPs: "
    "logged generator FLOPs at that epoch. Speed-up = reference epochs (FLOPs) to reach its own final FID ÷ the "
    "tested family's. Equal throughput: best measured sampling img/s; FID interpolated in log-log between step "
    "counts when bracketed, else bounded by the one measured point (more steps never worse). Interval (95%): "
    "t-interval of the log-ratio over seeds; one seed: parametric bootstrap of log-FID from the store's fid_ci "
    "rows (2000 draws); none without them. Verdict: interval entirely on the claimed side of the threshold = "
    "supported, entirely on the other side = not supported, straddling or missing = not resolvable at this scale, "
    "as is any comparison where a side's final FID is under 2x its tokenizer's rFID (the tokenizer would decide). "
    "Paper columns: published, not measured here (source given)."
)


# ----------------------------------------------------------------------------------------------- store -> curves


def _eval_fid(d: pd.DataFrame) -> pd.DataFrame:
    f = d[(d["phase"] == "eval") & (d["quantity"] == "fid") & np.isfinite(d["value"]) & d["epoch"].notna()]
    if "protocol" in f.columns and (f["protocol"].map(key) == "paper").any():
        f = f[f["protocol"].map(key).isin(["paper", ""])]
    if f.empty:
        return f
    ext, n = f.groupby(["k_ext", "k_n"]).size().sort_values(ascending=False).index[0]
    f = f[(f["k_ext"] == ext) & (f["k_n"] == n)]
    # one sampler setting per backbone (the most evaluated; file order breaks ties): a curve never mixes settings
    keep = {bb: g["k_setting"].value_counts(sort=False).idxmax() for bb, g in f.groupby("k_bb")}
    return f[[keep[b] == s for b, s in zip(f["k_bb"], f["k_setting"])]]


def curves(d: pd.DataFrame) -> dict[tuple[str, str], Curve]:
    """(run, backbone) -> Curve from the suite's rows (with tables.with_keys columns)."""
    f = _eval_fid(d)
    out = {}
    if f.empty:
        return out
    ci = d[(d["phase"] == "eval") & d["quantity"].isin(["fid_boot_std", "fid_ci_low", "fid_ci_high"])]
    ci = ci[(ci["k_ext"] == f["k_ext"].iloc[0]) & (ci["k_n"] == f["k_n"].iloc[0])]
    z = stats.norm.ppf(0.975)
    for (run, bb), g in f.groupby(["k_run", "k_bb"]):
        g = g.sort_values(["epoch", "line"]).groupby("epoch").last().reset_index()
        mine = ci[(ci["k_run"] == run) & (ci["k_bb"] == bb)]
        sd = []
        for ep in g["epoch"]:
            at = mine[mine["epoch"] == ep].groupby("quantity")["value"].last()
            if "fid_boot_std" in at:
                sd.append(float(at["fid_boot_std"]))
            elif "fid_ci_low" in at and "fid_ci_high" in at:
                sd.append(float(at["fid_ci_high"] - at["fid_ci_low"]) / (2 * z))
            else:
                sd.append(np.nan)
        out[(run, bb)] = Curve(g["epoch"].to_numpy(float), g["value"].to_numpy(float),
                               g["train_flops"].to_numpy(float), np.asarray(sd, float))  # fmt: skip
    return out


def throughputs(thr: pd.DataFrame) -> dict[tuple[str, str], dict[tuple[str, str], float]]:
    """(run, backbone) -> {(sampler, steps): best sampling img/s over batch sizes}."""
    out: dict = {}
    if thr.empty:
        return out
    t = thr[(thr["quantity"] == "sample_img_per_s") & np.isfinite(thr["value"])]
    for (run, bb, s, st), g in t.groupby(["k_run", "k_bb", t["sampler"].map(key), t["steps"].map(key)]):
        out.setdefault((run, bb), {})[(s, st)] = float(g["value"].max())
    return out


def _final_by_setting(d: pd.DataFrame) -> dict[tuple[str, str, str, str], tuple[float, float]]:
    """(run, backbone, sampler, steps) -> (final-epoch FID, its bootstrap sd) for every sampler setting logged."""
    f = d[(d["phase"] == "eval") & (d["quantity"] == "fid") & np.isfinite(d["value"]) & d["epoch"].notna()]
    base = _eval_fid(d)
    if base.empty:
        return {}
    f = f[(f["k_ext"] == base["k_ext"].iloc[0]) & (f["k_n"] == base["k_n"].iloc[0])]
    cv = curves(d)
    out = {}
    for (run, bb, s, st), g in f.groupby(["k_run", "k_bb", f["sampler"].map(key), f["steps"].map(key)]):
        g = g[g["epoch"] == g["epoch"].max()]
        c = cv.get((run, bb))
        sd = float(c.sd[-1]) if c is not None and c.epochs[-1] == g["epoch"].iloc[-1] else np.nan
        out[(run, bb, s, st)] = (float(g["value"].iloc[-1]), sd)
    return out


# ----------------------------------------------------------------------------------------------- published


def _paper_rows(paper: pd.DataFrame, backbone: str, metric: str) -> pd.DataFrame:
    p = paper[(paper["backbone"] == backbone) & (paper["metric"] == metric)]
    return p[p["dataset"].str.startswith("ImageNet 256")]


def paper_speedup(paper: pd.DataFrame, test: str, ref: str) -> tuple[float, str, str]:
    """(value, text, source) of the published speed-up of `test` over `ref`: the CSV's convergence_speedup_x row
    when it has one; else derived from the published unguided FIDs: the smallest epoch ratio at which the
    tested family's FID is at most the reference's (both from the CSV, sources joined)."""
    rows = _paper_rows(paper, test, "convergence_speedup_x")
    if not rows.empty:
        r = rows.iloc[0]
        return (
            float(r["value"]),
            f"{r['value']}x ({r['note']})" if r["note"] else f"{r['value']}x",
            r["source"],
        )
    t, f = _paper_rows(paper, test, "fid"), _paper_rows(paper, ref, "fid")
    t, f = t[t["guidance"] == "none"], f[f["guidance"] == "none"]
    best = None
    for _, a in t.iterrows():
        for _, b in f.iterrows():
            try:
                ea, eb, va, vb = float(a["epochs"]), float(b["epochs"]), float(a["value"]), float(b["value"])
            except ValueError:
                continue
            if va <= vb and eb / ea > (best[0] if best else 0):
                best = (eb / ea, a, b)
    if best is None:
        return np.nan, "", ""
    x, a, b = best
    text = (f"≥ {num(x)}x (derived: {a['system']} {a['epochs']} ep FID {a['value']} ≤ {b['system']} "
            f"{b['epochs']} ep FID {b['value']}, no CFG)")  # fmt: skip
    return x, text, f"{a['source']}; {b['source']}"


def paper_fid(paper: pd.DataFrame, backbone: str) -> pd.Series | None:
    """The published guided ImageNet-256 FID of a family at its longest training (None when the CSV has none)."""
    p = _paper_rows(paper, backbone, "fid")
    p = p[(p["guidance"] != "") & (p["guidance"] != "none")]
    if p.empty:
        return None
    ep = pd.to_numeric(p["epochs"], errors="coerce").fillna(-1)
    return p.loc[ep.idxmax()]


# ----------------------------------------------------------------------------------------------- the table

COLUMNS = ("claim", "measured as", "epoch speed-up (×)", "training-FLOPs speed-up (×)", "FID ratio at equal throughput",
           "interval (95%)", "seeds", "threshold", "verdict", "why", "caveat", "paper speed-up (×)", "paper FID ratio",
           "paper source")  # fmt: skip
SPEEDUP_CLAIMS = (
    ("(a)", "fae", "vavae_lightningdit", "FAE reaches VA-VAE + LightningDiT's final FID faster"),
    ("(b)", "repa", "sit", "REPA (SiT + alignment) reaches plain SiT's final FID faster"),
)
STARFLOW_CLAIM = "STARFlow's FID approaches the diffusion families' (at equal sampling throughput)"
STARFLOW_WORDING = (
    "'approaching state-of-the-art diffusion models in sample quality' (arXiv:2506.06276 abstract)"
)


def _floor_bound(bb: str, final: dict, floor: dict) -> list[tuple[str, float, float]]:
    """(run, final FID, rFID) of every run of `bb` whose final FID is under FLOOR_FACTOR x its own tokenizer's."""
    return [(run, final[(run, b)], floor[(run, b)]) for run, b in sorted(final)
            if b == bb and (run, b) in floor and final[(run, b)] < FLOOR_FACTOR * floor[(run, b)]]  # fmt: skip


def _floor_caveat(bb: str, bound: list[tuple[str, float, float]], n_runs: int) -> str:
    why = "its tokenizer, not its generator, limits it"
    if n_runs == 1:
        ((_, fid, rfid),) = bound
        return f"{bb}'s final FID {num(fid)} is under {num(FLOOR_FACTOR)}x its tokenizer's rFID {num(rfid)}: {why}"
    runs = ", ".join(f"{run}: FID {num(fid)} vs rFID {num(rfid)}" for run, fid, rfid in bound)
    return (f"{bb}'s final FID is under {num(FLOOR_FACTOR)}x its own tokenizer's rFID in {len(bound)} of {n_runs} "
            f"runs ({runs}): there {why}")  # fmt: skip


def claims_table(d: pd.DataFrame, thr: pd.DataFrame, paper: pd.DataFrame) -> Table:
    """The claims table of one suite (rows with tables.with_keys columns; thr: its throughput rows, keyed)."""
    cv = curves(d)
    present = {bb for _, bb in cv}
    runs_of = lambda bb: {r for r, b in cv if b == bb}  # noqa: E731
    b = _Builder()

    tok = d[(d["phase"] == "tokenizer") & (d["quantity"] == "rfid") & np.isfinite(d["value"])]
    ext = _eval_fid(d)["k_ext"].iloc[0] if present else ""
    # per run: with seeds, one seed whose tokenizer decides its side already biases the interval over seeds
    floor = tok[tok["k_ext"] == ext].groupby(["k_run", "k_bb"])["value"].mean().to_dict()
    final = {key: c.final for key, c in cv.items()}
    backbones: tuple = ()  # the claim's two sides, read by row() for the floor caveat

    def row(claim, measured_as, r: Result | None, col, q, threshold, claimed, paper_text, paper_col, source, why="",
            paper_q="speedup_iterations"):  # fmt: skip
        b.new()
        b.put("claim", claim)
        b.put("measured as", measured_as)
        if r is not None:
            b.put(col, fmt(r), r.point, q)
            b.put("interval (95%)", r.method)
            b.put("seeds", str(r.n_seeds), r.n_seeds)
            v, reason = verdict(r, threshold, claimed)
        else:
            v, reason = UNRESOLVED, why
        b.put("threshold", f"{'>' if claimed == 'above' else '≤'} {num(threshold)}", threshold)
        b.put(paper_col, paper_text, np.nan, f"paper:{paper_q}")
        b.put("paper source", source)
        near = {bb: bound for bb in backbones if (bound := _floor_bound(bb, final, floor))}
        if near and v != UNRESOLVED:  # the tokenizer, not the generator, would decide the verdict
            v, reason = (
                UNRESOLVED,
                f"{v} by the interval alone, but {' and '.join(near)} near the tokenizer floor",
            )
        b.put("verdict", v)
        b.put("why", reason)
        b.put("caveat", "; ".join(_floor_caveat(bb, bound, len(runs_of(bb))) for bb, bound in near.items()))

    for tag, test, ref, text in SPEEDUP_CLAIMS:
        backbones = (test, ref)
        _, ptext0, psrc = paper_speedup(paper, test, ref)
        for what, col, q in (("epochs", "epoch speed-up (×)", "epoch_speedup"),
                             ("flops", "training-FLOPs speed-up (×)", "flops_speedup")):  # fmt: skip
            # the papers count iterations; their two generators cost the same FLOPs per iteration (same DiT-XL on
            # a latent of the same token count; REPA's projector is negligible), so the FLOPs claim is the same
            ptext = ptext0 + (
                " (in iterations; equal FLOPs per iteration in the papers)"
                if ptext0 and what == "flops"
                else ""
            )
            claim = f"{tag} {text} ({'epochs' if what == 'epochs' else 'training FLOPs'})"
            unit = "epochs" if what == "epochs" else "generator training FLOPs"
            measured_as = f"{ref} {unit} to reach its final FID ÷ {test} {unit} to reach it"
            missing = [bb for bb in (test, ref) if bb not in present]
            seeds = sorted(runs_of(test) & runs_of(ref))
            if missing or not seeds:
                why = (f"no FID rows of backbone(s) {', '.join(f'`{m}`' for m in missing)} in the store" if missing
                       else f"`{test}` and `{ref}` never in the same run")  # fmt: skip
                row(claim, measured_as, None, col, q, 1.0, "above", ptext, "paper speed-up (×)", psrc, why)
                continue
            pairs = [(cv[(s, ref)], cv[(s, test)]) for s in seeds]
            if what == "flops" and not all(np.isfinite(c.flops).any() for p in pairs for c in p):
                row(claim, measured_as, None, col, q, 1.0, "above", ptext, "paper speed-up (×)", psrc,
                    "no train_flops on the FID rows")  # fmt: skip
                continue
            r = estimate(pairs, lambda a, c, w=what: speedup(a, c, w))
            row(claim, measured_as, r, col, q, 1.0, "above", ptext, "paper speed-up (×)", psrc)

    thr_of = throughputs(thr)
    finals = _final_by_setting(d)
    sf = paper_fid(paper, "starflow")
    diff = [x for x in DIFFUSION if x in present] or [
        x for x in DIFFUSION if x in ("vavae_lightningdit", "fae", "repa")
    ]
    for fam in diff:
        backbones = ("starflow", fam)
        claim = f"(c) {STARFLOW_CLAIM}: vs {fam}"
        measured_as = f"FID starflow ÷ FID {fam} at starflow's sampling img/s"
        pf = paper_fid(paper, fam)
        if sf is not None and pf is not None:
            threshold = float(sf["value"]) / float(pf["value"])
            ptext = (f"{num(threshold)} = {sf['value']} ÷ {pf['value']} ({sf['system']} vs {pf['system']}, guided, "
                     f"not throughput-matched); {STARFLOW_WORDING}")  # fmt: skip
            psrc = f"{sf['source']}; {pf['source']}"
        else:
            threshold, ptext, psrc = (
                1.0,
                f"no published guided FID of {fam} in the CSV: threshold 1; {STARFLOW_WORDING}",
                "",
            )
        missing = [bb for bb in ("starflow", fam) if bb not in present]
        if missing:
            row(claim, measured_as, None, "FID ratio at equal throughput", "fid_ratio_equal_throughput", threshold,
                "below", ptext, "paper FID ratio", psrc, paper_q="fid_ratio", why=f"no FID rows of backbone(s) {', '.join(f'`{m}`' for m in missing)} in the store")  # fmt: skip
            continue
        per_seed, why = [], ""
        for s in sorted(runs_of("starflow") & runs_of(fam)):
            sf_thr, d_thr = thr_of.get((s, "starflow"), {}), thr_of.get((s, fam), {})
            sf_c, d_c = cv[(s, "starflow")], cv[(s, fam)]
            pts = [(t, finals[(s, fam, *k)]) for k, t in d_thr.items() if (s, fam, *k) in finals]
            if (
                d_thr and not pts
            ):  # throughput measured at another step count than evaluated: the leaderboard's
                pts = [
                    (max(d_thr.values()), (d_c.final, float(d_c.sd[-1])))
                ]  # pairing (best img/s, final FID)
            if not sf_thr or not pts:
                why = (
                    "no sampling-throughput rows (phase throughput, sample_img_per_s) for starflow and " + fam
                )
                continue
            per_seed.append((sf_c, d_c, max(sf_thr.values()), pts))
        if not per_seed:
            row(claim, measured_as, None, "FID ratio at equal throughput", "fid_ratio_equal_throughput", threshold,
                "below", ptext, "paper FID ratio", psrc, paper_q="fid_ratio", why=why or f"`starflow` and `{fam}` never in the same run")  # fmt: skip
            continue

        if len(per_seed) >= 2:
            r = over_seeds(
                [starflow_ratio(sf_c.final, t, [(x, f) for x, (f, _) in pts]) for sf_c, _, t, pts in per_seed]
            )
        else:
            sf_c, d_c, sf_thr, pts = per_seed[0]
            e = starflow_ratio(sf_c.final, sf_thr, [(x, f) for x, (f, _) in pts])
            r = Result(point=e.value, censor=e.censor, n_seeds=1)
            sds = [sf_c.sd[-1], *(sd for _, (_, sd) in pts)]
            if np.isfinite(sds).all():  # every FID of the comparison redrawn from its bootstrap sd
                # one-point curves whose "epoch" holds the setting's throughput
                ends = [
                    Curve(np.array([x]), np.array([f]), np.array([np.nan]), np.array([sd]))
                    for x, (f, sd) in pts
                ]
                last = Curve(sf_c.epochs[-1:], sf_c.fid[-1:], sf_c.flops[-1:], sf_c.sd[-1:])
                r.lo, r.hi, r.censored = bootstrap([last, *ends], lambda a, *cs, t=sf_thr: starflow_ratio(
                    a.final, t, [(float(c.epochs[0]), c.final) for c in cs]))  # fmt: skip
                r.method = f"bootstrap within 1 seed ({N_BOOT} draws of log-FID)"
            else:
                r.method = "none: 1 seed and no bootstrap rows (fid_ci)"
        side = {"": "bracketed", "lower": "diffusion faster: ratio ≥", "upper": "diffusion slower: ratio ≤"}
        r.method += f"; throughput match: {side.get(r.censor, r.censor)}"
        row(claim, measured_as, r, "FID ratio at equal throughput", "fid_ratio_equal_throughput", threshold, "below",
            ptext, "paper FID ratio", psrc, paper_q="fid_ratio")  # fmt: skip
    t = b.table()
    cols = [c for c in COLUMNS if c in t.text.columns]
    return Table(t.text[cols], t.sort[cols], {c: v for c, v in t.sources.items() if c in cols})


def relevant(d: pd.DataFrame) -> bool:
    """True when the store holds FID curves of both sides of at least one claim (else the table says nothing)."""
    present = {bb for _, bb in curves(d)}
    pairs = [(t, r) for _, t, r, _ in SPEEDUP_CLAIMS] + [("starflow", f) for f in DIFFUSION]
    return any(a in present and b in present for a, b in pairs)


__all__ = [
    "METHOD",
    "SUPPORTED",
    "NOT_SUPPORTED",
    "UNRESOLVED",
    "claims_table",
    "relevant",
    "crossing",
    "speedup",
    "verdict",
    "fid_at_throughput",
    "Curve",
    "Estimate",
    "Result",
]
