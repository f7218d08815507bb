#!/usr/bin/env bash
# The one command for a GPU machine: build, test, sanitize, benchmark.
#
#   bash scripts/gpu-check.sh OUTDIR
#
# Steps (each runs even if an earlier one failed; the exit status is non-zero
# if any failed):
#   configure  cmake -G Ninja, Release, -DFLASH4_PTXAS_VERBOSE=ON
#   build      all cores; build time and ptxas resource lines recorded
#   sass       no generic LD.E / ST.E in the kernels (cuobjdump; shared memory must be LDS / STS)
#   info       flash4 info
#   tests      flash4_tests (whole GoogleTest suite, one process)
#   check      flash4 check (--quick with QUICK=1)
#   sanitizer  compute-sanitizer memcheck on small GPU test cases and on
#              flash4 check --quick; racecheck on a few small cases
#   bench      flash4 bench, seqlen 1k..16k, headdim 64/128, causal 0/1
#   sdpa       bench/sdpa_compare.py on the same shapes, when torch imports
#
# Files written to OUTDIR (8 at most, the device tool brings back 8):
#   build.log  ptxas.txt  tests.log  sanitizer.log  bench.log  bench.jsonl
#   sdpa.jsonl  summary.txt
#
# A run too long for one sitting can be split: SKIP_BENCH=1 first, then
# SKIP_TESTS=1 SKIP_SANITIZER=1 (the second reuses the build tree, so its
# build step is incremental).
#
# Environment knobs:
#   BUILD_DIR=build-gpu   build tree (kept between runs: rebuilds are incremental)
#   QUICK=1               fewer bench shapes and iterations, flash4 check --quick
#   SKIP_TESTS=1 SKIP_SANITIZER=1 SKIP_BENCH=1   leave those steps out
#   GTEST_FILTER=...      restrict the tests step
#   SANITIZER_FILTER=...  gtest filter of the memcheck subset
#   RACECHECK_FILTER=...  gtest filter of the racecheck subset ("" = no racecheck)
#   SYNCCHECK_FILTER=...  gtest filter of the synccheck subset ("" = no synccheck)
#   BENCH_ARGS="..."      extra arguments for flash4 bench (e.g. --path portable)
#   GTEST_ROOT=DIR        prefix of a GoogleTest install when the machine has
#                         none (default: .devcarry/gtest/usr when it exists;
#                         fill it with: bash scripts/gpu-check.sh --stage-gtest)
#   FLASH4_GIT_COMMIT=... commit to record when the tree has no .git
#   CMAKE_EXTRA="..."     extra configure arguments (e.g. -DFLASH4_SM90=OFF)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

if [[ "${1:-}" == "--stage-gtest" ]]; then
  # Copies this machine's GoogleTest (Debian/Ubuntu libgtest-dev layout) into
  # .devcarry/gtest, for a GPU machine that has none: carry .devcarry there.
  dest=.devcarry/gtest
  libdir=$(dirname "$(dpkg -L libgtest-dev 2>/dev/null | grep '/libgtest\.a$' | head -1)")
  if [[ ! -f /usr/include/gtest/gtest.h || ! -d "$libdir/cmake/GTest" ]]; then
    echo "no libgtest-dev here (apt-get install libgtest-dev first)" >&2
    exit 1
  fi
  rm -rf "$dest" && mkdir -p "$dest" || exit 1
  cp -r --parents /usr/include/gtest "$libdir"/libgtest*.a "$libdir/cmake/GTest" "$dest"/ || exit 1
  rm -f "$dest$libdir"/cmake/GTest/GMock*.cmake  # gmock is not used (and not copied)
  echo "staged GoogleTest in $dest/usr ($(du -sh "$dest" | cut -f1)); carry .devcarry with the run"
  exit 0
fi

