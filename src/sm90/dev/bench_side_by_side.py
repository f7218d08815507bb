# flash4 sm90 forward vs torch SDPA (cuDNN, FLASH=FA2) timed alternately in one
# process, so clock/power state is shared: bf16, B*S=16k, H=2048/d, (B,S,H,D)
# layout. Each measurement covers >= ~100 ms of GPU work; median of 5 rounds.
# Usage: python3 bench_side_by_side.py path/to/libsm90dev.so
import ctypes, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

lib = ctypes.CDLL(sys.argv[1])
lib.flash4_dev_sm90_fwd.restype = ctypes.c_int
lib.flash4_dev_sm90_fwd.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_void_p]

def timed(fn, n):
    e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
    fn()
    e0.record()
    for _ in range(n):
        fn()
    e1.record(); torch.cuda.synchronize()
    return e0.elapsed_time(e1) / n

print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(), flush=True)
print(f"{'d':4} {'causal':6} {'S':6} {'flash4':>8} {'cudnn':>8} {'fa2':>8} {'f4/cudnn':>9} {'maxdiff':>9}", flush=True)
for d in (64, 128):
    for causal in (0, 1):
        for S in (512, 1024, 2048, 4096, 8192, 16384):
            B, H = 16384 // S, 2048 // d
            q, k, v = [torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
            o = torch.empty_like(q)
            lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
            st = torch.cuda.current_stream().cuda_stream
            def f4():
                rc = lib.flash4_dev_sm90_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                                             lse.data_ptr(), B, S, H, d, causal, 1, st)
                if rc != 0:
                    raise RuntimeError(f"flash4 rc={rc}")
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            def sdpa(be):
                def run():
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=bool(causal))
                return run
            ref = sdpa(SDPBackend.CUDNN_ATTENTION)()
            f4(); torch.cuda.synchronize()
            maxdiff = (o.transpose(1, 2).float() - ref.float()).abs().max().item()
            impls = [f4, sdpa(SDPBackend.CUDNN_ATTENTION), sdpa(SDPBackend.FLASH_ATTENTION)]
            flops = 4 * B * H * S * S * d * (0.5 if causal else 1.0)
            reps = []
            for fn in impls:
                t = timed(fn, 3)
                reps.append(max(5, int(100.0 / max(t, 1e-3))))
            res = [[] for _ in impls]
            for r in range(5):
                for i, fn in enumerate(impls):
                    res[i].append(timed(fn, reps[i]))
            tf = [flops / (sorted(x)[len(x) // 2] * 1e-3) / 1e12 for x in res]
            print(f"{d:<4} {causal:<6} {S:<6} {tf[0]:8.1f} {tf[1]:8.1f} {tf[2]:8.1f} {tf[0]/tf[1]:9.3f} {maxdiff:9.2e}", flush=True)
