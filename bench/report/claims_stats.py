"""The arithmetic of the claims table (bench.report.claims), with no pandas: when a FID-vs-epoch curve reaches a
target (log-FID interpolation), speed-up ratios and their censoring, intervals over seeds or by a parametric
bootstrap within one seed, the verdict rule, and a diffusion family's FID at a given sampling throughput. The
method is described in bench.report.claims' docstring."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bench.report.load import isnull
from bench.report.tables import num

SUPPORTED, NOT_SUPPORTED, UNRESOLVED = "supported", "not supported", "not resolvable at this scale"
N_BOOT, LEVEL, BOOT_SEED = 2000, 0.95, 0


# ----------------------------------------------------------------------------------------------- curves


@dataclass
class Curve:
    """One run's FID by evaluated epoch for one backbone (sorted by epoch)."""

    epochs: np.ndarray
    fid: np.ndarray
    flops: np.ndarray  # cumulative generator training FLOPs at each evaluation (NaN when not logged)
    sd: np.ndarray  # bootstrap standard deviation of each FID (NaN when not logged)

    @property
    def final(self) -> float:
        return float(self.fid[-1])

    def with_fid(self, fid: np.ndarray) -> Curve:
        return Curve(self.epochs, fid, self.flops, self.sd)

    def flops_at(self, epoch: float) -> float:
        ok = np.isfinite(self.flops)
        if ok.sum() == 0:
            return np.nan
        if ok.sum() == 1:  # FLOPs are proportional to epochs within a run
            i = int(np.flatnonzero(ok)[0])
            return float(self.flops[i] * epoch / self.epochs[i])
        return float(np.interp(epoch, self.epochs[ok], self.flops[ok]))


def crossing(epochs: np.ndarray, fid: np.ndarray, target: float) -> tuple[float, str]:
    """(epoch at which the curve first reaches FID <= target, censoring): "" exact (log-FID interpolation between
    the two evaluations around the crossing), "first" (reached by the first evaluation: the epoch is an upper
    bound), "never" (not reached: more than the last epoch, which is returned)."""
    for j, f in enumerate(fid):
        if f <= target:
            if j == 0:
                return float(epochs[0]), "first"
            a, b = math.log(fid[j - 1]), math.log(f)
            t = (a - math.log(target)) / (a - b) if a > b else 1.0
            return float(epochs[j - 1] + t * (epochs[j] - epochs[j - 1])), ""
    return float(epochs[-1]), "never"


@dataclass
class Estimate:
    """A ratio and how it is censored: "" exact, "lower" (the true ratio is at least this), "upper" (at most),
    "unknown" (both ends censored)."""

    value: float
    censor: str = ""


def _combine(num_c: str, den_c: str) -> str:
    """Censoring of num / den from the censoring of its parts ("upper"/"lower" bound of each part)."""
    if num_c == "" and den_c == "":
        return ""
    up = num_c == "upper" or den_c == "lower"  # numerator at most / denominator at least -> ratio at most
    lo = num_c == "lower" or den_c == "upper"
    return "unknown" if up and lo else ("upper" if up else "lower")


def speedup(ref: Curve, test: Curve, what: str = "epochs") -> Estimate:
    """Reference's epochs (or FLOPs) to reach its own final FID / the tested family's to reach the same FID."""
    target = ref.final
    e_ref, c_ref = crossing(ref.epochs, ref.fid, target)
    e_test, c_test = crossing(test.epochs, test.fid, target)
    # a crossing at the first evaluation is an upper bound on the cost; never reached: a lower bound
    part = {"": "", "first": "upper", "never": "lower"}
    if what == "flops":
        a, b = ref.flops_at(e_ref), test.flops_at(e_test)
    else:
        a, b = e_ref, e_test
    if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
        return Estimate(np.nan, "unknown")
    return Estimate(a / b, _combine(part[c_ref], part[c_test]))


# ----------------------------------------------------------------------------------------------- intervals


@dataclass
class Result:
    point: float = np.nan
    censor: str = ""  # of the point estimate
    lo: float = np.nan
    hi: float = np.nan
    method: str = ""
    n_seeds: int = 0
    censored: set = field(default_factory=set)  # censoring kinds among seeds / draws
    missing: str = ""  # why nothing could be computed


def over_seeds(ests: list[Estimate]) -> Result:
    """Geometric mean and 95% t-interval of the log-ratio over seeds (censored seeds enter with their bound)."""
    ok = [e for e in ests if np.isfinite(e.value) and e.value > 0 and e.censor != "unknown"]
    r = Result(n_seeds=len(ests), censored={e.censor for e in ests} - {""})
    if len(ok) < 2:
        r.missing = f"{len(ok)} of {len(ests)} seeds give a ratio (the others are censored at both ends)"
        if ok:
            r.point, r.censor = ok[0].value, ok[0].censor
        return r
    v = np.log([e.value for e in ok])
    m, sd = float(v.mean()), float(v.std(ddof=1))
    hw = float(stats.t.ppf(0.5 + LEVEL / 2, len(v) - 1) * sd / math.sqrt(len(v)))
    cens = {e.censor for e in ok} - {""}
    r.point, r.censor = math.exp(m), (cens.pop() if len(cens) == 1 else ("unknown" if cens else ""))
    r.lo, r.hi = math.exp(m - hw), math.exp(m + hw)
    r.method = f"t over {len(ok)} seeds (log scale)"
    return r


