#!/bin/bash
# A/B timing on the device: builds libsm90dev.so from this tree (new) and from
# OLD_SRC (an earlier tree's src/, e.g. .devcarry/old/src, made with
#   git archive <commit> src/common src/sm90/ptx.cuh src/sm90/fwd_* src/sm90/dev/capi.cu)
# and runs bench_ab.py. Usage (repo root): bash src/sm90/dev/run_ab.sh OLD_SRC [S,S,...]
set -o pipefail
OLD=${1:?old src dir}
B=/tmp/sm90ab; mkdir -p $B/new $B/old
F="-std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a"
build() {  # build DIR SRC
  local out=$1 src=$2 pids=()
  for f in fwd_sm90 fwd_sm90_hdim64 fwd_sm90_hdim128 dev/capi; do
    nvcc $F -Iinclude -I$src -c $src/sm90/$f.cu -o $out/$(basename $f).o & pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p || return 1; done
  nvcc -shared -cudart shared $out/*.o -o $out/libsm90dev.so
}
build $B/new src & p1=$!
build $B/old $OLD & p2=$!
wait $p1 || { echo "new build failed"; exit 1; }
wait $p2 || { echo "old build failed"; exit 1; }
python3 src/sm90/dev/bench_ab.py $B/new/libsm90dev.so $B/old/libsm90dev.so ${2:-}
