#!/bin/bash
# One device call for a tree's record: gpu-check (build, GPU tests, flash4 check,
# memcheck / racecheck / synccheck subsets; its bench step is left to compare.py),
# the PyTorch extension built beside it and pytest, bench/compare.py (flash4 vs
# SDPA cuDNN / FlashAttention-2 / a Triton forward, one process, same tensors),
# and optionally a backward A/B against BASE (src/sm90/dev/run_bwd_ab.sh).
# Everything lands in OUTDIR/final.tgz (the device tool brings back 8 files).
# Usage (repo root): bash src/sm90/dev/run_final.sh OUTDIR [BASE AB_ARGS...]
set -o pipefail
OUTD=${1:?out dir}; shift
W=$(mktemp -d); mkdir -p "$OUTD"
export PYTHONUNBUFFERED=1
mkdir -p "$W/compare"
t0=$SECONDS
SKIP_BENCH=1 bash scripts/gpu-check.sh "$W/gpu-check" > "$W/gpu-check.out" 2>&1 & pg=$!
( cmake -S . -B build-torch -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_TORCH=ON -DFLASH4_BUILD_TESTS=OFF \
    -DFLASH4_BUILD_CLI=OFF >/dev/null && cmake --build build-torch -j"$(nproc)" ) > "$W/build-torch.log" 2>&1 & pt=$!
wait $pt; rt=$?
wait $pg; rg=$?
echo "gpu-check rc=$rg, torch build rc=$rt ($((SECONDS - t0)) s)"
cat "$W/gpu-check/summary.txt"
if [[ $rt -eq 0 ]]; then
  t0=$SECONDS
  PYTHONPATH=build-torch/python timeout 240 python3 -m pytest tests/python -q -n 8 -p no:cacheprovider > "$W/pytest.log" 2>&1
  echo "pytest rc=$? ($((SECONDS - t0)) s): $(tail -1 "$W/pytest.log")"
  t0=$SECONDS
  PYTHONPATH=build-torch/python timeout ${COMPARE_TIMEOUT:-300} python3 bench/compare.py --headdim ${COMPARE_HEADDIM:-64,128,256} \
    --seqlen 512,1024,2048,4096,8192,16384 --causal 0,1 --modes ${COMPARE_MODES:-fwd,bwd} --impls flash4,cudnn,flash2 \
    --json "$W/compare/compare.jsonl" --plot "$W/compare" > "$W/compare.txt" 2>&1
  echo "compare rc=$? ($((SECONDS - t0)) s)"
fi
if [[ $# -ge 1 ]]; then
  BASE=$1; shift
  SKIP_TESTS=1 ROUNDS=2 bash src/sm90/dev/run_bwd_ab.sh "$BASE" "$W/ab" "$@" > "$W/ab.txt" 2>&1
  tail -40 "$W/ab.txt"
fi
tar -czf "$OUTD/final.tgz" -C "$W" .
cp "$W/compare.txt" "$OUTD/" 2>/dev/null
