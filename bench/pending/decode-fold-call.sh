#!/bin/bash
# A/B of bench/pending/decode-fold.patch (applied to this tree) against main (.ab-main:
#   git archive main | tar -x -C .ab-main), run with carry [".carry", ".ab-main"]: builds both,
#   the generation tests, then d48 batch 1 and 8 alternated (bench.generate_bench --no-peer)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps .carry/whl/*.whl
ln -sfn ../.carry .ab-main/.carry
(make -j8 lib DEPS= > $OUT/build.log 2>&1; echo new-build $?) &
(make -C .ab-main -j8 lib DEPS= > $OUT/build-old.log 2>&1; echo old-build $?) &
wait
timeout 200 python3 -m pytest -q -rfE tests/test_cuda.py -k "generation or gemv or decode or queued or sampled or cache" > $OUT/gen_tests.log 2>&1; echo gen-tests rc $?
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/gen_tests.log | cut -c1-300
B="timeout 100 python3 -m bench.generate_bench --sizes d48 --no-peer --repeats 1"
for lib in .ab-main/build build .ab-main/build build; do
  echo "== $lib"; LLMC_LIB=$PWD/$lib/libllmc.so $B --batches 1,8 2>&1 | grep -E "^ *d[0-9]|Error|error" | tail -3
done
