#!/bin/bash
MODE=fwd GTEST_FILTER="" ROUNDS=4 timeout 200 bash src/sm90/dev/run_ab_trees.sh $OUT/abc base=.devcarry/base c=.devcarry/c a=.devcarry/a -- --headdim 256 --seqlen 2048,4096,8192,16384 --causal 0,1 > $OUT/abc.txt 2>&1
echo rc=$? >> $OUT/abc.txt; cat $OUT/abc.txt; rm -f $OUT/abc/build-*.log $OUT/abc/bench-*.txt
