#!/usr/bin/env bash
# All of issue #17's GPU measurement in one budgeted run (about 6.5 min, at most 8 with every timeout hit, on
# one H100/H200, so that start-up plus one rerun fit in 15 minutes of GPU time):
#   1. preflight (fail fast): CUDA, versions, the Python packages the steps need;
#   2. Triton kernel latency vs eager and torch.compile at paper shapes (bf16), % of copy bandwidth / peak,
#      goals per row        -> reports/kernels/latency_<gpu>.{json,md}, latency_<gpu>_speedup.{png,pdf}
#   3. imagenet256-throughput at paper size, random weights: training img/s eager + compiled, MFU, sampling
#      sweep (one full paper sampler call + decode per batch size), STARFlow sequential vs Jacobi, goals
#                           -> reports/imagenet256-throughput/throughput.{json,md,png,pdf}
# Every step has its own time budget and timeout; rows are written as they are measured, and a killed step's
# partial rows still become tables. Exit status: 0 all steps ran and no measurement failed, 1 otherwise,
# 2 preflight failed.
#
#   bash scripts/gpu_check.sh                        # on the GPU machine, from the repository root
#   GENBENCH_GPU_CHECK_DRY=1 bash scripts/gpu_check.sh   # CPU dry run at tiny sizes (outputs under /tmp)
#
# Knobs (env): GENBENCH_GPU_CHECK_KERNELS_S (default 90), GENBENCH_GPU_CHECK_THROUGHPUT_S (270),
# GENBENCH_GPU_CHECK_BATCHES (1,16,64), GENBENCH_GPU_CHECK_BACKBONES (priority order),
# GENBENCH_GPU_CHECK_KERNEL_ARGS (extra kernels --latency arguments), GENBENCH_GPU_CHECK_OUT (where reports/ go;
# on the project's device machine: $OUT, so they come back), GENBENCH_GPU_CHECK_RESULTS, PYTHON (python).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
DRY=${GENBENCH_GPU_CHECK_DRY:-0}
T_START=$(date +%s)
BACKBONES=${GENBENCH_GPU_CHECK_BACKBONES:-vavae_lightningdit,repa,fae,starflow,tarflow}

if [ "$DRY" = 1 ]; then
  # CPU: tiny shapes, the Triton side in its interpreter; never writes into reports/ (no CPU numbers there).
  OUT=${GENBENCH_GPU_CHECK_OUT:-/tmp/genbench-gpu-check-dry}
  REPORT_KERNELS=$OUT/reports/kernels
  REPORT_THROUGHPUT=$OUT/reports/imagenet256-throughput
  RESULTS=$OUT/results
  DEVICE=cpu
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  KERNEL_ARGS=(--device cpu --shapes tiny --dtypes fp32 --only 'swiglu/*' --only 'affine_inverse/*' --rep-ms 5)
  THROUGHPUT_ARGS=(--device cpu --preset tiny --batch-sizes 1,2 --compile off --train-steps 1 --sampler-steps 4
                   --jacobi-batch 2)
  KERNELS_S=${GENBENCH_GPU_CHECK_KERNELS_S:-600}
  THROUGHPUT_S=${GENBENCH_GPU_CHECK_THROUGHPUT_S:-900}
else
  OUT=${GENBENCH_GPU_CHECK_OUT:-.}
  REPORT_KERNELS=$OUT/reports/kernels
  REPORT_THROUGHPUT=$OUT/reports/imagenet256-throughput
  RESULTS=${GENBENCH_GPU_CHECK_RESULTS:-/tmp/genbench-results}
  DEVICE=cuda
  KERNEL_ARGS=(--device cuda --shapes paper --dtypes bf16 --rep-ms 40)
  THROUGHPUT_ARGS=(--device cuda --preset paper --batch-sizes "${GENBENCH_GPU_CHECK_BATCHES:-1,16,64}"
                   --compile both --train-steps 4 --jacobi-batch 4)
  KERNELS_S=${GENBENCH_GPU_CHECK_KERNELS_S:-90}
  THROUGHPUT_S=${GENBENCH_GPU_CHECK_THROUGHPUT_S:-270}
fi
# extra arguments for the kernel step (e.g. --no-compile in CI's dry run)
read -r -a EXTRA_KERNEL_ARGS <<< "${GENBENCH_GPU_CHECK_KERNEL_ARGS:-}"
KERNEL_ARGS+=("${EXTRA_KERNEL_ARGS[@]}")
mkdir -p "$REPORT_KERNELS" "$REPORT_THROUGHPUT" "$RESULTS" || { echo "error: cannot create output dirs under $OUT"; exit 2; }
LOG=$REPORT_THROUGHPUT/gpu_check.log
: > "$LOG"
say() { echo "[gpu_check +$(( $(date +%s) - T_START ))s] $*" | tee -a "$LOG"; }
STATUS=0

