#!/bin/bash
# One device call for a forward variant sweep with the dev driver: build
# fwd_dev (parallel), `fwd_dev check quick` (every variant of the check lists
# against the float64 reference), then `fwd_dev MODE` for each of the
# comma-separated BENCH_MODES (output in bench-MODE.txt). BENCH_ANYWAY=1 benches
# even when the check fails.
# Usage (repo root, on the device): bash src/sm90/dev/run_fwd_variants.sh OUTDIR [BENCH_MODES]
set -o pipefail
OUT=${1:?out dir}; MODE=${2:-bench}; mkdir -p $OUT
B=/tmp/sm90v; mkdir -p $B
F="-std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Iinclude -Isrc -gencode=arch=compute_90a,code=sm_90a"
{ nvidia-smi -L; nvcc --version | tail -1; date -u; } > $OUT/env.txt 2>&1
t0=$(date +%s)
pids=()
for f in fwd_sm90 fwd_sm90_hdim64 fwd_sm90_hdim128 fwd_sm90_hdim256 fwd_sm90_exp2emu tensor_map; do
  nvcc $F -c src/sm90/$f.cu -o $B/$f.o > $B/$f.log 2>&1 & pids+=($!)
done
nvcc $F -Xptxas -v -c src/sm90/dev/fwd_dev.cu -o $B/dev.o > $B/dev.log 2>&1 & pids+=($!)
for p in "${pids[@]}"; do wait $p || { cat $B/*.log | tail -30; echo BUILD FAILED; exit 1; }; done
nvcc $F $B/*.o -o $B/fwd_dev || exit 1
echo "build $(( $(date +%s) - t0 )) s" | tee -a $OUT/env.txt
cp $B/dev.log $OUT/ptxas-dev.txt
timeout 240 $B/fwd_dev check quick > $OUT/check.txt 2>&1; rc=$?
tail -3 $OUT/check.txt; echo "check rc=$rc"
[ $rc -ne 0 ] && { grep -i "fail" $OUT/check.txt | head -20; [ -z "$BENCH_ANYWAY" ] && exit 1; }
for m in ${MODE//,/ }; do
  timeout 300 $B/fwd_dev $m 2>&1 | tee $OUT/bench-$m.txt
done
