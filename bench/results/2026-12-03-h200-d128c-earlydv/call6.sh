#!/bin/bash
# Call 6: base=main bf295d1 (= f12ddc4 code), a = d128 causal bwd kEarlyDV + d256 fwd vote+rowsums, b = d128 causal bwd kEarlyDV + d256 fwd V wait late
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
GTEST_FILTER="GpuBwd*" ROUNDS=2 TEST_TIMEOUT=120 timeout 260 bash src/sm90/dev/run_ab_trees.sh $OUT/abb \
  base=.devcarry/base a=.devcarry/a b=.devcarry/b -- --headdim 128 --seqlen 1024,2048,4096,8192,16384 --causal 1 > $OUT/abb.txt 2>&1
echo rc=$? >> $OUT/abb.txt; cat $OUT/abb.txt
MODE=fwd GTEST_FILTER="GpuFwd*" ROUNDS=3 TEST_TIMEOUT=100 timeout 170 bash src/sm90/dev/run_ab_trees.sh $OUT/abf \
  base=.devcarry/base a=.devcarry/a b=.devcarry/b -- --headdim 256 --seqlen 1024,2048,4096,8192,16384 --causal 0,1 > $OUT/abf.txt 2>&1
echo rc=$? >> $OUT/abf.txt; cat $OUT/abf.txt
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for t in a b; do
  timeout 60 $SAN --tool racecheck --error-exitcode 99 build-ab-$t/flash4_tests \
    --gtest_filter='GpuBwd/GpuBwdBase.*/fp16_113x203_d128_causal:GpuBwd/GpuBwdBase.*/bf16_113x203_d128_causal:GpuFwd/GpuFwdManyTiles.*/d256_300x100_causal:GpuFwd/GpuFwdBase.*/113x203_d256*' > $OUT/race-$t.log 2>&1
  echo "racecheck $t rc=$? $(grep -E 'RACECHECK SUMMARY|PASSED|FAILED' $OUT/race-$t.log | tr '\n' ' ')"
  timeout 40 $SAN --tool synccheck --error-exitcode 99 build-ab-$t/flash4_tests \
    --gtest_filter='GpuBwd/GpuBwdBase.*/bf16_113x203_d128_causal:GpuFwd/GpuFwdBase.*/113x203_d256*' > $OUT/sync-$t.log 2>&1
  echo "synccheck $t rc=$? $(grep -E 'ERROR SUMMARY|PASSED|FAILED' $OUT/sync-$t.log | tr '\n' ' ')"
done
for d in abb abf; do (cd $OUT/$d && for f in build-*.log tests-*.log; do [[ -f $f ]] && gzip -f $f; done; tar czf logs.tgz *.gz bench-*.txt 2>/dev/null && rm -f *.gz bench-*.txt); done
(cd $OUT && tar czf san.tgz race-*.log sync-*.log && rm -f race-*.log sync-*.log)
