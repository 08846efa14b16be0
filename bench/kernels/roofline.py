"""What a GPU can do, measured in the same run and from its datasheet: copy bandwidth (memory-bound ops),
dense matmul peak (compute-bound ops, MFU). Shared by the kernel latency and the throughput suite."""

from __future__ import annotations

import re
import time

import torch

from bench.kernels.common import median

# Datasheet dense (no sparsity) bf16 tensor-core peaks in TFLOP/s and HBM bandwidth in TB/s (NVIDIA product
# pages / whitepapers). H800 SXM has H100 SXM's compute (its cut is NVLink), so 989.4 as well.
DATASHEET = {
    "H200": {"bf16_tflops": 989.4, "hbm_tbps": 4.8},
    "H100 SXM": {"bf16_tflops": 989.4, "hbm_tbps": 3.35},
    "H100 NVL": {"bf16_tflops": 835.5, "hbm_tbps": 3.9},
    "H100 PCIE": {"bf16_tflops": 756.5, "hbm_tbps": 2.0},
    "H800": {"bf16_tflops": 989.4, "hbm_tbps": 3.35},
    "A100": {"bf16_tflops": 312.0, "hbm_tbps": 2.0},
}


def datasheet(name: str) -> dict | None:
    """The datasheet entry for a CUDA device name ('NVIDIA H100 80GB HBM3' -> H100 SXM), or None."""
    n = name.upper()
    if "H200" in n:
        return DATASHEET["H200"]
    if "H100" in n:
        return DATASHEET["H100 PCIE" if "PCIE" in n else "H100 NVL" if "NVL" in n else "H100 SXM"]
    if "H800" in n:
        return DATASHEET["H800"]
    if "A100" in n:
        return DATASHEET["A100"]
    return None


def timer_all(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> list[float]:
    """All per-call timings (ms). CUDA: triton.testing.do_bench (L2 flushed before each call). CPU (tests,
    dry runs at tiny shapes): wall clock of at least 3 calls."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return list(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
    fn()
    out, t_end = [], time.perf_counter() + rep_ms * 1e-3
    while len(out) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def device_roofline(device: torch.device, quick: bool = False) -> dict:
    """Measured copy bandwidth (bytes/s: read + write of a buffer far beyond L2, so DRAM) and matmul peaks
    (flop/s; fp32 without TF32, since the fp32 kernels use no tensor cores). `quick`: smaller buffers and
    fewer repeats (a budgeted run); on CPU always small (dry runs)."""
    cpu = device.type != "cuda"
    n = 1 << (20 if cpu else 26 if quick else 28)
    m = 256 if cpu else 8192
    rep = 20 if cpu else 150 if quick else 500
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    out = {"copy_bandwidth": 2 * n * 4 / (median(timer_all(lambda: dst.copy_(src), device, 10, rep)) * 1e-3)}
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(m, m, device=device, dtype=dtype)
            b = torch.randn(m, m, device=device, dtype=dtype)
            t = median(timer_all(lambda a=a, b=b: a @ b, device, 10, rep))
            out[f"peak_flops_{name}"] = 2 * m**3 / (t * 1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    name = torch.cuda.get_device_properties(device).name if device.type == "cuda" else "cpu"
    sheet = datasheet(name)
    out["device"] = name
    out["datasheet_bf16_flops"] = sheet["bf16_tflops"] * 1e12 if sheet else None
    out["datasheet_hbm_bandwidth"] = sheet["hbm_tbps"] * 1e12 if sheet else None
    return out


def slug(name: str) -> str:
    m = re.search(r"(H100|H200|H800|A100|B200|L40S?)", name.upper())
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
