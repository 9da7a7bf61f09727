#!/usr/bin/env bash
# The GPU checks of issue F in one device call (<= 8 min), from the repo root on the lent GPU machine:
#   run(command="bash benchmarks/gpu/run_on_gpu.sh", carry=[".gpu"], timeout_s=540)
# Before, on the CPU machine: bash ../shared/gpu/prepare.sh && cp -r ../shared/data/assistant-axis .gpu/
# Writes to $OUT: log.txt (summary), placement-tests.txt, gpu-decode-tests.txt, plugin-smoke.txt, bench.txt, results-gpu.json,
# pytest-benchmark.json. Copy $OUT/results-gpu.json to benchmarks/results-gpu.json and fill docs/gpu.md.
set -u
ROOT=$PWD
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$ROOT/.gpu/site:$ROOT DRIFT_GPU_BENCH_TOKENIZER=$ROOT/.gpu/tok DRIFT_DEMO_MODEL=$ROOT/.gpu/tok
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"; W=$(mktemp -d)
export DRIFT_GPU_BENCH_RESULTS=$OUT/results-gpu.json
LOG=$OUT/log.txt
START=$(date +%s)
step() {  # step SECONDS NAME FILE CMD...
  local limit=$1 name=$2 file=$3; shift 3
  echo "== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s)" | tee -a "$LOG"
  timeout "$limit" "$@" > "$OUT/$file" 2>&1; local rc=$?
  tail -n 12 "$OUT/$file" | tee -a "$LOG"
  echo "   rc=$rc" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
[ -d .gpu/tok ] || { echo "no .gpu/tok: run bash ../shared/gpu/prepare.sh on the CPU machine and carry .gpu" | tee -a "$LOG"; exit 2; }

# 1. The resolver, loading and the cross-dtype policy with CUDA present (the no-CUDA tests skip here).
step 60 placement-tests placement-tests.txt python -m pytest tests/test_placement.py -q -p no:cacheprovider

# 2. The CUDA-graph decoder on real CUDA: the same answers and means as the growing cache on every family (fp32).
step 90 gpu-decode-tests gpu-decode-tests.txt python -m pytest tests/test_gpu_decode.py -q -p no:cacheprovider

# 3. Acceptance: `pytest suites/ --checkpoint DIR` measures on the GPU in bf16 with no extra flag, and says so.
python - "$W/m" <<'PY' > "$OUT/make-model.txt" 2>&1
import sys, torch
from benchmarks.gpu.shapes import make_model, load_tokenizer, tokenizer_dir
source = tokenizer_dir()
make_model("135m", torch.float32, "cpu", source).save_pretrained(sys.argv[1])
load_tokenizer(source).save_pretrained(sys.argv[1])
PY
step 100 plugin-smoke plugin-smoke.txt python -m pytest suites/ -q -p no:cacheprovider --checkpoint "$W/m" \
  --update-baselines --baseline-dir "$W/b" --drift-report "$OUT/report.html" --no-drift-cache
grep -h "measured on\|decoder" "$OUT/plugin-smoke.txt" | tee -a "$LOG"

# 4. The benchmark: speed per shape and dtype, --thorough and the 275-role set on 8B, fp32 GPU == CPU.
step 300 gpu-benchmark bench.txt python -m pytest benchmarks/gpu -m gpu -p no:cacheprovider -q \
  --benchmark-json "$OUT/pytest-benchmark.json"
echo "total $(( $(date +%s) - START ))s" | tee -a "$LOG"
