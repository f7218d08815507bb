#!/bin/bash
# Call 6: ncu of flash4 (730ac3d) vs FlashAttention-3 backward, d64 / d128 non-causal 4k
export FLASH4_GIT_COMMIT=730ac3d
T0=$SECONDS
[[ -d build-fa3src/hopper ]] || cp -r .devcarry/fa3 build-fa3src
cp .devcarry/fa3/README.md build-fa3src/README.md
( MAX_JOBS=12 bash bench/build_fa3.sh build-fa3src 64,128 > $OUT/fa3-build.log 2>&1; echo "fa3 build rc=$? at $((SECONDS - T0)) s" > $OUT/fa3-rc.txt ) & pf=$!
mkdir -p $OUT/ncu
bash src/sm90/dev/run_ncu_bwd.sh $OUT/ncu 128:0:4096:0 64:0:4096:0 > $OUT/ncu-flash4.txt 2>&1
cat $OUT/ncu-flash4.txt
wait $pf; cat $OUT/fa3-rc.txt
M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
M=$M,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_issued.avg.pct_of_peak_sustained_active
M=$M,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__cycles_active.avg
for d in 128 64; do
  n=fa3bwd${d}c0s4096; t0=$SECONDS
  PYTHONPATH=build-fa3src/hopper timeout 150 ncu --clock-control none --kernel-name-base demangled -k regex:FlashAttnBwdSm90 --launch-skip 1 -c 1 --import-source yes \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --metrics "$M" -f -o $OUT/ncu/$n python3 .devcarry/fa3_one.py $d 0 4096 > $OUT/ncu/$n.log 2>&1 || { echo "ncu $n failed"; tail -5 $OUT/ncu/$n.log; continue; }
  ncu --import $OUT/ncu/$n.ncu-rep --page source --csv --print-source sass > $OUT/ncu/$n.sass.csv 2>&1
  ncu --import $OUT/ncu/$n.ncu-rep --page details > $OUT/ncu/$n.details.txt 2>&1
  echo "$n: $((SECONDS - t0)) s"
  grep -E "Duration|hmma|pipe_xu|inst_issued|mem_shared|Compute \(SM\) Throughput" $OUT/ncu/$n.details.txt | head -12
done
for f in $OUT/ncu/*.sass.csv; do python3 src/sm90/dev/ncu_stalls.py $f 25 > ${f%.sass.csv}.stalls.txt 2>&1; done
rm -f $OUT/ncu/*.ncu-rep
(cd $OUT && tar czf ncu.tgz ncu && rm -rf ncu); gzip -f $OUT/fa3-build.log
echo "total $((SECONDS - T0)) s"
