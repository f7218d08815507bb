#!/bin/bash
# Backward A/B on the device: builds the library + CLI from this tree (new,
# build-gpu, incremental on a warm machine) and from BASE (an earlier tree, e.g.
# .devcarry/base made with `git archive <commit> CMakeLists.txt cmake include
# src tools python pyproject.toml | tar -x -C .devcarry/base`), runs the
# backward GPU tests of the new build (GTEST_FILTER, default GpuBwd*), then
# `flash4 bench --mode bwd` alternately: base, new, base, new (ROUNDS pairs);
# ALT=<tree> adds a third build, benched as "alt" in each round; MODE=fwd
# benches the forward instead; ALT_TESTS=1 builds the alt tree's tests too and runs them.
# Usage (repo root): bash src/sm90/dev/run_bwd_ab.sh BASE OUTDIR [bench args...]
set -o pipefail
BASE=${1:?base tree}; OUTD=${2:?out dir}; shift 2
mkdir -p "$OUTD"
J=$(nproc)
G=""; [[ -d .devcarry/gtest/usr ]] && G="-DCMAKE_PREFIX_PATH=$PWD/.devcarry/gtest/usr -DGTest_DIR=$(ls -d $PWD/.devcarry/gtest/usr/lib/*/cmake/GTest | head -1)"
source "$(dirname "$0")/refresh_tree.sh"
refresh_tree "$BASE" build-base
[[ -n "${ALT:-}" ]] && refresh_tree "$ALT" build-alt
t0=$SECONDS
( cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_PTXAS_VERBOSE=ON -DFLASH4_GIT_COMMIT_OVERRIDE=new $G >/dev/null &&
  cmake --build build-gpu -j"$J" ) > "$OUTD/build-new.log" 2>&1 & p1=$!
( cmake -S "$BASE" -B build-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_BUILD_TESTS=OFF -DFLASH4_GIT_COMMIT_OVERRIDE=base >/dev/null &&
  cmake --build build-base -j"$J" ) > "$OUTD/build-base.log" 2>&1 & p2=$!
p3=""
if [[ -n "${ALT:-}" ]]; then  # optional third tree, benched as "alt"
  AT="-DFLASH4_BUILD_TESTS=OFF"; [[ "${ALT_TESTS:-0}" == 1 ]] && AT="-DFLASH4_BUILD_TESTS=ON $G"
  ( cmake -S "$ALT" -B build-alt -G Ninja -DCMAKE_BUILD_TYPE=Release $AT -DFLASH4_GIT_COMMIT_OVERRIDE=alt >/dev/null &&
    cmake --build build-alt -j"$J" ) > "$OUTD/build-alt.log" 2>&1 & p3=$!
fi
wait $p1 || { echo "new build failed"; tail -30 "$OUTD/build-new.log"; exit 1; }
wait $p2 || { echo "base build failed"; tail -30 "$OUTD/build-base.log"; exit 1; }
[[ -n "$p3" ]] && { wait $p3 || { echo "alt build failed"; tail -30 "$OUTD/build-alt.log"; exit 1; }; }
echo "builds: $((SECONDS - t0)) s"
grep -E 'bwd_kernel' -A2 "$OUTD/build-new.log" | grep -E 'spill|C75' | sort | uniq -c | head -20
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
  t0=$SECONDS
  timeout 300 build-gpu/flash4_tests --gtest_filter="${GTEST_FILTER:-GpuBwd*}" > "$OUTD/tests.log" 2>&1
  echo "tests rc=$? ($((SECONDS - t0)) s): $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUTD/tests.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]' "$OUTD/tests.log" | head -20
  if [[ "${ALT_TESTS:-0}" == 1 ]]; then
    timeout 300 build-alt/flash4_tests --gtest_filter="${GTEST_FILTER:-GpuBwd*}" > "$OUTD/tests-alt.log" 2>&1
    echo "alt tests rc=$?: $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUTD/tests-alt.log" | tr '\n' ' ')"
    grep -E '^\[  FAILED  \]' "$OUTD/tests-alt.log" | head -20
  fi
fi
ARGS=("$@"); [[ ${#ARGS[@]} -eq 0 ]] && ARGS=(--headdim 64,128 --seqlen 512,1024,2048,4096,8192,16384 --causal 0,1)
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in base new ${ALT:+alt}; do
    b=build-gpu; [[ $v == base ]] && b=build-base; [[ $v == alt ]] && b=build-alt
    $b/flash4 bench --mode "${MODE:-bwd}" "${ARGS[@]}" --json "$OUTD/ab.jsonl" > "$OUTD/bench-$v-$r.txt" 2>&1 ||
      { echo "bench $v failed"; tail -5 "$OUTD/bench-$v-$r.txt"; }
  done
done
python3 - "$OUTD/ab.jsonl" <<'PY'
import json, sys, collections, statistics
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("tflops") is None: continue
    key = (r.get("headdim"), r.get("causal"), r.get("seqlen"), r.get("deterministic", 0))
    rows[key][r.get("commit", "?")].append(r["tflops"])
alt = any("alt" in v for v in rows.values())
print("d  causal seqlen det | base (runs)     | new (runs)      | new/base" + (" | alt (runs)      | alt/base" if alt else ""))
for k in sorted(rows):
    b, n, a = rows[k].get("base", []), rows[k].get("new", []), rows[k].get("alt", [])
    if not b or not n: continue
    line = (f"{k[0]:<3} {k[1]} {k[2]:>6} {k[3]} | " + " ".join(f"{x:5.0f}" for x in b).ljust(15) + " | " +
            " ".join(f"{x:5.0f}" for x in n).ljust(15) + f" | {statistics.median(n)/statistics.median(b):.3f}")
    if a:
        line += " | " + " ".join(f"{x:5.0f}" for x in a).ljust(15) + f" | {statistics.median(a)/statistics.median(b):.3f}"
    print(line)
PY
