"""Reading the results store: run directories, their metric rows (schema: bench.store.METRIC_FIELDS, the only
one), provenance, sample grids and kernel latency files; and the published numbers of paper_reported.csv.

Every row gets derived columns that give each value ONE meaning (see `quantity`, `cfg_scale`, `flow_weight`),
so that tables and plots never put values with different meanings in one column or on one axis.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.store import METRIC_FIELDS

# A resumed run re-logs rows; the last one per this key (plus any extra keys the rows carry) wins.
DEDUP_KEY = ("suite", "run_id", "backbone", "phase", "metric", "epoch", "extractor", "sampler", "steps", "guidance", "n_samples")  # fmt: skip
NUMERIC = ("value", "epoch", "step", "images_seen", "train_flops", "n_samples", "steps", "nfe", "guidance", "seed", "time")  # fmt: skip
RUN_COLUMNS = ("run_dir", "line")

# Sampler names of the autoregressive flows (TARFlow/STARFlow). Runs from before typed sampler settings store
# the flows' guidance WEIGHT w (0 = off, p_c^(1+w) / p_u^w) in "guidance" and diffusion's CFG scale (1 = off)
# in the same field. Runs with typed settings (config.json's recipe sampler has a "kind") or rows with a
# "protocol" field follow baselines.api SamplerSettings.describe(): a guidance scale, 1 = off, for every family
# (a flow's w reported as 1 + w, the same exponent a CFG scale puts on p_c).
AR_FLOW_SAMPLERS = ("sequential", "jacobi", "kv_cache", "ar")

DEFAULT_PAPER_CSV = Path(__file__).resolve().parents[2] / "reports" / "paper_reported.csv"
PAPER_COLUMNS = (
    "backbone", "system", "dataset", "epochs", "params_M", "sampler", "steps", "guidance", "metric", "value",
    "source", "note",
)  # fmt: skip


@dataclass(frozen=True)
class RunInfo:
    """One run directory: config.json, env.json (empty dicts when absent)."""

    suite: str
    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def backbone_config(self, backbone: str) -> dict:
        bbs = self.config.get("backbones")
        v = bbs.get(backbone) if isinstance(bbs, dict) else None
        return v if isinstance(v, dict) else {}

    def family(self, backbone: str) -> str:
        return str(self.backbone_config(backbone).get("family") or backbone)

    def typed_sampler(self, backbone: str) -> bool:
        """True when config.json records typed sampler settings (their "kind"): guidance is then a scale."""
        recipe = self.backbone_config(backbone).get("recipe")
        sampler = recipe.get("sampler") if isinstance(recipe, dict) else None
        return isinstance(sampler, dict) and "kind" in sampler

    def tokenizer_params(self, backbone: str) -> float | None:
        p = self.backbone_config(backbone).get("params")
        v = p.get("tokenizer") if isinstance(p, dict) else None
        return float(v) if isinstance(v, (int, float)) else None

    def command(self) -> str:
        """The command line of the run: as recorded (config/env "argv" or "command"), else rebuilt from the
        config's suite/seed/device (marked as such)."""
        for src in (self.config, self.env):
            for k in ("command", "argv", "cmdline"):
                v = src.get(k)
                if isinstance(v, list) and v:
                    return " ".join(str(a) for a in v)
                if isinstance(v, str) and v:
                    return v
        c = self.config
        parts = ["invoke bench", f"--suite {c.get('suite', self.suite)}"]
        if isinstance(c.get("backbones"), dict):
            parts.append("--backbones " + ",".join(c["backbones"]))
        parts += [f"--seed {c['seed']}"] if "seed" in c else []
        parts += [f"--device {c['device']}"] if "device" in c else []
        return " ".join(parts) + f" --run-id {self.run_id}  (rebuilt from config.json)"

    def grids(self, backbone: str) -> list[Path]:
        """Sample-grid PNGs of a backbone (<run>/<backbone>/grids/*.png), sorted by name (= by epoch)."""
        return sorted((self.path / backbone / "grids").glob("*.png"))


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        warnings.warn(f"{path}: not valid JSON ({e}); ignored", RuntimeWarning, stacklevel=3)
        return {}
    return obj if isinstance(obj, dict) else {}


def run_dirs(results_dir: Path) -> list[Path]:
    return sorted(p.parent for p in Path(results_dir).glob("*/*/metrics.jsonl") if p.is_file())