if [[ $# -ne 1 || "$1" == -* ]]; then
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
OUTDIR=$1
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)

BUILD_DIR=${BUILD_DIR:-build-gpu}
QUICK=${QUICK:-0}
SKIP_TESTS=${SKIP_TESTS:-0}
SKIP_SANITIZER=${SKIP_SANITIZER:-0}
SKIP_BENCH=${SKIP_BENCH:-0}
SANITIZER_FILTER=${SANITIZER_FILTER:-'GpuFwd/GpuFwdBase.*/113x203_*:GpuFwd/GpuFwdVarlen.*:GpuFwd/GpuFwdLayout.*/l*:GpuFwdEmpty.*:GpuFwdInvalid.*:GpuFwdGraph.*:GpuFwd/GpuFwdSm90.*/f3*:GpuFwd/GpuFwdManyTiles.*:GpuBwd/GpuBwdBase.*/*113x203*:GpuBwd/GpuBwdVarlen.*:GpuBwd/GpuBwdHeadDim.*/*d40*:GpuBwdEmpty.*'}
RACECHECK_FILTER=${RACECHECK_FILTER-'GpuFwd/GpuFwdBase.*/113x203_d64:GpuFwd/GpuFwdBase.*/113x203_d128_causal:GpuFwd/GpuFwdVarlen.*/v0_*:GpuFwd/GpuFwdManyTiles.*/d256_300x100_causal:GpuFwd/GpuFwdManyTiles.*/d64_200x160:GpuFwd/GpuFwdManyTiles.*/d128_varlen_causal:GpuBwd/GpuBwdBase.*/bf16_113x203_d64:GpuBwd/GpuBwdBase.*/fp16_113x203_d128_causal:GpuBwd/GpuBwdVarlen.*/v1_*:GpuBwd/GpuBwdWindow.*/w3_*:GpuBwd/GpuBwdSoftcap.*/bf16_d64:GpuBwd/GpuBwdDeterministic.*/fp16_d128_gqa_300x1000'}
SYNCCHECK_FILTER=${SYNCCHECK_FILTER-'GpuFwd/GpuFwdBase.*/bf16_113x203_d*:GpuFwd/GpuFwdSm90.*/f34_*:GpuFwd/GpuFwdManyTiles.*:GpuBwd/GpuBwdBase.*/bf16_113x203_*:GpuBwd/GpuBwdVarlen.*/v1_*:GpuBwd/GpuBwdDeterministic.*/bf16_d64_gqa_1023x1024'}
BENCH_ARGS=${BENCH_ARGS:-}
JOBS=$(nproc 2>/dev/null || echo 4)
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONUNBUFFERED=1

if [[ -z "${FLASH4_GIT_COMMIT:-}" ]]; then
  FLASH4_GIT_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
fi
export FLASH4_GIT_COMMIT
DIRTY=""
if git rev-parse --git-dir >/dev/null 2>&1 && [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  DIRTY=" (working tree has uncommitted changes)"
fi

BUILD_LOG=$OUTDIR/build.log
PTXAS=$OUTDIR/ptxas.txt
TESTS_LOG=$OUTDIR/tests.log
SAN_LOG=$OUTDIR/sanitizer.log
BENCH_LOG=$OUTDIR/bench.log
BENCH_JSON=$OUTDIR/bench.jsonl
SDPA_JSON=$OUTDIR/sdpa.jsonl
SUMMARY=$OUTDIR/summary.txt
rm -f "$BUILD_LOG" "$PTXAS" "$TESTS_LOG" "$SAN_LOG" "$BENCH_LOG" "$BENCH_JSON" "$SDPA_JSON" "$SUMMARY"

RESULTS=()
FAILED=0
gpu_line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
HEADER="flash4 gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)
commit: $FLASH4_GIT_COMMIT$DIRTY
gpu: ${gpu_line:-unknown (nvidia-smi gave nothing)}
nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -1)
build dir: $BUILD_DIR, jobs $JOBS, QUICK=$QUICK SKIP_TESTS=$SKIP_TESTS SKIP_SANITIZER=$SKIP_SANITIZER SKIP_BENCH=$SKIP_BENCH"

write_summary() {
  { echo "$HEADER"; printf '%s\n' "${RESULTS[@]}"; } >"$SUMMARY"
}
# record STATUS NAME DETAIL
record() {
  RESULTS+=("$(printf '%-5s %-10s %s' "$1" "$2" "$3")")
  [[ "$1" == FAIL ]] && FAILED=1
  write_summary
  echo "== $1 $2 $3"
}
# run_step NAME LOG CMD...: runs CMD, output appended to LOG and shown; PASS iff exit 0.
run_step() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  echo "== $name: exit $rc after ${dt}s" >>"$log"
  if [[ $rc -eq 0 ]]; then record PASS "$name" "(${dt}s)"; else record FAIL "$name" "(exit $rc, ${dt}s; see $(basename "$log"))"; fi
  return "$rc"
}

echo "$HEADER"
write_summary

# A build tree inside the checkout must be ignored, or it would travel with the tree.
if git rev-parse --git-dir >/dev/null 2>&1 && ! git check-ignore -q "$BUILD_DIR/" 2>/dev/null; then
  echo "warning: $BUILD_DIR is not ignored by .gitignore" | tee -a "$BUILD_LOG"
fi

