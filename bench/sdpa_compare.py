#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention backends on the shapes of
`flash4 bench` and writes JSON lines in the same format, so the two can be
put side by side.

Backends: FLASH_ATTENTION (FlashAttention-2 code, impl "sdpa-flash2"),
CUDNN_ATTENTION ("sdpa-cudnn") and EFFICIENT_ATTENTION ("sdpa-efficient").

Shapes (same as flash4 bench): layout (batch, seqlen, heads, headdim),
Sq = Sk = seqlen, batch = tokens // seqlen, heads = hidden // headdim.
Tensors are allocated as (B, S, H, D) and handed to torch as the (B, H, S, D)
view q.transpose(1, 2). torch's is_causal is top-left aligned; flash4's causal
is bottom-right aligned; with Sq == Sk the two masks are the same.

Timing (default --timer events, the method of flash4 bench): seeded random
normal inputs, enough input sets to exceed 100 MB rotated among, warm-up
calls, then CUDA events around each call and the median. --timer do_bench
uses triton.testing.do_bench(return_mode="median") instead.
FLOPs: 4*B*H*Sq*Sk*D, halved for causal, x2.5 for the backward (timed alone).

--flash4-json FILE reads `flash4 bench --json` lines and prints a table of
TFLOP/s with the ratios flash4/sdpa-flash2 and flash4/sdpa-cudnn.
--compare FILE does the same from SDPA lines already measured (no GPU needed).

This file imports torch only when it measures, so `--help` and
`python3 -m py_compile` work on machines without torch.
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys

BACKENDS = ("flash2", "cudnn", "efficient")
SET_BYTES_TARGET = 100 << 20  # rotate input sets until this many bytes are in use


