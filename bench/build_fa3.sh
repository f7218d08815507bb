#!/bin/bash
# Builds FlashAttention-3 (its hopper/ extension) in place, for side-by-side runs:
# `PYTHONPATH=DIR/hopper python3 bench/compare.py --impls flash4,cudnn,fa3 ...`.
# The project does not vendor FA3; DIR is a source tree made on a machine with
# network access, e.g. from git mirrors of Dao-AILab/flash-attention (commit
# 0251105a, the one the project's H100 anchors used) and NVIDIA/cutlass (its
# csrc/cutlass submodule commit, 7127592):
#   git -C flash-attention archive 0251105a hopper README.md | tar -x -C DIR
#   git -C cutlass archive 7127592 include tools/util/include | tar -x -C DIR --transform 's,^,csrc/cutlass/,'
# Only bf16, the given head dims (default 128), no split / paged / softcap /
# local / varlen / FP8 / sm80 variants are built, to keep the build to minutes.
# Usage: bash bench/build_fa3.sh DIR [HEADDIMS, e.g. 64,128]
set -euo pipefail
DIR=${1:?FA3 source tree (with hopper/ and csrc/cutlass/)}
HD=${2:-128}
# (setup.py reads ../README.md for its long description.)
[[ -f "$DIR/hopper/setup.py" && -f "$DIR/README.md" && -d "$DIR/csrc/cutlass/include" ]] ||
  { echo "build_fa3: $DIR needs hopper/setup.py, README.md and csrc/cutlass/include" >&2; exit 2; }
for f in SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 FP8 VARLEN CLUSTER SM80 HDIMDIFF64 HDIMDIFF192; do
  export FLASH_ATTENTION_DISABLE_$f=TRUE
done
for d in 64 96 128 192 256; do
  [[ ",$HD," == *",$d,"* ]] || export FLASH_ATTENTION_DISABLE_HDIM$d=TRUE
done
export MAX_JOBS=${MAX_JOBS:-$(nproc)} NVCC_THREADS=${NVCC_THREADS:-2}
cd "$DIR/hopper"
python3 setup.py build_ext --inplace
python3 -c "import flash_attn_interface; print('build_fa3: flash_attn_interface imports')"
