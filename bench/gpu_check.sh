#!/usr/bin/env bash
# One command for a GPU machine (H200, Python 3.12, torch 2.11 + CUDA 13, nvcc,
# pytest-benchmark, no network): install the project without dependencies, build the CUDA
# op, run the CUDA tests, the GPU benchmarks and a memory check; JSON, Markdown, logs and
# summary.md go to $OUT.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh [--budget SECONDS]
#
# The whole run stays within a budget (--budget, else GPU_CHECK_BUDGET_S, default 330 s):
# each step has its own `timeout` (the limits below add up to budget - 35 s, leaving room for
# the probes and the summary), cut further to what is left; a step that no longer fits is
# reported "skipped (budget)", which is not a failure.
#   1. install          pip install --no-deps --no-build-isolation -e .  (GPU_CHECK_SKIP_INSTALL=1 skips)
#   2. build            efficientad-fast info --json: JIT-builds the op library; its JSON goes
#                       to info.json, the compiler's output to build.log. A failed build fails
#                       the run and skips the steps that need the library.
#   2b. ptxas           bench/ptxas_report.py: nvcc -Xptxas -v for sm_90 with the op's build flags
#                       (compile only): registers, stack frame and spills of every kernel to
#                       ptxas.md / ptxas.json (kept in the cache per sources, flags and nvcc);
#                       any stack frame or spill fails the step. Needs nvcc,
#                       not a GPU (skipped, and said so, without a CUDA toolkit; GPU_CHECK_SKIP_PTXAS=1 skips).
#   3. cuda_tests       tests/test_anomaly_map.py, test_inference.py, test_op_layout.py, -k cuda. With a GPU,
#                       a skipped CUDA test, or none run, is a failure (pytest exits 0 then).
#   4. bench_latency    S and M, batch 1, fp16 then fp32
#   5. bench_op         the fused op vs reference at N 64/16/1, features channels_last (the
#                       model's) then NCHW: MB moved, GB/s, fraction of peak beyond the L2 cache;
#                       summary.md gives the target's row (N=64 fp16 channels_last) a labelled line,
#                       with the commit the kernels were built from, to compare runs before and after
#   6. bench_throughput S and M, batch 64 then 16
#      (4-6 run the `budget` timing protocol, efficientad_fast.benchmark.PROTOCOLS: the one
#      definition of warm-up and timed runs; they write their JSON after every measured row,
#      so a step cut by its limit keeps its rows)
#   7. memcheck         compute-sanitizer --tool memcheck over the first CUDA op tests
#   8. pytest_bench     pytest bench --benchmark-only -k cuda (the pytest-benchmark CUDA cases)
#   9. summary.md       every step's status, the tables, and every target of bench/gpu_targets.py
#                       as met / missed / not measured
# Without a GPU steps 4-8 are skipped (and say so), so the script can be checked end to end
# on a CPU (tests/test_gpu_check.py does; it takes about the op's build time, ~1 min on 2 cores).
# EFFICIENTAD_FAST_EXTRA_CFLAGS (efficientad_fast/_build.py) adds C++ flags: an invalid one
# makes the build fail, to check that step 2 reads "build: FAILED".
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET="${GPU_CHECK_BUDGET_S:-330}"
if [[ "${1:-}" == "--budget" && -n "${2:-}" ]]; then BUDGET=$2; shift 2; fi
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
RESERVE=15  # seconds kept back for gpu_targets.py and the summary at the end
MIN_STEP=15  # a step with less time than this left is skipped, not started and killed
# Each step's share of the budget (sum 295 of the default 330), scaled to other budgets.
declare -A SHARE=([install]=15 [build]=80 [ptxas]=35 [cuda_tests]=40 [bench_latency]=36 [bench_op]=22
                  [bench_throughput]=32 [memcheck]=25 [pytest_bench]=10)
elapsed() { echo $(( $(date +%s) - START )); }
note() { echo "[gpu_check $(elapsed)s] $*"; echo "- $*" >> "$SUMMARY"; }
left() { echo $(( BUDGET - RESERVE - $(elapsed) )); }

