#!/bin/bash
# One call on a GPU machine: build the CUDA backend, run its tests against the
# CPU backend, then the benchmarks; the short table comes last.
#   bash bench/gpu_check.sh [full|quick|profile]
#     full (default): tests, HellaSwag timing, every benchmark
#     quick: tests and the two d12 benchmarks
#     profile: tests and a kernel-time profile of d12 (bench/gpu_profile.py)
#     peers: tests, then llmc (trainer and library loop) against llm.c at d12, d24, d36 and d48
#            in this call, on real text (bench/peer_bench.py; PEER_ARGS adds its flags, e.g. --fp8;
#            llm.c's llama3 branch, when carried, builds beside llm.c for `--sizes llama3.2-1b-untied`)
#   NO_TESTS=1 (any mode): skip tests/test_cuda.py (a short call that measures only)
#   FP8_PROBE="65536 768" (any mode): also cuBLASLt's bf16 and FP8 product times at those shapes
#     multi: tests, then data parallel on this machine's GPUs beside llm.c built with MPI
#            (bench/multi_gpu.py; MULTI_ARGS adds its flags, e.g. "--sizes d48 --no-check")
#     generate: tests, then tokens/s of generation against transformers at d12 and d48
#               (bench/generate_bench.py; GEN_ARGS adds its flags, e.g. "--sizes d12")
#     variants: tests, then generation (GEN_ARGS; default d48, batches 1 and 8, no peer) with
#               this build and with one build for each of VARIANTS, its -D's comma-separated
#               (e.g. "GEMV_OUT_ROWS=8,GEMV_UNROLL=2 GEMV_OUT_ROWS=2"),
#               VARIANT_FILES (default libllmc/src/cuda/decode.cu) recompiled in a copy of the tree;
#               VARIANT_TESTS (a pytest -k expression) runs those CUDA tests on each library first
#     ab: tests, then this tree against another one carried as .ab-main (e.g. main: `git archive
#         main | tar -x -C .ab-main`), built beside it, alternating the two libraries (LLMC_LIB)
#         through this tree's bench scripts: bench/gpu_bench.py runs AB_RUNS (default d12 and d48
#         in FP8, llama-124m in bf16), then generation if AB_GEN is set (generate_bench flags)
#     dist: tests, one-GPU runs of the trainer's distributed launch paths
#           (--nproc-per-node 1 with its TCP rendezvous, mpirun -np 1), and
#           d12 with and without the NCCL path (world size 1), alternated
# Needs, carried beside the tree when the machine has no network:
#   .carry/cudnn-frontend/include  the cudnn-frontend headers (pip nvidia-cudnn-frontend)
#   .carry/whl/*.whl               wheels the machine lacks (scipy-openblas32)
#   .carry/peers                   peers mode: a copy of ../shared/peers (llm.c and its build script,
#                                  llm.c-llama3, and the cudnn-frontend llm.c builds with)
#   .carry/fineweb_sample          real FineWeb token shards (../shared/data/fineweb_sample): every
#                                  benchmark reads them
# Logs go to $OUT (or /tmp/gpu_check).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader

