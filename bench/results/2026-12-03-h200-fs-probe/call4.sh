#!/bin/bash
# ncu of the default d128 backward main kernel: main vs next/dq-first-store (d128 non-causal 4k)
for t in base fs; do
  ( cd .devcarry/$t && cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_BUILD_TESTS=OFF >/dev/null && cmake --build build-gpu -j16 --target flash4_cli ) > $OUT/build-$t.log 2>&1 &
done
wait
for t in base fs; do
  ( cd .devcarry/$t && SKIP_BUILD=1 timeout 150 bash src/sm90/dev/run_ncu_bwd.sh $OUT/ncu-$t 128:0:4096:0 ) 2>&1 | tee -a $OUT/summary.txt
done
for t in base fs; do python3 src/sm90/dev/ncu_stalls.py $OUT/ncu-$t/bwd128c0s4096det0.sass.csv 60 > $OUT/stalls-$t.txt 2>&1; done
cd $OUT && rm -f ncu-*/*.ncu-rep && gzip ncu-*/*.sass.csv && tar czf ncu.tgz ncu-* build-*.log && rm -rf ncu-* build-*.log
