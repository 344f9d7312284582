#!/usr/bin/env bash
# One-shot check on a bare GPU machine (H100/H200), run from the repository root without
# installing anything:
#   bash benchmarks/gpu_check.sh           the GPU tests only: under 5 minutes in all
#   bash benchmarks/gpu_check.sh --bench   then the benchmarks too (or GPU_CHECK_BENCH=1)
# Mandatory steps (each under its own time limit; the limits, kill grace included, add up
# to under 5 minutes):
#   env           python / torch / triton / GPU versions
#   gpu-kernels   tests/gpu/test_kernels_gpu.py (Triton against the torch reference)
#   gpu-engine    the rest of tests/gpu (engine on CUDA, CUDA graphs)
# Only tests/gpu is collected: the other test modules import packages the GPU image lacks
# (PySide6, openai). Without pytest, the kernel checks run as a script.
# Optional (--bench), another ~4.5 minutes: benchmarks/kernels.py --quick and
# benchmarks/throughput.py --gpu.
# Logs go to $GPU_CHECK_LOGS (default: $OUT/gpu_check when $OUT is set, else
# /tmp/gpu_check). A short table of the steps comes last. Exit status: 0 when every step
# that ran passed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels, never the interpreter, here
PY="${PYTHON:-$(command -v python3 || command -v python)}"
LOGS="${GPU_CHECK_LOGS:-${OUT:+$OUT/gpu_check}}"
LOGS="${LOGS:-/tmp/gpu_check}"
mkdir -p "$LOGS"

BENCH=${GPU_CHECK_BENCH:-0}
for arg in "$@"; do
    case $arg in
        --bench) BENCH=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--bench]" >&2; exit 2 ;;
    esac
done

# Per-step limits (seconds); `timeout -k 5` may add 5 s to each: 40 + 140 + 100 + 3 x 5 = 295.
# (A cold first `import torch` alone can take 10-20 s.)
T_ENV=${T_ENV:-40}
T_KERNELS=${T_KERNELS:-140}
T_ENGINE=${T_ENGINE:-100}
T_BENCH=${T_BENCH:-110}
T_THROUGHPUT=${T_THROUGHPUT:-150}

declare -a ROWS=()
FAILED=0

# run NAME LIMIT_S LOGFILE CMD...: runs CMD under a time limit, records status and time
run() {
    local name=$1 limit=$2 log=$3
    shift 3
    local start end rc status
    start=$(date +%s)
    echo "=== $name (limit ${limit}s): $*"
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s)
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT" ; FAILED=1 ;;
        *) status="FAILED($rc)" ; FAILED=1 ;;
    esac
    ROWS+=("$(printf '%-14s %-12s %5ss  %s' "$name" "$status" "$((end - start))" "$(summary_of "$name" "$log")")")
}

summary_of() {
    case $1 in
        gpu-*) grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran|all passed|[0-9]+ failed$" "$2" | tail -1 | cut -c1-90 ;;
        *) tail -1 "$2" | cut -c1-90 ;;
    esac
}

run env "$T_ENV" "$LOGS/env.txt" "$PY" -c '
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, end=" ")
try:
    import triton; print("triton", triton.__version__, end=" ")
except ImportError:
    print("triton MISSING", end=" ")
ok = torch.cuda.is_available()
print("cuda", ok, torch.cuda.get_device_name() if ok else "", "x%d" % torch.cuda.device_count())
'

PYTEST=("$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider)
if "$PY" -c "import pytest" 2>/dev/null; then
    run gpu-kernels "$T_KERNELS" "$LOGS/kernels_tests.log" "${PYTEST[@]}" tests/gpu/test_kernels_gpu.py
    run gpu-engine "$T_ENGINE" "$LOGS/engine_tests.log" \
        "${PYTEST[@]}" tests/gpu --ignore=tests/gpu/test_kernels_gpu.py
else
    run gpu-kernels-nopytest "$T_KERNELS" "$LOGS/kernels_tests.log" "$PY" tests/gpu/test_kernels_gpu.py
    ROWS+=("$(printf '%-14s %-12s %5ss  %s' gpu-engine skipped 0 "no pytest: the engine GPU tests need it")")
fi

if [ "$BENCH" = 1 ]; then
    run kernel-bench "$T_BENCH" "$LOGS/kernels.log" \
        "$PY" benchmarks/kernels.py --quick --summary "$LOGS/kernels_table.txt"
    if [ -f benchmarks/throughput.py ]; then
        run throughput "$T_THROUGHPUT" "$LOGS/throughput.log" "$PY" benchmarks/throughput.py --gpu
    else
        ROWS+=("$(printf '%-14s %-12s %5ss  %s' throughput skipped 0 "benchmarks/throughput.py not found")")
    fi
else
    ROWS+=("$(printf '%-14s %-12s %5ss  %s' benchmarks skipped 0 "run with --bench (or GPU_CHECK_BENCH=1)")")
fi

echo
if [ -s "$LOGS/kernels_table.txt" ] && [ "$BENCH" = 1 ]; then
    cat "$LOGS/kernels_table.txt"
    echo
fi
printf '%-14s %-12s %6s  %s\n' step status time summary
for row in "${ROWS[@]}"; do echo "$row"; done
echo "logs: $LOGS"
exit $FAILED
