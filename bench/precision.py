#!/usr/bin/env python3
"""Forward precision and the cost of FA4's software exp2: flash4 with exp2_emulation off
(-1) and on (1), torch SDPA's cuDNN and FlashAttention-2 backends, and the same-precision
torch reference, each against a float64 reference on the same inputs; plus the forward
time of flash4 with the emulation off and on (same process, CUDA events, median).

Errors are max |out - ref64| and mean |out - ref64| over the whole output; "ratio" is
max error / the same-precision reference's max error (FlashAttention's rule passes at
<= 2). Inputs: randn * std, bf16 (or --dtype fp16), B=1, H=8 (for the errors; the float64
reference is computed head by head) and B*S = 16k tokens, hidden 2048 (for the timing).

Output: a markdown table, and --json FILE appends one line per (shape, impl).
"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import sdpa_compare as sc  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="flash4 precision (exp2 emulation on/off) vs cuDNN")
    p.add_argument("--headdim", type=sc.int_list, default="64,128")
    p.add_argument("--seqlen", type=sc.int_list, default="1024,4096")
    p.add_argument("--std", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--json", metavar="FILE")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import flash4
    from attn_ref import attention_ref

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = torch.device("cuda")
    env = {"device": torch.cuda.get_device_name(0), "date": sc.utc_now(), "commit": sc.git_commit()}
    rows = []
    for d in args.headdim:
        for s in args.seqlen:
            for causal in (False, True):
                for std in args.std:
                    torch.manual_seed(1000 * d + s + int(causal) + int(10 * std))
                    B, H = 1, 8
                    q, k, v = (torch.randn(B, s, H, d, device=dev, dtype=dt) * (std if i < 2 else 1.0)
                               for i in range(3))
                    ref = torch.empty(B, s, H, d, device=dev, dtype=torch.float64)
                    low = torch.empty(B, s, H, d, device=dev, dtype=dt)
                    for h in range(H):  # head by head: the float64 scores of one head at a time
                        sl = slice(h, h + 1)
                        ref[:, :, sl] = attention_ref(q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                                      causal=causal)[0]
                        low[:, :, sl] = attention_ref(q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                                      causal=causal, upcast=False)[0]
                    outs = {
                        "flash4 exp2 MUFU": flash4.flash_attn_func(q, k, v, causal=causal,
                                                                   exp2_emulation=-1),
                        "flash4 exp2 1/4 emulated": flash4.flash_attn_func(q, k, v, causal=causal,
                                                                           exp2_emulation=1),
                        "torch same-precision": low,
                    }
                    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                    for name, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                                          ("sdpa-flash2", SDPBackend.FLASH_ATTENTION)):
                        try:
                            with sdpa_kernel(backend):
                                outs[name] = F.scaled_dot_product_attention(
                                    qt, kt, vt, is_causal=causal).transpose(1, 2)
                        except RuntimeError as e:  # no kernel for this shape
                            print(f"{name}: {str(e).splitlines()[0]}")
                    low_err = (low.double() - ref).abs().max().item()
                    for name, o in outs.items():
                        err = (o.double() - ref).abs()
                        row = dict(impl=name, headdim=d, seqlen=s, causal=int(causal), std=std,
                                   dtype=args.dtype, max_err=err.max().item(),
                                   mean_err=err.mean().item(),
                                   ratio=err.max().item() / low_err if low_err > 0 else math.nan,
                                   **env)
                        rows.append(row)
                        print(f"d{d} s{s} causal={int(causal)} std={std} {name:26s} "
                              f"max {row['max_err']:.3e} mean {row['mean_err']:.3e} "
                              f"ratio {row['ratio']:.2f}", flush=True)
                        if args.json:
                            with open(args.json, "a") as f:
                                f.write(json.dumps(row) + "\n")
            # Timing: B*S = 16k tokens, hidden 2048, emulation off vs on.
            heads, batch = 2048 // d, max(1, 16384 // s)
            sets = [[torch.randn(batch, s, heads, d, device=dev, dtype=dt) for _ in range(3)]
                    for _ in range(3)]
            for causal in (False, True):
                flops = 4.0 * batch * heads * s * s * d / (2 if causal else 1)
                for emu in (-1, 1):
                    ms = sc.time_calls(torch, lambda i: flash4.flash_attn_func(
                        *sets[i % 3], causal=causal, exp2_emulation=emu), args, None)
                    row = dict(impl="flash4-torch", mode="fwd", headdim=d, seqlen=s,
                               causal=int(causal), batch=batch, heads=heads, exp2_emulation=emu,
                               ms=round(ms, 4), tflops=round(flops / ms / 1e9, 1), **env)
                    rows.append(row)
                    print(f"time d{d} s{s} causal={int(causal)} exp2_emulation={emu:2d} "
                          f"{ms:.3f} ms {row['tflops']} TFLOP/s", flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
            del sets
    print("\n| d | S | causal | std | impl | max err | mean err | max err / same-precision |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "max_err" in r:
            print(f"| {r['headdim']} | {r['seqlen']} | {r['causal']} | {r['std']} | {r['impl']} | "
                  f"{r['max_err']:.2e} | {r['mean_err']:.2e} | {r['ratio']:.2f} |")
    print("\n| d | S | causal | TFLOP/s MUFU | TFLOP/s 1/4 emulated | emulated/MUFU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("exp2_emulation") == -1:
            on = next(x for x in rows if x.get("exp2_emulation") == 1 and x["headdim"] == r["headdim"]
                      and x["seqlen"] == r["seqlen"] and x["causal"] == r["causal"])
            print(f"| {r['headdim']} | {r['seqlen']} | {r['causal']} | {r['tflops']} | {on['tflops']} | "
                  f"{on['tflops'] / r['tflops']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