def int_list(text):
    try:
        vals = [int(x) for x in text.split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return vals


def causal_list(text):
    vals = [x for x in text.split(",") if x != ""]
    if not vals or any(v not in ("0", "1") for v in vals):
        raise argparse.ArgumentTypeError(f"--causal takes 0, 1 or 0,1: {text!r}")
    return [v == "1" for v in vals]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time torch SDPA backends (FlashAttention-2, cuDNN, memory-efficient) on the "
                    "shapes of `flash4 bench`; write JSON lines in its format.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--headdim", type=int_list, default="64,128", help="head dims, comma-separated")
    p.add_argument("--seqlen", type=int_list, default="512,1024,2048,4096,8192,16384",
                   help="sequence lengths (Sq = Sk)")
    p.add_argument("--causal", type=causal_list, default="0,1", help="0, 1 or 0,1")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--mode", choices=("fwd", "bwd"), default="fwd")
    p.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seqlen (at least 1)")
    p.add_argument("--hidden", type=int, default=2048, help="heads = hidden // headdim (at least 1)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated subset of " + ",".join(BACKENDS))
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per shape (events timer)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per shape; median (events timer)")
    p.add_argument("--timer", choices=("events", "do_bench"), default="events")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="append one JSON line per shape and backend")
    p.add_argument("--flash4-json", metavar="FILE",
                   help="flash4 bench --json output to print side by side with the SDPA figures")
    p.add_argument("--compare", metavar="SDPA_JSON",
                   help="measure nothing: compare SDPA lines from this file with --flash4-json")
    a = p.parse_args(argv)
    bad = [b for b in a.backends.split(",") if b not in BACKENDS]
    if bad:
        p.error(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    if a.compare and not a.flash4_json:
        p.error("--compare needs --flash4-json")
    if a.warmup < 0 or a.iters < 1:
        p.error("--warmup must be >= 0 and --iters >= 1")
    return a


# ---- environment facts (same fields as flash4 bench) ------------------------

def driver_release():
    """NVIDIA driver release from /proc/driver/nvidia/version, or "unknown"."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            words = f.readline().split()
    except OSError:
        return "unknown"
    after = False
    for w in words:
        if w == "Module":
            after = True
        elif after and w[:1].isdigit() and "." in w:
            return w
    return "unknown"


def git_commit():
    env = os.environ.get("FLASH4_GIT_COMMIT", "")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def attention_flops(b, h, s, d, causal, mode):
    f = 4.0 * b * h * s * s * d
    if causal:
        f *= 0.5
    if mode == "bwd":
        f *= 2.5
    return f


def shape_of(args, seqlen, headdim):
    return max(1, args.tokens // seqlen), max(1, args.hidden // headdim)


# ---- measurement ----------------------------------------------------------------

def measure(args):
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"sdpa_compare: torch is not importable ({e}); nothing measured", file=sys.stderr)
        return None, 2
    if not torch.cuda.is_available():
        print("sdpa_compare: no CUDA device visible to torch; nothing measured", file=sys.stderr)
        return None, 2
    do_bench = None
    if args.timer == "do_bench":
        try:
            from triton.testing import do_bench
        except ImportError as e:
            print(f"sdpa_compare: --timer do_bench needs triton ({e})", file=sys.stderr)
            return None, 2

    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    backend_enum = {"flash2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION}
    backends = args.backends.split(",")
    ctx = {
        "device": torch.cuda.get_device_name(dev),
        "driver": driver_release(),
        "cuda": str(torch.version.cuda),
        "cuda_runtime": str(torch.version.cuda),
        "commit": git_commit(),
        "torch": torch.__version__,
        "cudnn": str(torch.backends.cudnn.version()),
    }
    timer_text = (f"cuda-events median of {args.iters} after {args.warmup} warm-up" if args.timer == "events"
                  else "triton do_bench median")
    print(f"# sdpa_compare: {ctx['device']}, driver {ctx['driver']}, torch {ctx['torch']} (CUDA {ctx['cuda']}, "
          f"cuDNN {ctx['cudnn']}), mode {args.mode}, dtype {args.dtype}, timer {timer_text}", flush=True)
    print(f"{'impl':<16} {'mode':<4} {'d':>4} {'causal':>6} {'seqlen':>7} {'batch':>6} {'heads':>6} "
          f"{'ms':>10} {'TFLOP/s':>9}", flush=True)

    gen = torch.Generator(device=dev)
    gen.manual_seed(0x5EED)
    rows, failed, measured = [], 0, 0
    out_file = open(args.json, "a") if args.json else None
    try:
        for d in args.headdim:
            for causal in args.causal:
                for s in args.seqlen:
                    b, h = shape_of(args, s, d)
                    elem_bytes = 2 * b * s * h * d
                    per_set = (4 if args.mode == "bwd" else 3) * elem_bytes
                    n_sets = 1 if per_set >= SET_BYTES_TARGET else min(8, SET_BYTES_TARGET // per_set + 1)
                    need_grad = args.mode == "bwd"
                    sets = []
                    for _ in range(n_sets):
                        q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=dtype, generator=gen)
                                   .requires_grad_(need_grad) for _ in range(3))
                        do = torch.randn(b, s, h, d, device=dev, dtype=dtype, generator=gen) if need_grad else None
                        sets.append((q, k, v, do))
                    scale = 1.0 / math.sqrt(d)
                    for name in backends:
                        impl = "sdpa-" + name
                        row = {"impl": impl, "mode": args.mode, "headdim": d, "causal": bool(causal),
                               "seqlen": s, "batch": b, "heads": h, "dtype": args.dtype}
                        try:
                            with sdpa_kernel(backend_enum[name]):
                                def fwd(i):
                                    q, k, v, _ = sets[i % n_sets]
                                    return F.scaled_dot_product_attention(
                                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        is_causal=bool(causal), scale=scale)
                                if args.mode == "fwd":
                                    call = fwd
                                else:
                                    outs = [fwd(i) for i in range(n_sets)]

                                    def call(i):
                                        for t in sets[i % n_sets][:3]:
                                            t.grad = None
                                        outs[i % n_sets].backward(sets[i % n_sets][3].transpose(1, 2),
                                                                  retain_graph=True)
                                ms = time_calls(torch, call, args, do_bench)
                            row.update(ms=round(ms, 6),
                                       tflops=round(attention_flops(b, h, s, d, causal, args.mode) / ms / 1e9, 3),
                                       status="ok")
                            measured += 1
                        except Exception as e:  # a backend without a kernel for this shape
                            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                            unsupported = "no available kernel" in msg.lower() or "not supported" in msg.lower()
                            row.update(ms=None, tflops=None, status="not_supported" if unsupported else "error",
                                       reason=msg)
                            failed += 1
                        row.update(ctx)
                        row["date"] = utc_now()
                        row["timer"] = timer_text
                        rows.append(row)
                        shown = (f"{row['ms']:10.4f} {row['tflops']:9.1f}" if row["status"] == "ok"
                                 else f"{'-':>10} {'-':>9}  {row['status'].upper()}: {row['reason']}")
                        print(f"{impl:<16} {args.mode:<4} {d:>4} {int(causal):>6} {s:>7} {b:>6} {h:>6} {shown}",
                              flush=True)
                        if out_file:
                            out_file.write(json.dumps(row) + "\n")
                            out_file.flush()
                    del sets
                    torch.cuda.empty_cache()
    finally:
        if out_file:
            out_file.close()
    if failed:
        print(f"# {failed} backend/shape pair(s) not measured (see the rows above)", flush=True)
    # A backend without a kernel for some shape is a fact to record, not a failure;
    # measuring nothing at all is.
    return rows, (0 if measured else 1)


def time_calls(torch, call, args, do_bench):
    if do_bench is not None:
        counter = [0]

        def step():
            call(counter[0])
            counter[0] += 1
        return float(do_bench(step, return_mode="median"))
    for i in range(args.warmup):
        call(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters)]
    for i in range(args.iters):
        starts[i].record()
        call(i)
        stops[i].record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in zip(starts, stops))
    n = len(ms)
    return ms[n // 2] if n % 2 else 0.5 * (ms[n // 2 - 1] + ms[n // 2])


# ---- side-by-side table -----------------------------------------------------

def read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                print(f"sdpa_compare: {path}:{n}: skipped, not JSON ({e})", file=sys.stderr)
    return rows


def key_of(r):
    return (r.get("mode"), r.get("dtype"), int(r.get("headdim", 0)), bool(r.get("causal")), int(r.get("seqlen", 0)))


def compare(flash4_rows, sdpa_rows):
    """Prints one markdown table per (mode, dtype): TFLOP/s and ratios. Later lines win."""
    f4, sd = {}, {}
    for r in flash4_rows:
        if str(r.get("impl", "")).startswith("flash4"):
            f4[key_of(r)] = r
    for r in sdpa_rows:
        if str(r.get("impl", "")).startswith("sdpa-"):
            sd[(key_of(r), r["impl"])] = r
    devices = {r.get("device") for r in list(f4.values()) + [v for v in sd.values()]}
    if len(devices) > 1:
        print(f"WARNING: figures from different devices {sorted(map(str, devices))}: ratios are not meaningful")
    impls = sorted({i for (_, i) in sd}, key=lambda x: ("sdpa-flash2", "sdpa-cudnn", "sdpa-efficient").index(x)
                   if x in ("sdpa-flash2", "sdpa-cudnn", "sdpa-efficient") else 9)

    def tf(r):
        return r.get("tflops") if r and r.get("status", "ok") == "ok" and r.get("tflops") else None

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"

    keys = sorted(set(f4) | {k for (k, _) in sd})
    groups = sorted({(k[0], k[1]) for k in keys})
    for mode, dtype in groups:
        print(f"\n{mode}, {dtype}: TFLOP/s (ratio = flash4 / other)\n")
        head = ["d", "causal", "seqlen", "flash4"] + impls + ["flash4/flash2", "flash4/cudnn"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for k in keys:
            if (k[0], k[1]) != (mode, dtype):
                continue
            r4 = f4.get(k)
            a = tf(r4)
            cells = [str(k[2]), str(int(k[3])), str(k[4]),
                     (fmt(a, ".1f") + (f" ({r4['impl'][7:]})" if a is not None else "")) if r4 else "-"]
            for i in impls:
                cells.append(fmt(tf(sd.get((k, i))), ".1f"))
            for i in ("sdpa-flash2", "sdpa-cudnn"):
                b = tf(sd.get((k, i)))
                cells.append(fmt(a / b if a is not None and b else None, ".2f"))
            print("| " + " | ".join(cells) + " |")


def main(argv=None):
    args = parse_args(argv)
    rc = 0
    if args.compare:
        sdpa_rows = read_jsonl(args.compare)
    else:
        sdpa_rows, rc = measure(args)
        if sdpa_rows is None:
            return rc
    if args.flash4_json:
        if not os.path.exists(args.flash4_json):
            print(f"sdpa_compare: {args.flash4_json} does not exist: no side-by-side table", file=sys.stderr)
            return rc or 1
        compare(read_jsonl(args.flash4_json), sdpa_rows)
    return rc


if __name__ == "__main__":
    sys.exit(main())
