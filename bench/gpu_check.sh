#!/bin/bash
# One call on a GPU machine: build the CUDA backend, run its tests against the
# CPU backend, then the benchmarks; the short table comes last.
#   bash bench/gpu_check.sh [full|quick|profile]
#     full (default): tests, HellaSwag timing, every benchmark
#     quick: tests and the two d12 benchmarks
#     profile: tests, the two d12 benchmarks, and an nsys kernel-time summary of d12
# Needs, carried beside the tree when the machine has no network:
#   .carry/cudnn-frontend/include  the cudnn-frontend headers (pip nvidia-cudnn-frontend)
#   .carry/whl/*.whl               wheels the machine lacks (scipy-openblas32)
# Logs go to $OUT (or /tmp/gpu_check).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader

if ls .carry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps .carry/whl/*.whl || exit 1
    mkdir -p build && touch build/.dirs build/.deps   # requirements already met offline
fi
start=$(date +%s)
make -j"$(nproc)" lib > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^CUDA backend" "$OUT/build.log"
echo "build: $(( $(date +%s) - start )) s"

python3 -m pytest -q -rs tests/test_cuda.py -s 2>&1 | tee "$OUT/tests.log" | grep -vE "^\s*$" | tail -25
tests_rc=$?

MODE=${1:-full}
if [ "$MODE" = full ]; then
    if [ -f bench/hellaswag_bench.py ]; then
        timeout 150 python3 bench/hellaswag_bench.py --preset d12 --device cuda 2>&1 | tail -8 | tee "$OUT/hellaswag.log"
    fi
    python3 bench/gpu_bench.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
else
    python3 bench/gpu_bench.py --run d12,64,1024,8,0 --run d12,64,1024,8,1 --steps 5 \
        --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if [ "$MODE" = profile ]; then
    NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
    if [ -n "$NSYS" ]; then
        "$NSYS" profile -t cuda -o /tmp/llmc_prof --force-overwrite true python3 bench/gpu_bench.py \
            --child --run d12,64,1024,2,0 --steps 1 --warmup 1 > "$OUT/nsys.log" 2>&1
        "$NSYS" stats -q --report cuda_gpu_kern_sum --format csv /tmp/llmc_prof.nsys-rep \
            > "$OUT/kernels.csv" 2>>"$OUT/nsys.log"
        python3 - "$OUT/kernels.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 8]
head, rows = rows[0], rows[1:]
print("kernel time share (d12, 3 steps of 2 micro-steps):")
for r in rows[:22]:
    print(f"{float(r[0]):5.1f}%  {float(r[1]) / 1e6:8.1f} ms  {int(r[2]):6d}x  {r[-1][:90]}")
PY
    else
        echo "nsys not found: no profile"
    fi
fi
echo "tests: $(grep -E "passed|failed" "$OUT/tests.log" | tail -1)"
exit $tests_rc
