#!/bin/bash
# The FP8 cast kernel's variants on one GPU, in one call (~1 min): each variant of fp8.cu's knobs
# (CAST_* in libllmc/src/cuda/fp8.cu) built with bench/fp8_cast_probe.cu, all in parallel, then run
# one after another: the default twice (the second checks run-to-run determinism), the others
# checked against the default's output. Prints each variant's kernels (registers, spills,
# blocks per SM), then per case the variants from fastest, with effective TB/s, the speed-up
# over the default and the check ("same": bit-identical), beside a plain bf16 copy of the bytes.
#   bash bench/fp8_cast_probe.sh [NAME ...]   (default: every variant below)
# nvcc: $NVCC, else PATH, $CUDA_HOME/bin, /usr/local/cuda/bin; NVCC_FLAGS adds flags (include
# dirs). Logs and binaries in $OUT (or /tmp/fp8_cast_probe).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fp8_cast_probe}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc ||
    ls "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc 2>/dev/null | head -1)}
[ -x "$NVCC" ] || { echo "no nvcc found (set NVCC or CUDA_HOME)"; exit 1; }
FLAGS="-std=c++17 -O3 -arch=sm_90 -Ilibllmc/include -Ilibllmc/src $NVCC_FLAGS"

# name and -D knobs; "default" is what the library runs
VARIANTS="
default
no_prefetch -DCAST_PREFETCH=0
min_blocks3 -DCAST_MIN_BLOCKS=3
min_blocks5 -DCAST_MIN_BLOCKS=5
splits64 -DCAST_ROW_SPLITS=64
splits256 -DCAST_ROW_SPLITS=256
rows4_min_blocks3 -DCAST_ROWS=4 -DCAST_MIN_BLOCKS=3
t512_min_blocks2 -DCAST_THREADS=512 -DCAST_MIN_BLOCKS=2
t128_min_blocks8 -DCAST_THREADS=128 -DCAST_MIN_BLOCKS=8
"
if [ $# -gt 0 ]; then  # the named ones, the default always
    VARIANTS=$(echo "$VARIANTS" | awk -v names="default $*" \
        'BEGIN {split(names, n); for (i in n) want[n[i]] = 1} NF && want[$1]')
fi

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader ||
    true
start=$(date +%s)
rm -f "$OUT"/probe_*
"$NVCC" $FLAGS -c libllmc/src/cuda/reduce.cu -o "$OUT/reduce.o" || exit 1
pids=()
while read -r name knobs; do
    [ -n "$name" ] || continue
    "$NVCC" $FLAGS $knobs bench/fp8_cast_probe.cu "$OUT/reduce.o" -o "$OUT/probe_$name" \
        > "$OUT/build_$name.log" 2>&1 &
    pids+=($!)
done <<< "$VARIANTS"
for p in "${pids[@]}"; do wait "$p"; done
echo "built in $(( $(date +%s) - start )) s"

rm -f "$OUT"/*.sig
: > "$OUT/rows.txt"; : > "$OUT/failed.txt"; : > "$OUT/probe.log"
run() {  # name signatures [reference] [--copy]
    if [ ! -x "$OUT/probe_$1" ]; then
        echo "$1: build failed: $(grep -m1 -i error "$OUT/build_$1.log")" >> "$OUT/failed.txt"
        return
    fi
    "$OUT/probe_$1" "$@" > "$OUT/run_$1.log" 2>&1 ||
        echo "$1: run failed: $(tail -2 "$OUT/run_$1.log" | tr '\n' ' ')" >> "$OUT/failed.txt"
    cat "$OUT/run_$1.log" >> "$OUT/probe.log"
    grep -E "^(row|kernel)" "$OUT/run_$1.log" >> "$OUT/rows.txt"
}
run default "$OUT/default.sig" --copy
( cd "$OUT" && ln -sf probe_default probe_default_again )
run default_again "$OUT/default_again.sig" "$OUT/default.sig"
while read -r name knobs; do
    [ -n "$name" ] && [ "$name" != default ] && run "$name" "$OUT/$name.sig" "$OUT/default.sig"
done <<< "$VARIANTS"
echo "ran in $(( $(date +%s) - start )) s"

grep "^kernel" "$OUT/rows.txt" | cut -d' ' -f2-
awk '$1 == "row" {
        if (!($3 in seen)) { seen[$3] = 1; cases[++nc] = $3 }
        n[$3]++; v[$3, n[$3]] = $2; us[$3, n[$3]] = $4; tbs[$3, n[$3]] = $5; chk[$3, n[$3]] = $6
        if ($2 == "default") base[$3] = $4
     }
     END {
        for (c = 1; c <= nc; c++) {
            k = cases[c]
            printf "\n%-26s %-18s %9s %6s %8s  %s\n", k, "variant", "us", "TB/s", "vs def", "check"
            for (i = 1; i <= n[k]; i++) order[i] = i
            for (i = 1; i <= n[k]; i++)  # by time, fastest first
                for (j = i + 1; j <= n[k]; j++)
                    if (us[k, order[i]] + 0 > us[k, order[j]] + 0) {
                        t = order[i]; order[i] = order[j]; order[j] = t
                    }
            for (i = 1; i <= n[k]; i++) {
                r = order[i]
                printf "%-26s %-18s %9.1f %6.2f %7.3fx  %s\n", "", v[k, r], us[k, r], tbs[k, r],
                    (us[k, r] > 0 ? base[k] / us[k, r] : 0), chk[k, r]
            }
        }
     }' "$OUT/rows.txt" | tee "$OUT/table.txt"
cat "$OUT/failed.txt"
grep -q MISMATCH "$OUT/rows.txt" && echo "MISMATCH: some variant differs from the default (above)"
! grep -q MISMATCH "$OUT/rows.txt" && [ ! -s "$OUT/failed.txt" ]
