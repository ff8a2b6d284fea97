#!/usr/bin/env bash
# The accelerator benchmark suite (issue 15): one command, under 8 minutes, one JSON file.
#
#   bash benchmarks/gpu_suite.sh [OUT.json]
#
# Runs, for the paper's CLD-SGM CIFAR-10 model (configs/cld_cifar.py, 107.6M parameters):
#   - the train step at batch 128 in float32 and in bfloat16: examples/s, TFLOP/s from
#     XLA's cost analysis, MFU against the device's peak (lsgm_jax/flops.py);
#   - SSCS sampling at NFE 150 (batch 128) in float32 and bfloat16: images/s;
#   - FID Inception feature extraction at 32x32 and 256x256 input: images/s (FID=0 skips).
# The four parts compile in parallel processes (host work), then time one after another
# under a file lock (benchmarks/gpu_suite.py). Environment overrides, for a quick check
# on a CPU: CONFIG, BATCH, SAMPLE_BATCH, NFE, CALLS, SAMPLE_CALLS, REPEATS, SEQUENTIAL,
# PARTS (e.g. "train:float32").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_JSON="${1:-gpu_suite.json}"
CONFIG="${CONFIG:-configs/cld_cifar.py}"
BATCH="${BATCH:-128}"
SAMPLE_BATCH="${SAMPLE_BATCH:-128}"
NFE="${NFE:-150}"
CALLS="${CALLS:-10}"
SAMPLE_CALLS="${SAMPLE_CALLS:-1}"  # one sampling call is seconds on a GPU
REPEATS="${REPEATS:-3}"
PARTS="${PARTS:-train:float32 train:bfloat16 sample:float32 sample:bfloat16}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
WORK="$(mktemp -d /tmp/gpu_suite.XXXXXX)"
# Four processes share one accelerator: allocate on demand instead of 75% each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1

count=$(wc -w <<<"$PARTS")
[ "${SEQUENTIAL:-0}" = 1 ] && count=1
start=$(date +%s)
pids=()
for spec in $PARTS; do
  part="${spec%%:*}"; dtype="${spec##*:}"
  calls="$CALLS"; [ "$part" = sample ] && calls="$SAMPLE_CALLS"
  "$PYTHON" benchmarks/gpu_suite.py --part="$part" --dtype="$dtype" --config="$CONFIG" \
    --batch="$BATCH" --sample_batch="$SAMPLE_BATCH" --nfe="$NFE" --calls="$calls" \
    --repeats="$REPEATS" --out="$WORK/results.jsonl" --lock="$WORK/device.lock" \
    --barrier="$WORK/compiled" --barrier_count="$count" \
    >"$WORK/${part}_${dtype}.log" 2>&1 &
  pids+=($!)
  # SEQUENTIAL=1: one part at a time (no concurrent GPU autotuning; slower overall).
  if [ "${SEQUENTIAL:-0}" = 1 ]; then wait "$!"; fi
done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
# FID Inception feature throughput (issue 11) after the timed parts, alone on the device.
if [ "${FID:-1}" = 1 ]; then
  "$PYTHON" benchmarks/fid_features.py --sizes=32,256 --batch="${FID_BATCH:-250}" \
    --repeats=3 >"$WORK/fid_features.log" 2>&1 \
    && tail -n 1 "$WORK/fid_features.log" | sed 's/^{/{"part": "fid_features", /' \
       >>"$WORK/results.jsonl"
fi
elapsed=$(( $(date +%s) - start ))

"$PYTHON" - "$WORK/results.jsonl" "$OUT_JSON" "$elapsed" <<'EOF'
import json, platform, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
try:
  gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True,
                       timeout=20).stdout.strip()
except Exception:
  gpu = ""
order = {"train": 0, "sample": 1, "fid_features": 2}
rows.sort(key=lambda r: (order.get(r["part"], 9), r.get("compute_dtype", "")))
summary = {"suite_wall_s": int(sys.argv[3]), "host": platform.node(), "gpu": gpu,
           "results": rows}
json.dump(summary, open(sys.argv[2], "w"), indent=1)
for r in rows:
  keys = ("part", "compute_dtype", "device", "compile_s", "examples_per_s", "steps_per_s",
          "tflops_per_device", "mfu", "error")
  print(" | ".join(f"{k}: {r[k]}" for k in keys if k in r) if r["part"] != "fid_features"
        else json.dumps(r))
print(f"suite wall {sys.argv[3]} s -> {sys.argv[2]}")
EOF
[ -n "${LOG_DIR:-}" ] && cp "$WORK"/*.log "$LOG_DIR"/ 2>/dev/null
for f in "$WORK"/*.log; do
  if grep -q Traceback "$f"; then echo "== $f"; tail -n 25 "$f"; fi
done