# ---- configure --------------------------------------------------------------
CMAKE_ARGS=(-S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_PTXAS_VERBOSE=ON
            "-DFLASH4_GIT_COMMIT_OVERRIDE=$FLASH4_GIT_COMMIT")
if [[ -z "${GTEST_ROOT:-}" && -d .devcarry/gtest/usr ]]; then GTEST_ROOT=$ROOT/.devcarry/gtest/usr; fi
if [[ -n "${GTEST_ROOT:-}" ]]; then
  CMAKE_ARGS+=("-DCMAKE_PREFIX_PATH=$GTEST_ROOT")
  for d in "$GTEST_ROOT"/lib/*/cmake/GTest "$GTEST_ROOT"/lib*/cmake/GTest; do
    [[ -f "$d/GTestConfig.cmake" ]] && CMAKE_ARGS+=("-DGTest_DIR=$d") && break
  done
fi
# shellcheck disable=SC2206  # CMAKE_EXTRA is a word list on purpose
[[ -n "${CMAKE_EXTRA:-}" ]] && CMAKE_ARGS+=($CMAKE_EXTRA)
TESTS_BUILT=1
if ! run_step configure "$BUILD_LOG" cmake "${CMAKE_ARGS[@]}"; then
  if grep -q 'GTest' "$BUILD_LOG"; then
    TESTS_BUILT=0
    record FAIL tests-cfg "GoogleTest not found: configuring without tests (stage it: bash scripts/gpu-check.sh --stage-gtest, carry .devcarry)"
    run_step configure-notests "$BUILD_LOG" cmake "${CMAKE_ARGS[@]}" -DFLASH4_BUILD_TESTS=OFF
  fi
fi

# ---- build --------------------------------------------------------------------
fresh="incremental"
[[ -f "$BUILD_DIR/.ninja_log" ]] || fresh="fresh"
t0=$SECONDS
if run_step build "$BUILD_LOG" cmake --build "$BUILD_DIR" -j"$JOBS"; then :; fi
BUILD_SECONDS=$((SECONDS - t0))
echo "build time: ${BUILD_SECONDS}s ($fresh build, -j$JOBS)" | tee -a "$BUILD_LOG"
RESULTS+=("      build time ${BUILD_SECONDS}s ($fresh, -j$JOBS)")
# ptxas -v resource lines (registers, shared memory, spills) of what this build compiled.
{
  echo "# ptxas -v resource lines of the $fresh build at $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $FLASH4_GIT_COMMIT"
  echo "# (an incremental build lists only the CUDA files it recompiled)"
  grep -E 'ptxas (info|warning|error)|bytes stack frame|spill' "$BUILD_LOG" | if command -v c++filt >/dev/null; then c++filt; else cat; fi
} >"$PTXAS"
spills=$(grep -cE '[1-9][0-9]* bytes spill (stores|loads)' "$PTXAS")
# C7512: ptxas serialized a kernel's wgmma (each one waits for the previous),
# e.g. for lack of registers: a silent, large slowdown.
serialized=$(grep -c 'C7512' "$PTXAS")
RESULTS+=("      ptxas: $(grep -c 'Used [0-9]* registers' "$PTXAS") kernels compiled, $spills lines with spills, $serialized with serialized wgmma (C7512)")
# Generic loads / stores (LD.E / ST.E: neither LDS/STS nor LDG/STG) in the kernels
# mean a pointer lost its address space: shared-memory accesses then take the
# slow generic path (docs/design.md; the backward ran 3-14% slower that way).
LIB=$(ls "$BUILD_DIR"/libflash4.so "$BUILD_DIR"/libflash4.a 2>/dev/null | head -1)
if ! command -v cuobjdump >/dev/null 2>&1 || [[ -z "$LIB" ]]; then
  record SKIP sass "(cuobjdump or the library not found)"
else
  # One pass: first line the kernel count, then (count, name) per kernel with generic accesses.
  sass_scan=$(cuobjdump -sass "$LIB" 2>/dev/null |
    awk '/Function :/{f=$3; k++} /[[:space:]](LD|ST)\.E/{n[f]++} END{print k+0; for (x in n) print n[x], x}')
  kernels=$(head -1 <<<"$sass_scan")
  sass_generic=$(tail -n +2 <<<"$sass_scan")
  if [[ -z "$sass_generic" ]]; then
    record PASS sass "(no generic LD.E / ST.E in the $kernels kernels' SASS)"
  else
    { echo "# kernels with generic LD.E / ST.E (count, mangled name)"; echo "$sass_generic"; } >>"$BUILD_LOG"
    record FAIL sass "($(echo "$sass_generic" | grep -c .) of $kernels kernels use generic LD.E / ST.E: listed in build.log)"
  fi
