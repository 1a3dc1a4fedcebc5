#!/usr/bin/env bash
# One command for a GPU machine (H200, Python 3.12, torch 2.11 + CUDA 13, nvcc,
# pytest-benchmark, no network): install the project without dependencies, build the CUDA
# op, run the CUDA tests, then the GPU benchmarks; JSON, Markdown and a summary go to $OUT.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh
#
# Steps (each under its own time limit; the whole run stays within GPU_CHECK_BUDGET_S,
# default 330 s, skipping what does not fit and saying so):
#   1. pip install --no-deps --no-build-isolation -e .   (GPU_CHECK_SKIP_INSTALL=1 skips it)
#   2. efficientad-fast info --json: JIT-builds the op library (CUDA kernels when a GPU is seen)
#   3. CUDA tests: tests/test_anomaly_map.py and tests/test_inference.py, -k cuda
#   4. efficientad-fast bench: S and M, batch 1 latency (300 warm-up + 1000 timed runs) and
#      batch 16/64 throughput (10 + 50), fp32 and fp16, host and GPU-resident, CUDA graphs
#      off and on; then the fused op vs reference at N 1/16/64, fp32/fp16, with GB/s
#   5. pytest bench --benchmark-only -k cuda (the pytest-benchmark CUDA cases)
#   6. summary.md: build, tests, tables and the targets met or not (bench/gpu_targets.py)
# Without a GPU steps 4-5 are skipped, so the script can be checked end to end on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET_S:-330}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
elapsed() { echo $(( $(date +%s) - START )); }
note() { echo "[gpu_check $(elapsed)s] $*"; echo "- $*" >> "$SUMMARY"; }
left() { echo $(( BUDGET - $(elapsed) )); }
# run_step NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left), logs to $OUT/NAME.log
run_step() {
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(left)
    if (( remaining < 20 )); then note "$name: SKIPPED, out of time budget ($BUDGET s)"; return 99; fi
    (( limit > remaining )) && limit=$remaining
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 5 "$OUT/$name.log"
    if (( rc == 124 || rc == 137 )); then note "$name: TIMED OUT after $limit s (log: $name.log)"
    elif (( rc != 0 )); then note "$name: FAILED, exit $rc (log: $name.log)"
    else note "$name: ok in $(elapsed) s total so far"; fi
    return $rc
}

echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)" >> "$SUMMARY"
HAS_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')" 2>/dev/null)
note "python $("$PY" -c 'import sys; print(sys.version.split()[0])'), torch $("$PY" -c 'import torch; print(torch.__version__)'), GPU: $GPU_NAME"
if [[ "$HAS_GPU" == 1 ]]; then export EFFICIENTAD_FAST_CUDA=1; fi

failed=0
if [[ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]]; then
    run_step install 120 "$PY" -m pip install --no-deps --no-build-isolation -e . || failed=1
fi
run_step build 240 "$PY" -m efficientad_fast info --json || failed=1
cp "$OUT/build.log" "$OUT/info.json" 2>/dev/null
run_step cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_anomaly_map.py tests/test_inference.py \
    -k cuda --junitxml="$OUT/cuda_tests.xml" || failed=1
grep -E "passed|failed|skipped|error" "$OUT/cuda_tests.log" | tail -n 1 | sed 's/^/  tests: /' | tee -a "$SUMMARY"

if [[ "$HAS_GPU" == 1 ]]; then
    run_step bench_latency 120 "$PY" -m efficientad_fast bench --device cuda --model-size small medium \
        --batch-sizes 1 --dtypes fp32 fp16 --paths host device --cuda-graphs both --warmup 300 --runs 1000 \
        --json "$OUT/bench_latency.json" --markdown "$OUT/bench_latency.md" || failed=1
    run_step bench_throughput 150 "$PY" -m efficientad_fast bench --device cuda --model-size small medium \
        --batch-sizes 16 64 --dtypes fp32 fp16 --paths host device --cuda-graphs both --warmup 10 --runs 50 \
        --op --op-batches 1 16 64 \
        --json "$OUT/bench_throughput.json" --markdown "$OUT/bench_throughput.md" || failed=1
    run_step pytest_bench 90 "$PY" -m pytest -q -p no:cacheprovider bench --benchmark-only -k cuda \
        --benchmark-json="$OUT/pytest_bench_cuda.json" || failed=1
else
    note "no CUDA GPU visible: GPU benchmarks skipped"
fi

# Tables and targets from whatever JSON the benchmarks wrote.
"$PY" bench/gpu_targets.py "$OUT" >> "$SUMMARY"
note "finished in $(elapsed) s; exit $failed"
echo "summary: $SUMMARY"
cat "$SUMMARY"
exit $failed
