#!/bin/bash
# Clock and power of the GPU while flash4's forward and cuDNN's (torch SDPA)
# run the same long shape back to back for a few seconds each: is the long
# forward bound by power (the SM clock drops) rather than by a unit?
# nvidia-smi samples every 50 ms into smi.csv; phases.txt has the markers.
# Usage (repo root, on the device): bash src/sm90/dev/run_clock_probe.sh OUTDIR [HEADDIM] [SEQLENS]
set -o pipefail
OUTD=${1:?out dir}; D=${2:-128}; SEQS=${3:-4096,16384}; mkdir -p "$OUTD"
( cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASH4_BUILD_TESTS=OFF >/dev/null &&
  cmake --build build-gpu -j"$(nproc)" --target flash4_cli ) > "$OUTD/build.log" 2>&1 || { tail -20 "$OUTD/build.log"; exit 1; }
mark() { echo "$(date '+%Y/%m/%d %H:%M:%S.%3N') $*" >> "$OUTD/phases.txt"; }
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv,noheader -lms 50 > "$OUTD/smi.csv" 2>&1 & smi=$!
sleep 1
for s in ${SEQS//,/ }; do
  iters=$(( 900 * 16384 / s ))   # about 3 s of forward calls at d128 (time per call ~ seqlen)
  mark "flash4 start S=$s"
  build-gpu/flash4 bench --headdim "$D" --seqlen "$s" --causal 0 --warmup 50 --iters "$iters" | tail -2 | tee -a "$OUTD/phases.txt"
  mark "flash4 end S=$s"
  sleep 1
  mark "cudnn start S=$s"
  python3 - "$D" "$s" "$iters" <<'PY' | tee -a "$OUTD/phases.txt"
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
D, S, n = map(int, sys.argv[1:])
B, H = 16384 // S, 2048 // D
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    for _ in range(50): F.scaled_dot_product_attention(q, k, v)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n): F.scaled_dot_product_attention(q, k, v)
    e1.record(); torch.cuda.synchronize()
    ms = e0.elapsed_time(e1) / n
print(f"cudnn d{D} S{S}: {ms:.4f} ms/call, {4 * B * H * S * S * D / ms / 1e9:.1f} TFLOP/s (mean of {n})")
PY
  mark "cudnn end S=$s"
  sleep 1
done
kill $smi
python3 - "$OUTD" <<'PY' | tee "$OUTD/summary.txt"
import sys, datetime, statistics
d = sys.argv[1]
def t(s): return datetime.datetime.strptime(s.strip(), "%Y/%m/%d %H:%M:%S.%f")
smi = []
for line in open(f"{d}/smi.csv"):
    f = line.split(",")
    try: smi.append((t(f[0]), float(f[1].split()[0]), float(f[3].split()[0]), f[5].strip()))
    except Exception: pass
marks = []
for l in open(f"{d}/phases.txt"):
    try: marks.append((t(l[:23]), l[24:].strip()))
    except ValueError: pass
for (t0, a), (t1, b) in zip(marks, marks[1:]):
    if " start " not in a or " end " not in b: continue
    # busy samples only (the phase also holds start-up: python, allocation)
    xs = [x for x in smi if t0 <= x[0] <= t1 and x[2] > 400]
    if xs:
        print(f"{a.replace(' start', ''):<20} SM clock median {statistics.median(x[1] for x in xs):.0f} MHz "
              f"(min {min(x[1] for x in xs):.0f}), power median {statistics.median(x[2] for x in xs):.0f} W, "
              f"throttle {sorted(set(x[3] for x in xs))} ({len(xs)} busy samples of 50 ms)")
PY