def bootstrap(
    curves: list[Curve], fn, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float, set]:
    """Percentile interval of fn(*curves) with every FID redrawn as exp(N(log FID, sd / FID)); censored draws go to
    the unfavourable end (an upper bound to 0 for the low end, a lower bound to infinity for the high end)."""
    rng = np.random.default_rng(seed)
    lows, highs, kinds = [], [], set()
    for _ in range(n_boot):
        drawn = [
            c.with_fid(np.exp(np.log(c.fid) + rng.standard_normal(len(c.fid)) * c.sd / c.fid)) for c in curves
        ]
        e = fn(*drawn)
        kinds.add(e.censor)
        v = e.value if np.isfinite(e.value) else np.nan
        lows.append(0.0 if e.censor in ("upper", "unknown") or np.isnan(v) else v)
        highs.append(np.inf if e.censor in ("lower", "unknown") or np.isnan(v) else v)
    a = (1 - LEVEL) / 2
    # order statistics (no interpolation between an infinite and a finite draw), each on its conservative side
    return (
        float(np.quantile(lows, a, method="lower")),
        float(np.quantile(highs, 1 - a, method="higher")),
        kinds - {""},
    )


def estimate(pairs: list[tuple[Curve, ...]], fn) -> Result:
    """pairs: per seed, the curves fn needs. Across seeds with >= 2 seeds, else bootstrap within the one seed."""
    ests = [fn(*p) for p in pairs]
    if len(pairs) >= 2:
        return over_seeds(ests)
    r = Result(point=ests[0].value, censor=ests[0].censor, n_seeds=1)
    if all(np.isfinite(c.sd).all() for c in pairs[0]):
        r.lo, r.hi, r.censored = bootstrap(list(pairs[0]), fn)
        r.method = f"bootstrap within 1 seed ({N_BOOT} draws of log-FID)"
    else:
        r.method = "none: 1 seed and no bootstrap rows (fid_ci)"
    return r


def verdict(r: Result, threshold: float, claimed: str) -> tuple[str, str]:
    """(verdict, reason) for the claim "ratio above threshold" (claimed="above") or "at most threshold" ("below")."""
    if r.missing and not np.isfinite(r.lo):
        return UNRESOLVED, r.missing
    if not (np.isfinite(r.lo) or np.isfinite(r.hi)) or (isnull(r.lo) and isnull(r.hi)):
        return UNRESOLVED, "no interval (one seed without bootstrap rows)"
    t = num(threshold)
    seeds = r.n_seeds >= 2
    # the claim "above" is strict (a speed-up > 1), "below" inclusive (a ratio <= the paper's)
    above, below = r.lo > threshold, r.hi <= threshold
    if claimed == "above":
        ok, bad, unsafe_ok, unsafe_bad = above, below, "upper", "lower"
    else:
        ok, bad, unsafe_ok, unsafe_bad = below, above, "lower", "upper"
    risky = lambda kind: seeds and (kind in r.censored or "unknown" in r.censored)  # noqa: E731
    if ok and not risky(unsafe_ok):
        return SUPPORTED, f"interval entirely {'above' if claimed == 'above' else 'below'} {t}"
    if bad and not risky(unsafe_bad):
        return NOT_SUPPORTED, f"interval entirely {'below' if claimed == 'above' else 'above'} {t}"
    if ok or bad:
        return UNRESOLVED, "interval clear of the threshold, but a censored seed's true value could cross it"
    return UNRESOLVED, f"interval contains {t}"


def fmt(r: Result) -> str:
    """'6.2 [2.1, 18]'; censored points as '≥ 6' / '≤ 0.5'; an interval end at 0 or infinity as 'censored'."""
    if not np.isfinite(r.point):
        return ""
    p = {"lower": "≥ ", "upper": "≤ ", "unknown": "~ "}.get(r.censor, "") + num(r.point)
    if np.isfinite(r.lo) or np.isfinite(r.hi):
        lo = num(r.lo) if np.isfinite(r.lo) and r.lo > 0 else "censored"
        hi = num(r.hi) if np.isfinite(r.hi) else "censored"
        return f"{p} [{lo}, {hi}]"
    return p


# ----------------------------------------------------------------------------------------------- claim (c)


def fid_at_throughput(points: list[tuple[float, float]], target: float) -> Estimate:
    """A diffusion family's FID at sampling throughput `target` from its (throughput, FID) points: log-log
    interpolation when bracketed, else the nearest point as a bound ("upper" when it is faster: more steps
    would not be worse; "lower" when slower)."""
    pts = sorted(points)
    xs = np.log([p[0] for p in pts])
    ys = np.log([p[1] for p in pts])
    lt = math.log(target)
    if len(pts) >= 2 and xs[0] <= lt <= xs[-1]:
        return Estimate(float(np.exp(np.interp(lt, xs, ys))))
    if lt < xs[0]:  # every measured setting is faster than STARFlow: FID there at most the slowest one's
        return Estimate(float(pts[0][1]), "upper")
    return Estimate(float(pts[-1][1]), "lower")


def starflow_ratio(sf_fid: float, sf_thr: float, points: list[tuple[float, float]]) -> Estimate:
    d = fid_at_throughput(points, sf_thr)
    # FID_sf / FID_d: an upper bound on FID_d makes the ratio a lower bound, and vice versa
    return Estimate(sf_fid / d.value, {"": "", "upper": "lower", "lower": "upper"}[d.censor])