# run_step NAME [--stdout FILE] COMMAND...: runs COMMAND under `timeout` (its share of the
# budget, cut to what is left); stderr (and stdout unless --stdout) to $OUT/NAME.log.
# Returns COMMAND's status, or 99 when skipped for lack of budget.
run_step() {
    local name=$1; shift
    local stdout="$OUT/$name.log"
    if [[ "$1" == "--stdout" ]]; then stdout=$2; shift 2; fi
    local limit=$(( SHARE[$name] * BUDGET / 330 )) remaining; remaining=$(left)
    if (( remaining < MIN_STEP )); then note "$name: skipped (budget: ${remaining} s left of $BUDGET s)"; return 99; fi
    (( limit > remaining )) && limit=$remaining
    (( limit < MIN_STEP )) && limit=$MIN_STEP
    local t0; t0=$(date +%s)
    # --kill-after stays small: the reserve must cover it.
    timeout --kill-after=5 "$limit" "$@" > "$stdout" 2> "$OUT/$name.log.err"
    local rc=$?
    if [[ "$stdout" == "$OUT/$name.log" ]]; then cat "$OUT/$name.log.err" >> "$stdout"; rm -f "$OUT/$name.log.err"
    else mv "$OUT/$name.log.err" "$OUT/$name.log"; fi
    tail -n 5 "$OUT/$name.log"
    local took=$(( $(date +%s) - t0 ))
    if (( rc == 124 || rc == 137 )); then note "$name: TIMED OUT after $limit s (log: $name.log)"
    elif (( rc != 0 )); then note "$name: FAILED, exit $rc (log: $name.log)"
    else note "$name: ok in $took s"; fi
    return $rc
}

echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ), budget $BUDGET s" >> "$SUMMARY"
# The sources the kernels are built from: runs before and after a change tell apart by it.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")
git diff --quiet HEAD -- csrc 2>/dev/null || COMMIT="$COMMIT+uncommitted csrc changes"
note "sources: commit $COMMIT"
# One probe (torch's import is slow): GPU seen?, GPU name, versions, compute-sanitizer's path.
read -r HAS_GPU GPU_NAME_VERSIONS < <("$PY" - <<'EOF' 2>/dev/null || echo "0 probe failed"
import sys
import torch
gpu = torch.cuda.is_available()
print(int(gpu), f"{torch.cuda.get_device_name() if gpu else 'none'}; python {sys.version.split()[0]}, torch {torch.__version__}")
EOF
)
note "GPU: $GPU_NAME_VERSIONS"
SANITIZER=$(command -v compute-sanitizer || true)
if [[ -z "$SANITIZER" ]]; then
    SANITIZER=$("$PY" -c "from efficientad_fast.op._build import find_cuda_home as f; h = f(); print(h / 'bin' / 'compute-sanitizer' if h else '')" 2>/dev/null)
    [[ -n "$SANITIZER" && -x "$SANITIZER" ]] || SANITIZER=""
fi
if [[ "$HAS_GPU" == 1 ]]; then export EFFICIENTAD_FAST_CUDA=1
else SHARE[build]=200; SHARE[cuda_tests]=75; SHARE[ptxas]=60; fi  # no GPU: steps 4-8 will not run, so these may take their time
[[ -n "${EFFICIENTAD_FAST_EXTRA_CFLAGS:-}" ]] && note "EFFICIENTAD_FAST_EXTRA_CFLAGS=$EFFICIENTAD_FAST_EXTRA_CFLAGS"

failed=0
if [[ "${GPU_CHECK_SKIP_INSTALL:-0}" == 1 ]]; then
    note "install: skipped (GPU_CHECK_SKIP_INSTALL=1)"
else
    run_step install "$PY" -m pip install --no-deps --no-build-isolation -e .
    rc=$?; (( rc != 0 && rc != 99 )) && failed=1
fi

# The JSON goes to its own file, the compiler's noise to build.log; info exits 1 when the
# library fails to build, so a broken build reads "FAILED" here.
run_step build --stdout "$OUT/info.json" "$PY" -m efficientad_fast info --json
rc=$?; build_ok=0
case $rc in 0) build_ok=1 ;; 99) ;; *) failed=1 ;; esac
if (( rc != 0 && rc != 99 )); then  # the reason in one line: info.json's "build", else build.log's end
    why=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('build', '?').removeprefix('FAILED: ').splitlines()[0])" \
          "$OUT/info.json" 2>/dev/null || grep -m 1 -iE "error|what\(\)" "$OUT/build.log")
    note "build error: ${why:0:300}"
fi

# The compiler's register/stack/spill report of every kernel (nvcc only): ptxas.md, ptxas.json.
if [[ "${GPU_CHECK_SKIP_PTXAS:-0}" == 1 ]]; then
    note "ptxas: skipped (GPU_CHECK_SKIP_PTXAS=1)"
elif ! "$PY" -c "import sys; from efficientad_fast.op._build import find_cuda_home; sys.exit(find_cuda_home() is None)" 2>/dev/null; then
    note "ptxas: skipped (no CUDA toolkit found: the report needs nvcc)"
else
    run_step ptxas "$PY" bench/ptxas_report.py "$OUT"
    rc=$?
    (( rc != 0 && rc != 99 )) && failed=1
    [[ -f "$OUT/ptxas.md" ]] && note "ptxas: $(tail -n 1 "$OUT/ptxas.md") (table: ptxas.md)"
fi