def load_runs(results_dir: str | Path) -> list[RunInfo]:
    """Every run directory (one holding a metrics.jsonl) under results_dir, sorted by (suite, run_id)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    return [
        RunInfo(d.parent.name, d.name, d, _read_json(d / "config.json"), _read_json(d / "env.json"))
        for d in run_dirs(results_dir)
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
            warnings.warn(f"{path}:{i}: skipped a corrupt {where} line (torn write of a killed run?)",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
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


def isnull(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def key(v: Any) -> str:
    """Stable text for a grouping key: '' for null, integers without '.0'."""
    if isnull(v):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _quantity(metric: str, tokenizer_params: float | None) -> str:
    """What a metric row measures, with density metrics split by space: a flow on pixels (no tokenizer) gives
    pixel bits/dim, a flow on a tokenizer's latent gives a latent-space density that is not comparable."""
    if metric.startswith("bits_per_dim") and not metric.startswith(("pixel_", "latent_")):
        space = "pixel" if tokenizer_params == 0 else "latent"
        return f"{space}_{metric}"
    return metric


def _guidance_split(guidance: Any, sampler: Any, protocol: Any, typed: bool = False) -> tuple[float, float]:
    """(guidance scale, flow weight w): exactly one is set when the row has a guidance value."""
    if isnull(guidance):
        return np.nan, np.nan
    g = float(guidance)
    legacy_flow = not typed and isnull(protocol) and key(sampler) in AR_FLOW_SAMPLERS
    return (np.nan, g) if legacy_flow else (g, np.nan)


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """All metric rows of all runs under results_dir (long format: METRIC_FIELDS, extra keys the rows carry,
    RUN_COLUMNS, then derived columns), resumed duplicates reduced to their last row. Raises FileNotFoundError
    when the directory is missing; an empty frame (with the columns) when it holds no rows."""
    runs = {f"{r.suite}/{r.run_id}": r for r in load_runs(results_dir)}
    rows: list[dict] = [row for r in runs.values() for row in _read_rows(r)]
    extras = sorted({k for r in rows for k in r} - set(METRIC_FIELDS) - set(RUN_COLUMNS))
    df = pd.DataFrame(rows, columns=[*METRIC_FIELDS, *extras, *RUN_COLUMNS])
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df = df.sort_values(["run_dir", "line"], kind="stable")
    df = df.drop_duplicates(subset=[*DEDUP_KEY, *extras], keep="last")
    df = df.sort_values(["suite", "run_dir", "line"], kind="stable").reset_index(drop=True)
    info = [runs.get(rd) for rd in df["run_dir"]]
    df["family"] = [r.family(key(b)) if r else key(b) for r, b in zip(info, df["backbone"])]
    tok = [r.tokenizer_params(key(b)) if r else None for r, b in zip(info, df["backbone"])]
    df["quantity"] = [_quantity(key(m), t) for m, t in zip(df["metric"], tok)]
    protocol = df["protocol"] if "protocol" in df.columns else pd.Series(None, index=df.index, dtype=object)
    typed = [bool(r and r.typed_sampler(key(b))) for r, b in zip(info, df["backbone"])]
    split = [_guidance_split(*a) for a in zip(df["guidance"], df["sampler"], protocol, typed)]
    df["cfg_scale"] = [a for a, _ in split]
    df["flow_weight"] = [b for _, b in split]
    return df


def load_kernel_reports(results_dir: str | Path, suite: str) -> list[dict]:
    """Kernel latency files (bench.kernels `--latency --json`, kind genbench.kernels.latency) under
    <results>/<suite>/, sorted by path."""
    out = []
    for p in sorted((Path(results_dir) / suite).rglob("*.json")):
        obj = _read_json(p)
        if obj.get("kind") == "genbench.kernels.latency" and isinstance(obj.get("rows"), list):
            out.append(obj)
    return out


def load_paper_reported(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers (reports/paper_reported.csv by default), read as text: a published number is shown
    exactly as the paper prints it ("2.40", not "2.4")."""
    path = Path(path) if path is not None else DEFAULT_PAPER_CSV
    if not path.is_file():
        raise FileNotFoundError(f"published-numbers file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    bad = df.loc[pd.to_numeric(df["value"], errors="coerce").isna(), "value"].tolist()
    if bad:
        raise ValueError(f"{path}: non-numeric value(s) {bad}")
    if (df["source"].str.strip() == "").any():
        raise ValueError(f"{path}: every row needs a source")
    return df