DEPS_ARG=()
if ls .carry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps .carry/whl/*.whl || exit 1
    DEPS_ARG=(DEPS=)   # requirements already met offline: make installs nothing
fi
# the bench scripts import pyllmc from this tree (make's editable install may not have run)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODE=${1:-full}
start=$(date +%s)
if [ "$MODE" = peers ] || [ "$MODE" = multi ]; then  # llm.c builds beside llmc
    bash .carry/peers/llm.c.sh build $([ "$MODE" = multi ] && echo mpi) > "$OUT/llm.c-build.log" 2>&1 &
    peer_build=$!
    if [ "$MODE" = peers ] && [ -d .carry/peers/llm.c-llama3 ]; then  # peer_bench finds it built
        python3 -m bench.llama3_peer > "$OUT/llama3-build.log" 2>&1 &
        llama3_build=$!
    fi
fi
make -j"$(nproc)" lib "${DEPS_ARG[@]}" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
if [ "$MODE" = ab ]; then  # the other tree, sharing the cuDNN unit when attention is the same in both
    [ -e .ab-main/.carry ] || ln -s ../.carry .ab-main/.carry  # its build finds the carried headers
    if cmp -s libllmc/src/cuda/attention_cudnn.cpp .ab-main/libllmc/src/cuda/attention_cudnn.cpp &&
       cmp -s libllmc/src/cuda/attention.h .ab-main/libllmc/src/cuda/attention.h; then
        mkdir -p .ab-main/build/libllmc/src/cuda
        cp build/libllmc/src/cuda/attention_cudnn.o .ab-main/build/libllmc/src/cuda/
    fi
    make -C .ab-main -j"$(nproc)" lib "${DEPS_ARG[@]}" > "$OUT/build-ab.log" 2>&1 ||
        { tail -40 "$OUT/build-ab.log"; exit 1; }
fi
grep -E "^CUDA backend" "$OUT/build.log"
echo "build: $(( $(date +%s) - start )) s"
# FP8_PROBE="N C ...": cuBLASLt's bf16 and FP8 times for one block's products at these shapes
if [ -n "$FP8_PROBE" ]; then
    nvcc -O2 -arch=sm_90 -o /tmp/fp8_probe bench/fp8_probe.cu -lcublasLt || exit 1
    set -- $FP8_PROBE
    while [ $# -ge 2 ]; do /tmp/fp8_probe "$1" "$2" | tee -a "$OUT/fp8_probe.log"; shift 2; done
fi

tests_rc=0
if [ "${NO_TESTS:-0}" != 1 ]; then
    # every failure and error by name, then the count (the log holds the printed numbers)
    python3 -m pytest -q -rfEs tests/test_cuda.py -s > "$OUT/tests.log" 2>&1
    tests_rc=$?
    grep -E "^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed)" "$OUT/tests.log" | cut -c1-200
fi

if [ "$MODE" = full ]; then
    if [ -f bench/hellaswag_bench.py ]; then
        timeout 150 python3 bench/hellaswag_bench.py --preset d12 --device cuda 2>&1 | tail -8 | tee "$OUT/hellaswag.log"
    fi
    python3 bench/gpu_bench.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
elif [ "$MODE" = quick ]; then
    python3 bench/gpu_bench.py --run d12,64,1024,8,0 --run d12,64,1024,8,1 --steps 5 \
        --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if [ "$MODE" = peers ] || [ "$MODE" = multi ]; then
    wait $peer_build || { tail -20 "$OUT/llm.c-build.log"; exit 1; }
    echo "llm.c built: $(( $(date +%s) - start )) s"
    # a failed llama3 build is reported by peer_bench, which tries once more
    [ -n "$llama3_build" ] && { wait $llama3_build; tail -1 "$OUT/llama3-build.log"; }
fi
if [ "$MODE" = peers ]; then
    python3 -m bench.peer_bench --json "$OUT/peers.json" $PEER_ARGS 2>&1 | tee "$OUT/peers.log"
fi
if [ "$MODE" = generate ]; then
    python3 -m bench.generate_bench $GEN_ARGS 2>&1 | grep -v "Loading weights" | tee "$OUT/generate.log"
fi
if [ "$MODE" = ab ]; then
    for run in ${AB_RUNS:-d12,64,1024,8,0,fp8 d48,16,1024,4,2,fp8 llama-124m,64,1024,8,0}; do
        for lib in .ab-main/build build .ab-main/build build; do
            echo "== $lib $(LLMC_LIB=$PWD/$lib/libllmc.so python3 bench/gpu_bench.py --run $run \
                --steps 4 2>&1 | tail -1)"
        done
    done 2>&1 | tee "$OUT/ab.log"
    if [ -n "$AB_GEN" ]; then
        for lib in .ab-main/build build; do
            echo "== $lib"
            LLMC_LIB=$PWD/$lib/libllmc.so python3 -m bench.generate_bench $AB_GEN 2>&1 |
                grep -v "Loading weights" | tail -12
        done 2>&1 | tee -a "$OUT/ab.log"
    fi
fi
if [ "$MODE" = variants ]; then
    # each variant: a copy of the tree with VARIANT_FILES recompiled under its -D
    libs=(build)
    for v in $VARIANTS; do
        d=".v-${v//[=,]/_}"
        libs+=("$d/build")
        rm -rf "$d" && mkdir "$d" && cp -r Makefile libllmc build "$d/" && ln -s ../.carry "$d/.carry" &&
            (cd "$d" && touch ${VARIANT_FILES:-libllmc/src/cuda/decode.cu}) &&
            make -C "$d" -j4 lib "${DEPS_ARG[@]}" CUDA_DEFS="-D${v//,/ -D}" > "$OUT/build$d.log" 2>&1 &
    done
    wait
    for lib in "${libs[@]}"; do
        echo "== $lib"
        if [ -n "$VARIANT_TESTS" ]; then  # the CUDA tests it selects, on this library
            LLMC_LIB=$PWD/$lib/libllmc.so python3 -m pytest -q -rfE tests/test_cuda.py \
                -k "$VARIANT_TESTS" 2>&1 | grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" | cut -c1-200
        fi
        LLMC_LIB=$PWD/$lib/libllmc.so python3 -m bench.generate_bench \
            ${GEN_ARGS:---sizes d48 --batches 1,8 --no-peer --repeats 1} 2>&1 | grep -E "^ *d[0-9]" | sort -u
    done 2>&1 | tee "$OUT/variants.log"
fi
if [ "$MODE" = multi ]; then
    python3 -m bench.multi_gpu --json "$OUT/multi.json" $MULTI_ARGS 2>&1 | tee "$OUT/multi.log"
fi
if [ "$MODE" = dist ]; then
    export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    python3 - <<'PY' > "$OUT/tiny.txt"
import numpy as np
from pyllmc.shards import write_shard
rng = np.random.default_rng(0)
write_shard("/tmp/dist_train_000001.bin", rng.integers(0, 50257, 200000))
write_shard("/tmp/dist_val_000000.bin", rng.integers(0, 50257, 20000))
PY
    TRAIN="-m pyllmc.train --device cuda --train-data /tmp/dist_train_*.bin --val-data /tmp/dist_val_*.bin
        --num-layers 2 --num-heads 4 --channels 128 -B 4 -T 64 --steps 20 --val-every 10
        --sample-every 0 --print-every 10 --no-progress --zero 1"
    rm -rf /tmp/dist_plain /tmp/dist_nproc /tmp/dist_mpi
    python3 $TRAIN --out-dir /tmp/dist_plain 2>&1 | tail -2
    python3 $TRAIN --out-dir /tmp/dist_nproc --nproc-per-node 1 2>&1 | tail -2
    mpirun -np 1 python3 $TRAIN --out-dir /tmp/dist_mpi 2>&1 | tail -2
    python3 - <<'PY'
import json
curves = [[json.loads(l).get("train_loss") for l in open(f"/tmp/dist_{k}/main.jsonl")]
          for k in ("plain", "nproc", "mpi")]
print("trainer: --nproc-per-node 1 and mpirun -np 1 curves equal to the plain run:",
      curves[0] == curves[1], curves[0] == curves[2])
PY
    python3 bench/gpu_bench.py --run d12,64,1024,8,0 --run d12,64,1024,8,0,dp \
        --run d12,64,1024,8,0 --run d12,64,1024,8,0,dp --run d12,64,1024,8,1,dpz --steps 6 \
        --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if [ "$MODE" = profile ]; then
    python3 bench/gpu_profile.py 2>&1 | tee "$OUT/profile.log"
fi
echo "tests: $(grep -E "passed|failed" "$OUT/tests.log" | tail -1)"
exit $tests_rc