# cuda_tests and memcheck: with a GPU, any skipped CUDA test, or none run, fails the step.
check_junit() {  # check_junit NAME XML
    local tests skipped unexpected failures errors
    read -r tests skipped unexpected failures errors < <("$PY" bench/gpu_targets.py --junit "$2")
    note "$1: $tests collected, $skipped skipped ($unexpected of them would fail with a GPU), $failures failed, $errors errors"
    if [[ "$HAS_GPU" == 1 ]] && (( tests - skipped == 0 || unexpected > 0 )); then
        note "$1: FAILED, a GPU is visible but $unexpected CUDA tests were skipped, $(( tests - skipped )) ran (see $1.log, -rs)"
        return 1
    fi
}
if (( ! build_ok )); then
    note "cuda_tests: skipped (build not ok)"
else
    run_step cuda_tests "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_anomaly_map.py tests/test_inference.py \
        tests/test_op_layout.py -k cuda --junitxml="$OUT/cuda_tests.xml"
    rc=$?
    if (( rc != 99 )); then
        (( rc != 0 )) && failed=1
        check_junit cuda_tests "$OUT/cuda_tests.xml" || failed=1
        [[ "$HAS_GPU" != 1 ]] && note "cuda_tests: no GPU visible, so the CUDA tests skip (expected here)"
    fi
fi

GPU_STEPS="bench_latency bench_op bench_throughput memcheck pytest_bench"
if [[ "$HAS_GPU" != 1 ]]; then
    note "no CUDA GPU visible: GPU benchmarks skipped; steps skipped (no GPU): ${GPU_STEPS// /, }"
elif (( ! build_ok )); then
    note "GPU steps skipped (build not ok): ${GPU_STEPS// /, }"
else
    bench=("$PY" -m efficientad_fast bench --device cuda --protocol budget)  # an array: `timeout` cannot run a function
    # Target configurations first (fp16, device path), so a step cut short has measured them.
    run_step bench_latency "${bench[@]}" --model-size small medium --batch-sizes 1 --dtypes fp16 fp32 \
        --paths device host --cuda-graphs both \
        --json "$OUT/bench_latency.json" --markdown "$OUT/bench_latency.md"
    rc=$?; (( rc != 0 && rc != 99 )) && failed=1
    # One batch-1 configuration by the same protocol (the bench command needs a grid), then the op.
    run_step bench_op "${bench[@]}" --model-size small --batch-sizes 1 --dtypes fp16 --paths device --cuda-graphs on \
        --op --op-batches 64 16 1 --op-layouts channels_last nchw \
        --json "$OUT/bench_op.json" --markdown "$OUT/bench_op.md"
    rc=$?; (( rc != 0 && rc != 99 )) && failed=1
    run_step bench_throughput "${bench[@]}" --model-size small medium --batch-sizes 64 16 --dtypes fp16 fp32 \
        --paths device host --cuda-graphs both \
        --json "$OUT/bench_throughput.json" --markdown "$OUT/bench_throughput.md"
    rc=$?; (( rc != 0 && rc != 99 )) && failed=1

    if [[ -z "$SANITIZER" ]]; then
        note "memcheck: skipped (compute-sanitizer not found on PATH or in the CUDA toolkit)"
    else
        # A few op tests only: memcheck slows CUDA down ~100x. No caching allocator, so
        # out-of-bounds accesses are not hidden inside torch's pooled blocks.
        # An array: test ids hold [...] that an unquoted word would glob.
        mapfile -t ids < <(timeout 60 "$PY" -m pytest -q --co -p no:cacheprovider tests/test_anomaly_map.py -k cuda \
                           2>/dev/null | grep '::' | head -n 4)
        if (( ${#ids[@]} == 0 )); then
            note "memcheck: FAILED, no CUDA op tests collected"; failed=1
        else
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step memcheck "$SANITIZER" --tool memcheck --error-exitcode 86 \
                --target-processes all "$PY" -m pytest -q -rs -p no:cacheprovider "${ids[@]}" \
                --junitxml="$OUT/memcheck.xml"
            rc=$?
            if (( rc != 99 )); then
                (( rc != 0 )) && failed=1
                check_junit memcheck "$OUT/memcheck.xml" || failed=1
                grep -E "ERROR SUMMARY" "$OUT/memcheck.log" | tail -n 1 | sed 's/^/memcheck: /' | tee -a "$SUMMARY"
            fi
        fi
    fi
    run_step pytest_bench "$PY" -m pytest -q -p no:cacheprovider bench --benchmark-only -k cuda \
        --benchmark-json="$OUT/pytest_bench_cuda.json"
    rc=$?; (( rc != 0 && rc != 99 )) && failed=1
fi

# Tables and every target's status from whatever JSON the benchmarks wrote.
"$PY" bench/gpu_targets.py "$OUT" --commit "$COMMIT" >> "$SUMMARY" 2>> "$OUT/gpu_targets.log" || note "gpu_targets.py: FAILED (log: gpu_targets.log)"
note "finished in $(elapsed) s of a $BUDGET s budget; exit $failed"
echo "summary: $SUMMARY"
cat "$SUMMARY"
exit $failed
