#!/bin/bash
# A/B of several source trees in one device call: builds each tree (library,
# CLI and, except for the base, the tests) in its own build folder, all in
# parallel; runs GTEST_FILTER's GPU tests of every tree but the base; then
# `flash4 bench --mode MODE ARGS` of every tree in turn, ROUNDS times, into one
# JSON-lines file (commit field = the tree's name), and prints each tree's
# median TFLOP/s ratio to the base per point.
#
# A tree is a folder with the project's CMakeLists.txt, e.g. made on the host
# with `bash src/sm90/dev/make_trees.sh NAME=BRANCH...` (.devcarry/NAME), or
# "." for the working tree. Trees extracted by `git archive` carry commit-time
# mtimes, so a tree whose content changed since its folder was last built is
# touched first (else ninja keeps objects of the previous tree).
#
# Usage (repo root): bash src/sm90/dev/run_ab_trees.sh OUTDIR base=TREE NAME=TREE... [-- bench args]
# Environment: MODE (bwd | fwd, default bwd), ROUNDS (default 2), GTEST_FILTER
# (default GpuBwd* for bwd, GpuFwd* for fwd; empty: no tests), TEST_TIMEOUT (300 s).
set -o pipefail
OUTD=${1:?out dir}; shift
mkdir -p "$OUTD"
NAMES=(); TREES=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  [[ "$1" == *=* ]] || { echo "run_ab_trees: expected NAME=TREE, got '$1'" >&2; exit 2; }
  NAMES+=("${1%%=*}"); TREES+=("${1#*=}"); shift
done
[[ "${1:-}" == "--" ]] && shift
ARGS=("$@")
[[ "${NAMES[0]:-}" == base && ${#NAMES[@]} -ge 2 ]] ||
  { echo "run_ab_trees: the first tree must be base=TREE, and at least one more" >&2; exit 2; }
MODE=${MODE:-bwd}
FILTER=${GTEST_FILTER-$([[ $MODE == fwd ]] && echo 'GpuFwd*' || echo 'GpuBwd*')}
[[ ${#ARGS[@]} -eq 0 ]] && ARGS=(--headdim 64,128 --seqlen 1024,4096,16384 --causal 0,1)
J=$(nproc)
G=""; [[ -d .devcarry/gtest/usr ]] && G="-DCMAKE_PREFIX_PATH=$PWD/.devcarry/gtest/usr -DGTest_DIR=$(ls -d $PWD/.devcarry/gtest/usr/lib/*/cmake/GTest | head -1)"

source "$(dirname "$0")/refresh_tree.sh"

t0=$SECONDS
PIDS=()
for i in "${!NAMES[@]}"; do
  n=${NAMES[$i]}; t=${TREES[$i]}; b=build-ab-$n
  [[ -f "$t/CMakeLists.txt" ]] || { echo "run_ab_trees: $t has no CMakeLists.txt" >&2; exit 2; }
  [[ "$t" != "." ]] && refresh_tree "$t" "$b"
  T="-DFLASH4_BUILD_TESTS=ON $G"; [[ $n == base || -z "$FILTER" ]] && T="-DFLASH4_BUILD_TESTS=OFF"
  ( cmake -S "$t" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_PTXAS_VERBOSE=ON $T \
      -DFLASH4_GIT_COMMIT_OVERRIDE="$n" >/dev/null && cmake --build "$b" -j"$J" ) > "$OUTD/build-$n.log" 2>&1 &
  PIDS+=($!)
done
for i in "${!NAMES[@]}"; do
  wait "${PIDS[$i]}" || { echo "build of ${NAMES[$i]} failed"; tail -30 "$OUTD/build-${NAMES[$i]}.log"; exit 1; }
done
echo "builds: $((SECONDS - t0)) s"
for n in "${NAMES[@]}"; do
  echo "$n: $(grep -A2 -E "Compiling entry function.*${MODE}_kernel" "$OUTD/build-$n.log" |
    grep -cE '^ +[0-9]+ bytes stack frame, [1-9]') of $(grep -cE "Compiling entry function.*${MODE}_kernel" \
    "$OUTD/build-$n.log") ${MODE} kernels with spills, $(grep -c C75 "$OUTD/build-$n.log") C75xx"
done
if [[ -n "$FILTER" ]]; then
  for n in "${NAMES[@]:1}"; do
    t1=$SECONDS
    timeout "${TEST_TIMEOUT:-300}" build-ab-$n/flash4_tests --gtest_filter="$FILTER" > "$OUTD/tests-$n.log" 2>&1
    echo "$n tests rc=$? ($((SECONDS - t1)) s): $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUTD/tests-$n.log" | tr '\n' ' ')"
    grep -E '^\[  FAILED  \]' "$OUTD/tests-$n.log" | head -10
  done
fi
for r in $(seq 1 "${ROUNDS:-2}"); do
  for n in "${NAMES[@]}"; do
    build-ab-$n/flash4 bench --mode "$MODE" "${ARGS[@]}" --json "$OUTD/ab.jsonl" > "$OUTD/bench-$n-$r.txt" 2>&1 ||
      { echo "bench $n failed"; tail -5 "$OUTD/bench-$n-$r.txt"; }
  done
done
[[ -f "$OUTD/ab.jsonl" ]] || { echo "no bench rows"; exit 1; }
python3 - "$OUTD/ab.jsonl" "${NAMES[@]}" <<'PY'
import collections, json, statistics, sys
path, names = sys.argv[1], sys.argv[2:]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(path):
    r = json.loads(line)
    if r.get("tflops") is None: continue
    key = (r.get("headdim"), int(bool(r.get("causal"))), r.get("seqlen"), int(bool(r.get("deterministic", 0))))
    rows[key][r.get("commit", "?")].append(r["tflops"])
print("d   c seqlen det | base TFLOP/s | " + " | ".join(f"{n}/base" for n in names[1:]))
for k in sorted(rows):
    b = rows[k].get("base")
    if not b: continue
    mb = statistics.median(b)
    cells = [f"{statistics.median(rows[k][n]) / mb:.3f}" if rows[k].get(n) else "-" for n in names[1:]]
    print(f"{k[0]:<3} {k[1]} {k[2]:>6} {k[3]}   | {mb:12.0f} | " + " | ".join(c.rjust(len(n) + 5) for c, n in zip(cells, names[1:])))
PY