# --- 1. preflight: fail fast, before any measurement ---------------------------------------------------------
say "preflight (dry=$DRY, device=$DEVICE)"
GPU_SLUG=$("$PY" - "$DEVICE" <<'EOF' 2>>"$LOG"
import importlib, sys
device = sys.argv[1]
missing = []
for mod in ("torch", "triton", "tabulate", "matplotlib", "timm", "safetensors", "scipy"):
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(mod)
if "torch" in missing or "triton" in missing:
    sys.exit(f"error: torch and triton are required (missing: {', '.join(missing)})")
import torch, triton
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible (torch.cuda.is_available() is False); nothing to measure")
    p = torch.cuda.get_device_properties(0)
    name = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
else:
    name = "cpu (dry run)"
print(f"device {name}; torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}",
      file=sys.stderr)
if missing:  # tables still come (fallbacks); the families that need timm (DINOv2) fail alone, recorded
    print(f"warning: missing packages {', '.join(missing)}: plots (matplotlib) / DINOv2 encoders (timm) "
          "are skipped or fail per row", file=sys.stderr)
from bench.kernels.roofline import slug
print(slug(torch.cuda.get_device_properties(0).name) if device == "cuda" else "cpu")
EOF
)
PRE=$?
grep -v '^\[gpu_check' "$LOG" | tail -n 3
if [ $PRE -ne 0 ] || [ -z "$GPU_SLUG" ]; then
  say "preflight FAILED (see above); no measurement was made"
  exit 2
fi
KERNELS_JSON=$REPORT_KERNELS/latency_${GPU_SLUG}.json

# --- 2. Triton kernel latency -------------------------------------------------------------------------------
say "kernels: latency (${KERNEL_ARGS[*]}), budget ${KERNELS_S}s -> $KERNELS_JSON"
timeout --signal=TERM --kill-after=20 $((KERNELS_S + 40)) \
  "$PY" -m bench.kernels --latency "${KERNEL_ARGS[@]}" --budget-s "$KERNELS_S" --json "$KERNELS_JSON" \
  > "$REPORT_KERNELS/latency_${GPU_SLUG}.stdout" 2>>"$LOG"
RC=$?
say "kernels: exit $RC"
if [ $RC -ne 0 ]; then STATUS=1; fi
if [ $RC -ge 124 ] && [ -f "$KERNELS_JSON" ]; then  # killed: the partial JSON (written per row) still gets a table
  "$PY" -c "import json,sys; from pathlib import Path; from bench.kernels.latency import latency_markdown as m
p=Path(sys.argv[1]); p.with_suffix('.md').write_text(m(json.loads(p.read_text()), 'scripts/gpu_check.sh (killed: partial)'))" \
    "$KERNELS_JSON" 2>>"$LOG" && say "kernels: partial table written"
fi

# --- 3. imagenet256-throughput --------------------------------------------------------------------------------
RUN_ID=gpu-check-$(date +%Y%m%d-%H%M%S)
RUN_DIR=$RESULTS/imagenet256-throughput/$RUN_ID
say "throughput: $BACKBONES, budget ${THROUGHPUT_S}s -> $RUN_DIR"
timeout --signal=TERM --kill-after=20 $((THROUGHPUT_S + 60)) \
  "$PY" -m bench.throughput "${THROUGHPUT_ARGS[@]}" --backbones "$BACKBONES" --budget-s "$THROUGHPUT_S" \
  --out "$RESULTS" --run-id "$RUN_ID" --report-dir "$REPORT_THROUGHPUT" --kernels-json "$KERNELS_JSON" \
  >>"$LOG" 2>&1
RC=$?
say "throughput: exit $RC"
if [ $RC -ne 0 ]; then STATUS=1; fi
if [ $RC -ge 124 ]; then  # killed: tables from the rows it wrote
  "$PY" -m bench.throughput_report "$RUN_DIR" --out "$REPORT_THROUGHPUT" --kernels-json "$KERNELS_JSON" \
    --command "scripts/gpu_check.sh (killed after ${THROUGHPUT_S}s: partial)" >>"$LOG" 2>&1 \
    && say "throughput: partial tables written"
fi
cp "$RUN_DIR/throughput.jsonl" "$REPORT_THROUGHPUT/throughput_rows.jsonl" 2>/dev/null

# --- summary ------------------------------------------------------------------------------------------------
say "done in $(( $(date +%s) - T_START ))s, status $STATUS"
for f in "$REPORT_THROUGHPUT/throughput.md"; do
  [ -f "$f" ] && sed -n '/^## Goals/,$p' "$f" | tee -a "$LOG"
done
ls -la "$REPORT_KERNELS" "$REPORT_THROUGHPUT" | tee -a "$LOG"
exit $STATUS
