#!/bin/bash
# ncu source-level stall samples and unit counters for backward (MODE=bwd,
# default) or forward (MODE=fwd) kernels, on the device: builds the CLI
# (build-gpu, incremental on a warm machine), then for each case
# "d:causal:seqlen:det" (default 128:0:16384:0; det is ignored for the forward)
# profiles one launch of the main kernel (after one warm-up launch) and exports
# the per-SASS sampling table (.sass.csv; summarise it with ncu_stalls.py, map
# forward phases with ncu_fwd_phases.py) and the section details (.details.txt).
# Usage (repo root): [MODE=fwd] [SKIP_BUILD=1] bash src/sm90/dev/run_ncu_bwd.sh OUTDIR [case ...]
set -o pipefail
OUTD=${1:?out dir}; shift
mkdir -p "$OUTD"
CASES=("$@"); [[ ${#CASES[@]} -eq 0 ]] && CASES=(128:0:16384:0)
t0=$SECONDS
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  ( cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_BUILD_TESTS=OFF >/dev/null &&
    cmake --build build-gpu -j"$(nproc)" --target flash4_cli ) > "$OUTD/build.log" 2>&1 ||
    { tail -30 "$OUTD/build.log"; exit 1; }
fi
echo "build: $((SECONDS - t0)) s"
M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
M=$M,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_issued.avg.pct_of_peak_sustained_active
M=$M,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__cycles_active.avg
MODE=${MODE:-bwd}
for c in "${CASES[@]}"; do
  IFS=: read -r d causal s det <<< "$c"
  n="${MODE}${d}c${causal}s${s}"; EXTRA=()
  [[ $MODE == bwd ]] && { n="${n}det${det}"; EXTRA=(--deterministic "$det"); }
  t0=$SECONDS
  ncu --clock-control none -k regex:"^${MODE}_kernel\$" --launch-skip 1 -c 1 --import-source yes \
      --section SourceCounters --section WarpStateStats --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --metrics "$M" \
      -f -o "$OUTD/$n" build-gpu/flash4 bench --mode "$MODE" --headdim "$d" --seqlen "$s" \
      --causal "$causal" "${EXTRA[@]}" --warmup 1 --iters 1 > "$OUTD/$n.log" 2>&1 ||
      { echo "ncu $n failed"; tail -5 "$OUTD/$n.log"; continue; }
  ncu --import "$OUTD/$n.ncu-rep" --page source --csv --print-source sass > "$OUTD/$n.sass.csv" 2>&1
  ncu --import "$OUTD/$n.ncu-rep" --page details > "$OUTD/$n.details.txt" 2>&1
  echo "$n: $((SECONDS - t0)) s"
  grep -E "Duration|hmma|pipe_xu|inst_issued|mem_shared|Compute \(SM\) Throughput" "$OUTD/$n.details.txt" | head -12
done