fi
write_summary

CLI=$BUILD_DIR/flash4
TESTS=$BUILD_DIR/flash4_tests

# ---- info --------------------------------------------------------------------
run_step info "$TESTS_LOG" "$CLI" info

# ---- tests ----------------------------------------------------------------------
if [[ "$SKIP_TESTS" == 1 ]]; then
  record SKIP tests "(SKIP_TESTS=1)"
elif [[ $TESTS_BUILT == 0 ]]; then
  record FAIL tests "(not built: GoogleTest missing)"
else
  run_step tests "$TESTS_LOG" "$TESTS" ${GTEST_FILTER:+--gtest_filter="$GTEST_FILTER"}
  n_skip=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$TESTS_LOG" | tail -1)
  n_pass=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$TESTS_LOG" | tail -1)
  RESULTS+=("      tests: ${n_pass:-?} passed, ${n_skip:-0} skipped (skips name their reason in tests.log)")
  write_summary
fi
if [[ "$QUICK" == 1 ]]; then
  run_step check "$TESTS_LOG" "$CLI" check --quick
else
  run_step check "$TESTS_LOG" "$CLI" check
fi

# ---- sanitizer ------------------------------------------------------------------
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# gtest under a sanitizer: fails on sanitizer errors (exit 99), failed tests or a filter that matched nothing.
# shellcheck disable=SC2317  # called through run_step
san_gtest() {
  local tool=$1 filter=$2
  local tmp
  tmp=$(mktemp)
  "$SAN" --tool "$tool" --error-exitcode 99 --print-limit 100 "$TESTS" --gtest_filter="$filter" 2>&1 | tee "$tmp"
  local rc=${PIPESTATUS[0]}
  if grep -q '^\[==========\] 0 tests' "$tmp"; then
    echo "gtest filter '$filter' matched no test"
    rc=1
  fi
  rm -f "$tmp"
  return "$rc"
}
if [[ "$SKIP_SANITIZER" == 1 ]]; then
  record SKIP sanitizer "(SKIP_SANITIZER=1)"
elif [[ ! -x "$SAN" ]]; then
  record FAIL sanitizer "(compute-sanitizer not found)"
else
  if [[ $TESTS_BUILT == 1 ]]; then
    run_step memcheck "$SAN_LOG" san_gtest memcheck "$SANITIZER_FILTER"
    if [[ -n "$RACECHECK_FILTER" ]]; then
      run_step racecheck "$SAN_LOG" san_gtest racecheck "$RACECHECK_FILTER"
    fi
    if [[ -n "$SYNCCHECK_FILTER" ]]; then
      run_step synccheck "$SAN_LOG" san_gtest synccheck "$SYNCCHECK_FILTER"
    fi
  else
    record FAIL memcheck "(tests not built)"
  fi
  run_step memcheck-cli "$SAN_LOG" "$SAN" --tool memcheck --error-exitcode 99 --print-limit 100 "$CLI" check --quick
fi

# ---- bench ------------------------------------------------------------------------
if [[ "$QUICK" == 1 ]]; then
  SEQLENS=1024,4096,16384
  ITERS=(--warmup 3 --iters 10)
else
  SEQLENS=1024,2048,4096,8192,16384
  ITERS=(--warmup 10 --iters 30)
fi
if [[ "$SKIP_BENCH" == 1 ]]; then
  record SKIP bench "(SKIP_BENCH=1)"
  record SKIP sdpa "(SKIP_BENCH=1)"
else
  # shellcheck disable=SC2086  # BENCH_ARGS is a word list on purpose
  run_step bench "$BENCH_LOG" "$CLI" bench --seqlen "$SEQLENS" --headdim 64,128 --causal 0,1 "${ITERS[@]}" \
    --json "$BENCH_JSON" $BENCH_ARGS
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    run_step sdpa "$BENCH_LOG" python3 bench/sdpa_compare.py --seqlen "$SEQLENS" --headdim 64,128 --causal 0,1 \
      "${ITERS[@]}" --json "$SDPA_JSON" --flash4-json "$BENCH_JSON"
  else
    record SKIP sdpa "(python3 cannot import torch with CUDA)"
  fi
fi

# ---- summary -----------------------------------------------------------------------
write_summary
echo
echo "==================== summary ($OUTDIR/summary.txt)"
cat "$SUMMARY"
if [[ $FAILED -ne 0 ]]; then
  echo "RESULT: FAIL"
  echo "RESULT: FAIL" >>"$SUMMARY"
  exit 1
fi
echo "RESULT: PASS"
echo "RESULT: PASS" >>"$SUMMARY"
exit 0
