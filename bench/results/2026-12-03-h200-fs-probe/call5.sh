#!/bin/bash
export FLASH4_GIT_COMMIT=0dece80
S=$OUT/summary.txt
{ timeout 270 env GTEST_FILTER='GpuBwd*:Api*' TEST_TIMEOUT=90 bash src/sm90/dev/run_ab_trees.sh $OUT/ab base=.devcarry/base fsp=.devcarry/fsp rotp=.devcarry/rotp -- --headdim 64,128 --seqlen 512,1024,2048,4096,16384 --causal 0,1; } 2>&1 | tee -a $S
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
san() { local tree=$1 tool=$2 filt=$3; timeout 45 $SAN --tool $tool --error-exitcode 99 --print-limit 20 build-ab-$tree/flash4_tests --gtest_filter="$filt" > $OUT/san-$tree-$tool.log 2>&1; echo "$tree $tool rc=$? $(grep -E '^\[  (PASSED|FAILED)  \]|ERROR SUMMARY|RACECHECK SUMMARY|0 tests' $OUT/san-$tree-$tool.log | tr '\n' ' ')" | tee -a $S; }
F='GpuBwd/GpuBwdBase.*/bf16_113x203_d64:GpuBwd/GpuBwdBase.*/fp16_113x203_d128_causal:GpuBwd/GpuBwdVarlen.*/v1_*'
san rotp racecheck "$F"
san rotp synccheck "$F"
cd $OUT && tar czf logs.tgz ab san-*.log && rm -rf ab san-*.log
