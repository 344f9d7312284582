#!/usr/bin/env bash
# One-shot check on a bare GPU machine, run from the repository root without installing:
#   bash benchmarks/gpu_check.sh
# 1. the GPU tests (pytest -m gpu; without pytest, the kernel GPU checks as a script)
# 2. the kernel benchmark (benchmarks/kernels.py --quick)
# 3. benchmarks/throughput.py --gpu, if that file exists
# Each step has its own time limit; all together they stay under 8 minutes. Logs go to
# $GPU_CHECK_LOGS (default: $OUT/gpu_check when $OUT is set, else /tmp/gpu_check).
# A short table of the steps comes last. Exit status: 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels, never the interpreter, here
PY="${PYTHON:-$(command -v python3 || command -v python)}"
LOGS="${GPU_CHECK_LOGS:-${OUT:+$OUT/gpu_check}}"
LOGS="${LOGS:-/tmp/gpu_check}"
mkdir -p "$LOGS"

T_TESTS=${T_TESTS:-210}
T_BENCH=${T_BENCH:-110}
T_THROUGHPUT=${T_THROUGHPUT:-130}

declare -a ROWS=()
FAILED=0

# run NAME LIMIT_S LOGFILE CMD...: runs CMD under a time limit, records status and time
run() {
    local name=$1 limit=$2 log=$3
    shift 3
    local start end rc status
    start=$(date +%s)
    echo "=== $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s)
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT" ; FAILED=1 ;;
        *) status="FAILED($rc)" ; FAILED=1 ;;
    esac
    ROWS+=("$(printf '%-22s %-12s %5ss  %s' "$name" "$status" "$((end - start))" "$(summary_of "$name" "$log")")")
}

summary_of() {
    case $1 in
        gpu-tests*) grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran|all passed" "$2" | tail -1 ;;
        *) tail -1 "$2" | cut -c1-90 ;;
    esac
}

"$PY" - <<'EOF' 2>&1 | tee "$LOGS/env.txt"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, end=" ")
try:
    import triton; print("triton", triton.__version__, end=" ")
except ImportError:
    print("triton MISSING", end=" ")
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

if "$PY" -c "import pytest" 2>/dev/null; then
    # Other test modules may need packages this image lacks (Qt, hypothesis): keep going.
    run gpu-tests "$T_TESTS" "$LOGS/tests.log" \
        "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider --continue-on-collection-errors tests
else
    run gpu-tests-nopytest "$T_TESTS" "$LOGS/tests.log" "$PY" tests/gpu/test_kernels_gpu.py
fi

run kernel-bench "$T_BENCH" "$LOGS/kernels.log" \
    "$PY" benchmarks/kernels.py --quick --summary "$LOGS/kernels_table.txt"

if [ -f benchmarks/throughput.py ]; then
    run throughput "$T_THROUGHPUT" "$LOGS/throughput.log" "$PY" benchmarks/throughput.py --gpu
else
    ROWS+=("$(printf '%-22s %-12s %5ss  %s' throughput skipped 0 "benchmarks/throughput.py not found")")
fi

echo
if [ -s "$LOGS/kernels_table.txt" ]; then
    cat "$LOGS/kernels_table.txt"
    echo
fi
printf '%-22s %-12s %6s  %s\n' step status time summary
for row in "${ROWS[@]}"; do echo "$row"; done
echo "logs: $LOGS"
exit $FAILED
