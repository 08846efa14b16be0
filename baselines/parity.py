"""Parity with the official implementations: `python -m baselines.parity CASE_DIR [CASE_DIR ...]`.

A case directory (made by running the official code, see DESIGN.md "Parity") holds `config.json` (family,
official kwargs, calls with tolerances), `weights.safetensors` (the official state_dict) and `io.safetensors`
(inputs and expected outputs). For each case we build our model from the official kwargs, load the weights
with strict=True, run every listed call and print `CASE CALL max_abs_err=... tol=... ok|FAIL`.
Exit status: 0 when every call of every case passes; 1 otherwise (a failing, erroring or unknown call).

Each family module provides `parity_model(kwargs) -> nn.Module` and `PARITY_CALLS`, a dict
call name -> fn(model, io, call, config) -> {output name: tensor}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file

# config.json "family" -> module implementing it
FAMILIES = {
    "REPA": "baselines.repa",
    "lightningdit": "baselines.lightningdit",
    "vavae": "baselines.vavae",
    "normalizing_flow/tarflow": "baselines.tarflow",
    "normalizing_flow/starflow": "baselines.starflow",
}


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
    case = case_dir.name
    config = json.loads((case_dir / "config.json").read_text())
    family = config.get("family")
    if family not in FAMILIES:
        out(f"{case} - unknown family {family!r} (known: {', '.join(FAMILIES)}) FAIL")
        return False
    module = importlib.import_module(FAMILIES[family])
    torch.manual_seed(int(config.get("seed", 0)))
    model = module.parity_model(config["kwargs"])
    model.load_state_dict(load_file(str(case_dir / "weights.safetensors")), strict=True)
    model.eval()
    io = load_file(str(case_dir / "io.safetensors"))
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
        missing = [
            f
            for f in ("config.json", "weights.safetensors", "io.safetensors")
            if not (case_dir / f).is_file()
        ]
        if missing:
            print(f"{case_dir.name} - missing {', '.join(missing)} in {case_dir} FAIL")
            ok = False
            continue
        ok &= run_case(case_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
