# A/B timing of the sm90 forward: this tree's library (new) against a
# build of an earlier tree (old, plain options only), plus the new options
# (softcap, sliding window, varlen) on the same shapes, timed alternately in
# one process (shared clock/power state), >= ~100 ms per measurement, median
# of 5 rounds. bf16, B*S = 16k tokens, H = 2048/d.
# Usage: python3 bench_ab.py new/libsm90dev.so old/libsm90dev.so [S,S,...]
import ctypes, sys
import torch

def load(path, ex):
    lib = ctypes.CDLL(path)
    if ex:
        f = lib.flash4_dev_sm90_fwd_ex
        f.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    else:
        f = lib.flash4_dev_sm90_fwd
        f.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_void_p]
    f.restype = ctypes.c_int
    return f

new = load(sys.argv[1], True)
old = load(sys.argv[2], False)
seqlens = [int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1024, 4096, 16384]

def timed(fn, n):
    e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
    fn()
    e0.record()
    for _ in range(n):
        fn()
    e1.record(); torch.cuda.synchronize()
    return e0.elapsed_time(e1) / n

def visible_pairs(S, causal, left, right):
    # keys visible per query i: [max(0, i-left), min(S-1, i+right)] (Sq == Sk)
    i = torch.arange(S, dtype=torch.float64)
    lo = (i - left).clamp(min=0) if left >= 0 else torch.zeros_like(i)
    r = 0 if causal else right
    hi = (i + r).clamp(max=S - 1) if r >= 0 else torch.full_like(i, S - 1)
    return float((hi - lo + 1).clamp(min=0).sum())

print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
print("TFLOP/s over visible (query, key) pairs, 4*d flops each; win = left 512 (+ right 512 when not causal)")
print(f"{'d':4} {'causal':6} {'S':6} {'old':>8} {'new':>8} {'new/old':>8} {'softcap':>8} {'win':>8} {'varlen':>8} {'vl+win+cap':>10}", flush=True)
for d in (64, 128):
    for causal in (0, 1):
        for S in seqlens:
            B, H = 16384 // S, 2048 // d
            q, k, v = [torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
            o = torch.empty_like(q)
            lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
            cu = torch.arange(0, B + 1, device="cuda", dtype=torch.int32) * S
            st = torch.cuda.current_stream().cuda_stream
            win = (512, -1 if causal else 512)
            def mk_new(cap, left, right, varlen):
                def run():
                    rc = new(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), B, S, H, d,
                             causal, 1, cap, left, right, cu.data_ptr() if varlen else None, st)
                    if rc != 0:
                        raise RuntimeError(f"flash4 rc={rc}")
                return run
            def run_old():
                rc = old(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), B, S, H, d, causal, 1, st)
                if rc != 0:
                    raise RuntimeError(f"flash4 old rc={rc}")
            impls = [run_old, mk_new(0.0, -1, -1, False), mk_new(30.0, -1, -1, False), mk_new(0.0, win[0], win[1], False),
                     mk_new(0.0, -1, -1, True), mk_new(30.0, win[0], win[1], True)]
            pairs_full = B * H * visible_pairs(S, causal, -1, -1)
            pairs_win = B * H * visible_pairs(S, causal, win[0], win[1])
            pairs = [pairs_full, pairs_full, pairs_full, pairs_win, pairs_full, pairs_win]
            # new == old bitwise on the plain problem (same arithmetic)
            run_old(); o_old = o.clone(); mk_new(0.0, -1, -1, False)(); torch.cuda.synchronize()
            same = torch.equal(o_old, o)
            reps = []
            for fn in impls:
                t = timed(fn, 3)
                reps.append(max(5, int(100.0 / max(t, 1e-3))))
            res = [[] for _ in impls]
            for r in range(5):
                for i, fn in enumerate(impls):
                    res[i].append(timed(fn, reps[i]))
            tf = [4 * d * pairs[i] / (sorted(x)[len(x) // 2] * 1e-3) / 1e12 for i, x in enumerate(res)]
            print(f"{d:<4} {causal:<6} {S:<6} {tf[0]:8.1f} {tf[1]:8.1f} {tf[1]/tf[0]:8.3f} {tf[2]:8.1f} {tf[3]:8.1f} {tf[4]:8.1f} {tf[5]:10.1f}"
                  f"{'' if same else '  (new != old bitwise!)'}", flush=True)
