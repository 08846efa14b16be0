"""Parity with the official implementations: `python -m baselines.parity CASE_DIR [CASE_DIR ...]`.

A case directory (made by running the official code, see DESIGN.md "Parity") holds `config.json` (family,
official kwargs, calls with tolerances), `weights.safetensors` (the official state_dict) and `io.safetensors`
(inputs and expected outputs). For each case we build our model from the official kwargs, load the weights
with strict=True, run every listed call and print `CASE CALL max_abs_err=... tol=... ok|FAIL`.
Exit status: 0 when every call of every case passes; 1 otherwise (a failing, erroring or unknown call).

Each family adapter (baselines/parity/<family>.py) provides `parity_model(kwargs) -> nn.Module` and
`PARITY_CALLS`, a dict call name -> fn(model, io, call, config) -> {output name: tensor}.

`golden_root()` and `load_case()` are the one way every caller (tests, tasks, studies) finds and reads golden data.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

# config.json "family" -> adapter module
FAMILIES = {
    "REPA": "baselines.parity.repa",
    "lightningdit": "baselines.parity.lightningdit",
    "vavae": "baselines.parity.vavae",
    "normalizing_flow/tarflow": "baselines.parity.tarflow",
    "normalizing_flow/starflow": "baselines.parity.starflow",
}
CASE_FILES = ("config.json", "weights.safetensors", "io.safetensors")


def golden_root() -> Path | None:
    """Golden parity data: $GENBENCH_GOLDEN, else ../shared/golden beside the checkout (never copied in).
    None when neither exists."""
    env = os.environ.get("GENBENCH_GOLDEN")
    checkout = Path(__file__).resolve().parents[2]
    for cand in ([Path(env)] if env else []) + [checkout.parent / "shared" / "golden"]:
        if cand.is_dir():
            return cand
    return None


def golden_cases(root: Path | None = None) -> list[Path]:
    """Every case directory (one holding a config.json) under `root` (default: golden_root()), sorted."""
    root = golden_root() if root is None else Path(root)
    if root is None or not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "config.json").is_file())


@dataclass
class Case:
    name: str
    dir: Path
    config: dict[str, Any]
    io: dict[str, torch.Tensor]

    @property
    def family(self) -> str | None:
        return self.config.get("family")


def missing_files(case_dir: Path) -> list[str]:
    return [f for f in CASE_FILES if not (Path(case_dir) / f).is_file()]


def adapter(family: str):
    """The parity adapter module of a config.json family (ValueError naming the known ones)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[family])


def load_case(case_dir: Path | str, model: bool = True) -> tuple[Case, torch.nn.Module | None]:
    """Read a case directory -> (Case, our model built from the official kwargs with the official weights loaded
    strictly, in eval mode; None when model=False). The torch seed is set to the case's seed first."""
    case_dir = Path(case_dir)
    missing = missing_files(case_dir)
    if missing:
        raise FileNotFoundError(f"{case_dir}: missing {', '.join(missing)}")
    config = json.loads((case_dir / "config.json").read_text())
    case = Case(case_dir.name, case_dir, config, load_file(str(case_dir / "io.safetensors")))
    if not model:
        return case, None
    torch.manual_seed(int(config.get("seed", 0)))
    net = adapter(case.family).parity_model(config["kwargs"])
    net.load_state_dict(load_file(str(case_dir / "weights.safetensors")), strict=True)
    return case, net.eval()


def _tolerance(call: dict) -> tuple[float, float]:
    tol = call.get("tolerance", {})
    return float(tol.get("atol", 1e-5)), float(tol.get("rtol", 1e-5))


def compare(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> tuple[float, bool]:
    """max |got - want| and whether |got - want| <= atol + rtol |want| holds everywhere (shapes must match)."""
    got = torch.as_tensor(got).detach().double().cpu()
    want = want.double()
    if got.numel() == want.numel() and got.shape != want.shape:
        got = got.reshape(want.shape)  # 0-dim vs [1] scalars
    if got.shape != want.shape:
        return float("inf"), False
    err = (got - want).abs()
    ok = bool(torch.isfinite(got).all()) and bool((err <= atol + rtol * want.abs()).all())
    return float(err.max()) if err.numel() else 0.0, ok


def run_case(case_dir: Path, out=print) -> bool:
    case_dir = Path(case_dir)
    case = case_dir.name
    family = json.loads((case_dir / "config.json").read_text()).get("family")
    if family not in FAMILIES:
        out(f"{case} - unknown family {family!r} (known: {', '.join(FAMILIES)}) FAIL")
        return False
    module = adapter(family)
    loaded, model = load_case(case_dir)
    config, io = loaded.config, loaded.io
    all_ok = True
    for call in config["calls"]:
        name = call["name"]
        atol, rtol = _tolerance(call)
        fn = module.PARITY_CALLS.get(name)
        if fn is None:
            out(f"{case} {name} max_abs_err=nan tol={atol:g} unknown call FAIL")
            all_ok = False
            continue
        try:
            got = fn(model, io, call, config)
        except Exception:  # report the traceback and go on with the other calls; the exit code says FAIL
            out(f"{case} {name} max_abs_err=nan tol={atol:g} error FAIL\n{traceback.format_exc()}")
            all_ok = False
            continue
        worst, ok = 0.0, True
        for key in call["outputs"]:
            if key not in got:
                out(f"{case} {name} output {key!r} not produced FAIL")
                ok = False
                continue
            err, key_ok = compare(got[key], io[key], atol, rtol)
            worst, ok = max(worst, err), ok and key_ok
        out(f"{case} {name} max_abs_err={worst:.3e} tol={atol:g} {'ok' if ok else 'FAIL'}")
        all_ok &= ok
    return all_ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baselines.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", type=Path, help="golden case directories")
    args = p.parse_args(argv)
    ok = True
    for case_dir in args.cases:
        missing = missing_files(case_dir)
        if missing:
            print(f"{case_dir.name} - missing {', '.join(missing)} in {case_dir} FAIL")
            ok = False
            continue
        ok &= run_case(case_dir)
    return 0 if ok else 1
