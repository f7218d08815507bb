#!/usr/bin/env python3
"""What flash4's options cost: forward and backward TFLOP/s of one shape with no mask,
causal, a sliding window, softcap, varlen, and a head dim between the kernels' (96),
through the PyTorch ops, in one process.

FLOPs count only the visible (query, key) pairs: 4 * D * H * pairs for the forward
(2.5x that for the backward), so a window's or a causal mask's skipped work is not
counted as done. Varlen: the same number of tokens split into sequences of random
lengths (mean = seqlen). Timing is bench/sdpa_compare.py's (CUDA events, warm-up,
median over --iters calls, inputs cycled over sets larger than L2).

Output: a table, and --json FILE appends one line per measurement (impl flash4-torch,
variant, mode, headdim, seqlen, batch, heads, tflops, ms, device, date, commit).
"""
import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sdpa_compare as sc  # noqa: E402

VARIANTS = ("plain", "causal", "window", "causal_window", "softcap", "varlen", "varlen_causal")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="flash4 option costs (forward and backward)")
    p.add_argument("--headdim", type=sc.int_list, default="64,96,128")
    p.add_argument("--seqlen", type=sc.int_list, default="4096")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--modes", default="fwd,bwd")
    p.add_argument("--window", type=int, default=512, help="left = right (causal: left only)")
    p.add_argument("--softcap", type=float, default=30.0)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--json", metavar="FILE")
    return p.parse_args(argv)


def visible_pairs(sq, sk, causal, left, right):
    """Number of (query, key) pairs a mask lets through (bottom-right aligned)."""
    off = sk - sq
    if causal:
        right = 0
    total = 0
    for i in range(sq):
        lo = 0 if left < 0 else max(0, i + off - left)
        hi = sk - 1 if right < 0 else min(sk - 1, i + off + right)
        total += max(0, hi - lo + 1)
    return total


def main(argv=None):
    args = parse_args(argv)
    import torch
    import flash4
    dev = torch.device("cuda")
    env = {"device": torch.cuda.get_device_name(0), "date": sc.utc_now(), "commit": sc.git_commit()}
    rows = []
    for d in args.headdim:
        heads = max(1, args.hidden // d)
        for s in args.seqlen:
            batch = max(1, args.tokens // s)
            n_sets = 3
            for variant in args.variants.split(","):
                causal = "causal" in variant
                window = (-1, -1)
                if "window" in variant:
                    window = (args.window, 0 if causal else args.window)
                softcap = args.softcap if variant == "softcap" else 0.0
                sets = []
                if variant.startswith("varlen"):
                    rng = random.Random(s)
                    lens = []
                    while sum(lens) < batch * s:
                        lens.append(rng.randint(max(1, s // 4), 2 * s - s // 4))
                    lens[-1] -= sum(lens) - batch * s
                    lens = [n for n in lens if n > 0]
                    cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))],
                                      dtype=torch.int32, device=dev)
                    pairs = sum(visible_pairs(n, n, causal, *window) for n in lens)
                    total = sum(lens)
                    for _ in range(n_sets):
                        q, k, v, do = (torch.randn(total, heads, d, device=dev, dtype=torch.bfloat16)
                                       for _ in range(4))
                        sets.append((q, k, v, do))

                    def fwd(q, k, v, cu=cu, lens=lens, causal=causal, window=window):
                        return flash4.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens),
                                                             causal=causal, window_size=window)
                else:
                    pairs = batch * visible_pairs(s, s, causal, *window)
                    for _ in range(n_sets):
                        q, k, v, do = (torch.randn(batch, s, heads, d, device=dev,
                                                   dtype=torch.bfloat16) for _ in range(4))
                        sets.append((q, k, v, do))

                    def fwd(q, k, v, causal=causal, window=window, softcap=softcap):
                        return flash4.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                                      softcap=softcap)
                flops_fwd = 4.0 * d * heads * pairs
                for mode in args.modes.split(","):
                    if mode == "fwd":
                        ms = sc.time_calls(torch, lambda i: fwd(*sets[i % n_sets][:3]), args, None)
                        flops = flops_fwd
                    else:
                        leaves = [[t.detach().requires_grad_() for t in st[:3]] for st in sets]
                        outs = [fwd(*lv) for lv in leaves]

                        def call(i, leaves=leaves, outs=outs):
                            for t in leaves[i % n_sets]:
                                t.grad = None
                            outs[i % n_sets].backward(sets[i % n_sets][3], retain_graph=True)
                        ms = sc.time_calls(torch, call, args, None)
                        flops = 2.5 * flops_fwd
                    row = dict(impl="flash4-torch", variant=variant, mode=mode, headdim=d, seqlen=s,
                               batch=batch, heads=heads, dtype="bf16", causal=int(causal),
                               window=list(window), softcap=softcap, ms=round(ms, 4),
                               tflops=round(flops / ms / 1e9, 1), **env)
                    rows.append(row)
                    print(f"{mode} d{d} s{s} {variant:14s} {ms:8.3f} ms {row['tflops']:7.1f} TFLOP/s",
                          flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
                del sets
                torch.cuda.empty_cache()
    print("\n| mode | d | S | " + " | ".join(args.variants.split(",")) + " |")
    print("|---|---|---|" + "---|" * len(args.variants.split(",")))
    for mode in args.modes.split(","):
        for d in args.headdim:
            for s in args.seqlen:
                vals = [next((f"{r['tflops']:.0f}" for r in rows if r["mode"] == mode and
                              r["headdim"] == d and r["seqlen"] == s and r["variant"] == v), "-")
                        for v in args.variants.split(",")]
                print(f"| {mode} | {d} | {s} | " + " | ".join(vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
