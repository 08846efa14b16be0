"""Small helpers the static gate and the latency measurement share."""

from __future__ import annotations

import json
from pathlib import Path

TOLERANCE = 0.05  # a metric may grow by at most 5%
REPORTS = Path(__file__).resolve().parents[2] / "reports" / "kernels"


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (tabulate; a plain fallback where a bare GPU image lacks it)."""
    try:
        from tabulate import tabulate
    except ImportError:
        cells = [[("-" if c is None else str(c)) for c in r] for r in rows]
        lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    return tabulate(rows, headers=headers, tablefmt="github")


def write_json(path: Path, obj: dict) -> None:
    """Atomic: a reader never sees half a file (partial results are rewritten as a run goes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def quantile(xs, q: float) -> float:
    """Linear-interpolated quantile (numpy's default) without numpy arrays in the JSON path."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(xs) -> float:
    return quantile(xs, 0.5)


def iqr(xs) -> float:
    return quantile(xs, 0.75) - quantile(xs, 0.25)
