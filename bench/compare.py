#!/usr/bin/env python3
"""flash4 (through its PyTorch ops) against torch SDPA's cuDNN, FlashAttention-2 and
memory-efficient backends and a Triton flash-attention forward, in one process on
identical inputs.

Shapes are the FlashAttention-3 paper's (and `flash4 bench`'s): bf16, 16k tokens
(batch = tokens // seqlen), hidden 2048 (heads = hidden // headdim), seqlen 512..16k,
head dim 64/128/256, causal and not, Sq = Sk (so top-left and bottom-right causal
masks agree). Every implementation of a shape reads the same tensors, allocated as
(B, S, H, D); SDPA gets the (B, H, S, D) view q.transpose(1, 2).

Implementations (--impls):
  flash4          flash4.flash_attn_func (the package in python/; the library picks
                  its path: Hopper kernels where built and supported, else portable;
                  the JSON line's "path" says which, from flash4.forward_path)
  cudnn, flash2, efficient
                  torch.nn.functional.scaled_dot_product_attention pinned to
                  CUDNN_ATTENTION, FLASH_ATTENTION, EFFICIENT_ATTENTION
  triton          a plain Triton forward written for this benchmark (one tile
                  config per head dim, not autotuned; no backward), so a
                  reference point rather than the best Triton can do
  fa3             FlashAttention-3 (flash_attn_interface.flash_attn_func), when a
                  build of it is importable (not by default: the project does not
                  build it; bench/build_fa3.sh builds one from a source tree)

Modes: fwd, and bwd (the backward timed alone, after one forward). flash4's
backward is measured only when the library has one (flash4.backward_available());
else its rows say not_supported with the library's reason.

Timing, FLOPs and the JSON line format are bench/sdpa_compare.py's (imported from
it): CUDA events around each call, median; 4*B*H*S*S*D, halved for causal, x2.5
for the backward. --check compares each forward output with the first
implementation's (max abs difference, in the JSON line as maxdiff).

Output: one line per measurement as it goes, then a table of TFLOP/s per shape;
--json FILE appends JSON lines (impl, mode, headdim, causal, seqlen, batch, heads,
dtype, ms, tflops, status, device, date, commit, ...); --plot DIR draws one PNG
per (mode, headdim, causal) from the JSON lines of --json's folder with
bench/plot.py.

Imports torch only when it measures (`--help` works without torch).
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sdpa_compare as sc  # noqa: E402  (timing, FLOPs, environment facts)

try:  # Triton is optional; the kernel below is defined only when it imports
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None

DEFAULT_IMPLS = ("flash4", "cudnn", "flash2", "efficient", "triton")
IMPLS = DEFAULT_IMPLS + ("fa3",)
SDPA_IMPL = {"cudnn": "sdpa-cudnn", "flash2": "sdpa-flash2", "efficient": "sdpa-efficient"}


def impl_name(key):
    return {"flash4": "flash4-torch", "triton": "triton-fwd", "fa3": "fa3"}.get(key) or SDPA_IMPL[key]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="flash4 vs torch SDPA (cuDNN, FlashAttention-2, memory-efficient) and a "
                    "Triton forward, identical inputs, one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--headdim", type=sc.int_list, default="64,128,256")
    p.add_argument("--seqlen", type=sc.int_list, default="512,1024,2048,4096,8192,16384")
    p.add_argument("--causal", type=sc.causal_list, default="0,1", help="0, 1 or 0,1")
    p.add_argument("--modes", default="fwd,bwd", help="fwd, bwd or fwd,bwd")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help="subset of " + ",".join(IMPLS))
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seqlen")
    p.add_argument("--hidden", type=int, default=2048, help="heads = hidden // headdim")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--timer", choices=("events", "do_bench"), default="events")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare forward outputs across impls")
    p.add_argument("--json", metavar="FILE", help="append one JSON line per measurement")
    p.add_argument("--plot", metavar="DIR", help="draw PNGs (bench/plot.py) from --json's folder")
    a = p.parse_args(argv)
    a.modes = [m for m in a.modes.split(",") if m]
    a.impls = [i for i in a.impls.split(",") if i]
    if not a.modes or any(m not in ("fwd", "bwd") for m in a.modes):
        p.error("--modes takes fwd, bwd or fwd,bwd")
    bad = [i for i in a.impls if i not in IMPLS]
    if bad or not a.impls:
        p.error(f"unknown impl(s) {bad}; choose from {IMPLS}")
    if a.plot and not a.json:
        p.error("--plot draws from the --json file's folder: give --json too")
    if a.warmup < 0 or a.iters < 1:
        p.error("--warmup must be >= 0 and --iters >= 1")
    return a


# ---- Triton forward -------------------------------------------------------------------
# One program computes BLOCK_M query rows of one (batch, head): it walks the key
# blocks, keeps the running row max m and row sum l of exp2(scores - m) in fp32 and
# rescales the fp32 accumulator whenever m grows; scores are pre-multiplied by
# scale*log2(e) so that exp2 replaces exp. With causal, the key blocks left of the
# diagonal tile need no mask, and only the diagonal tile is masked.

if triton is not None:
    @triton.jit
    def _tile_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, rows, cols, qk_scale,
                   DIAGONAL: tl.constexpr):
        k = tl.load(k_ptrs)  # (HEAD_DIM, BLOCK_N)
        s = tl.dot(q, k) * qk_scale
        if DIAGONAL:
            s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs)  # (BLOCK_N, HEAD_DIM)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, m_new, l_i

    @triton.jit
    def _triton_attn_fwd(Q, K, V, O, qk_scale, H, S,
                         sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h, so_b, so_s, so_h,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr):
        # S must be a multiple of BLOCK_M, and BLOCK_M of BLOCK_N (checked by the caller).
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_s + dims[None, :])
        k_base = K + b * sk_b + h * sk_h
        v_base = V + b * sv_b + h * sv_h
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        if CAUSAL:
            end = pid_m * BLOCK_M
        else:
            end = S
        for start in range(0, end, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            acc, m_i, l_i = _tile_step(acc, m_i, l_i, q,
                                       k_base + cols[None, :] * sk_s + dims[:, None],
                                       v_base + cols[:, None] * sv_s + dims[None, :],
                                       rows, cols, qk_scale, False)
        if CAUSAL:
            for start in range(pid_m * BLOCK_M, (pid_m + 1) * BLOCK_M, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                acc, m_i, l_i = _tile_step(acc, m_i, l_i, q,
                                           k_base + cols[None, :] * sk_s + dims[:, None],
                                           v_base + cols[:, None] * sv_s + dims[None, :],
                                           rows, cols, qk_scale, True)
        acc = acc / l_i[:, None]
        tl.store(O + b * so_b + h * so_h + rows[:, None] * so_s + dims[None, :],
                 acc.to(O.dtype.element_ty))


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head dim, chosen for Hopper-class
# shared memory; not tuned per shape.
TRITON_CONFIGS = {64: (128, 64, 4, 3), 128: (128, 64, 8, 3), 256: (64, 32, 4, 2)}


def triton_attention(torch, q, k, v, causal, scale):
    """q, k, v (B, S, H, D), Sq == Sk; returns out (B, S, H, D)."""
    b, s, h, d = q.shape
    bm, bn, warps, stages = TRITON_CONFIGS.get(d, (64, 32, 4, 2))
    if d not in TRITON_CONFIGS or s % bm:
        raise NotImplementedError(f"triton-fwd here needs head dim in {sorted(TRITON_CONFIGS)} and "
                                  f"seqlen a multiple of {bm}")
    out = torch.empty_like(q)
    grid = (s // bm, b * h)
    _triton_attn_fwd[grid](q, k, v, out, scale * 1.4426950408889634, h, s,
                           q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                           v.stride(0), v.stride(1), v.stride(2),
                           out.stride(0), out.stride(1), out.stride(2),
                           HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal),
                           num_warps=warps, num_stages=stages)
    return out


# ---- measurement ------------------------------------------------------------------------

class NotAvailable(Exception):
    """This implementation has no kernel for the mode or shape: a fact to record."""


def make_forward(torch, key, causal, scale, sdpa):
    if key == "flash4":
        import flash4
        return lambda q, k, v: flash4.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    if key == "triton":
        if triton is None:
            raise NotAvailable("triton is not importable")
        return lambda q, k, v: triton_attention(torch, q, k, v, causal, scale)
    if key == "fa3":
        try:
            import flash_attn_interface as fa3
        except Exception as e:  # no build of FlashAttention-3 on this machine
            raise NotAvailable(f"FlashAttention-3 is not importable ({type(e).__name__}: {e})")

        def fa3_forward(q, k, v):
            out = fa3.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
            return out[0] if isinstance(out, tuple) else out
        return fa3_forward
    F = sdpa["F"]
    return lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
        scale=scale).transpose(1, 2)


def measure(args):
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"compare: torch is not importable ({e}); nothing measured", file=sys.stderr)
        return None, 2
    if not torch.cuda.is_available():
        print("compare: no CUDA device visible to torch; nothing measured", file=sys.stderr)
        return None, 2
    do_bench = None
    if args.timer == "do_bench":
        if triton is None:
            print("compare: --timer do_bench needs triton", file=sys.stderr)
            return None, 2
        from triton.testing import do_bench
    flash4_note = ""
    if "flash4" in args.impls:
        try:
            import flash4
        except ImportError as e:
            print(f"compare: flash4 is not importable ({e}); its rows say so", file=sys.stderr)
            flash4 = None
            flash4_note = f"flash4 not importable: {e}"
    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    sdpa = {"F": F}
    ctx = {"device": torch.cuda.get_device_name(dev), "driver": sc.driver_release(),
           "cuda": str(torch.version.cuda), "cuda_runtime": str(torch.version.cuda),
           "commit": sc.git_commit(), "torch": torch.__version__,
           "cudnn": str(torch.backends.cudnn.version())}
    if triton is not None:
        ctx["triton"] = triton.__version__
    timer_text = (f"cuda-events median of {args.iters} after {args.warmup} warm-up"
                  if args.timer == "events" else "triton do_bench median")
    bwd_note = ""
    if "flash4" in args.impls and flash4 is not None and "bwd" in args.modes:
        ok, reason = flash4.backward_available(dev)
        bwd_note = "" if ok else reason
    print(f"# compare: {ctx['device']}, driver {ctx['driver']}, torch {ctx['torch']} (CUDA "
          f"{ctx['cuda']}, cuDNN {ctx['cudnn']}), triton {ctx.get('triton', 'absent')}, "
          f"{args.dtype}, timer {timer_text}", flush=True)
    print(f"{'impl':<16} {'mode':<4} {'d':>4} {'causal':>6} {'seqlen':>7} {'batch':>6} {'heads':>6} "
          f"{'ms':>10} {'TFLOP/s':>9}", flush=True)

    gen = torch.Generator(device=dev)
    gen.manual_seed(0x5EED)
    rows, measured = [], 0
    out_file = open(args.json, "a") if args.json else None
    try:
        for mode in args.modes:
            for d in args.headdim:
                for causal in args.causal:
                    for s in args.seqlen:
                        b, h = sc.shape_of(args, s, d)
                        n_tensors = 4 if mode == "bwd" else 3  # q, k, v (, dout)
                        per_set = n_tensors * 2 * b * s * h * d
                        n_sets = 1 if per_set >= sc.SET_BYTES_TARGET else min(
                            8, sc.SET_BYTES_TARGET // per_set + 1)
                        sets = [tuple(torch.randn(b, s, h, d, device=dev, dtype=dtype, generator=gen)
                                      for _ in range(n_tensors)) for _ in range(n_sets)]
                        scale = 1.0 / math.sqrt(d)
                        ref_out = None
                        for key in args.impls:
                            row = {"impl": impl_name(key), "mode": mode, "headdim": d,
                                   "causal": bool(causal), "seqlen": s, "batch": b, "heads": h,
                                   "dtype": args.dtype}
                            try:
                                if key == "flash4" and flash4_note:
                                    raise NotAvailable(flash4_note)
                                if mode == "bwd" and key == "triton":
                                    raise NotAvailable("no Triton backward in this benchmark")
                                if mode == "bwd" and key == "flash4" and bwd_note:
                                    raise NotAvailable(bwd_note)
                                fwd = make_forward(torch, key, bool(causal), scale, sdpa)
                                if key == "flash4":
                                    row["path"] = flash4.forward_path(
                                        *sets[0][:3], softmax_scale=scale, causal=bool(causal))[0]
                                ms, out0 = run_one(torch, fwd, sets, mode, args, do_bench,
                                                   sdpa_kernel(backends[key]) if key in backends
                                                   else None)
                                row.update(ms=round(ms, 6), tflops=round(
                                    sc.attention_flops(b, h, s, d, causal, mode) / ms / 1e9, 3),
                                    status="ok")
                                if args.check and out0 is not None:
                                    if ref_out is None:
                                        ref_out, ref_impl = out0, row["impl"]
                                    else:
                                        row["maxdiff"] = float((out0.float() - ref_out.float())
                                                               .abs().max())
                                        row["maxdiff_vs"] = ref_impl
                                measured += 1
                            except NotAvailable as e:
                                row.update(ms=None, tflops=None, status="not_supported",
                                           reason=str(e)[:300])
                            except Exception as e:  # a backend without a kernel for this shape
                                text = str(e).splitlines()[0] if str(e) else ""
                                msg = f"{type(e).__name__}: {text}"[:300]
                                low = msg.lower()
                                unsupported = ("no available kernel" in low or "not supported" in low
                                               or "not implemented" in low
                                               or isinstance(e, NotImplementedError))
                                row.update(ms=None, tflops=None,
                                           status="not_supported" if unsupported else "error",
                                           reason=msg)
                            row.update(ctx)
                            row["date"] = sc.utc_now()
                            row["timer"] = timer_text
                            rows.append(row)
                            if row["status"] == "ok":
                                shown = f"{row['ms']:10.4f} {row['tflops']:9.1f}"
                                if "path" in row:
                                    shown += f"  ({row['path']} path)"
                                if "maxdiff" in row:
                                    shown += f"  maxdiff {row['maxdiff']:.2e} vs {row['maxdiff_vs']}"
                            else:
                                shown = f"{'-':>10} {'-':>9}  {row['status'].upper()}: {row['reason']}"
                            print(f"{row['impl']:<16} {mode:<4} {d:>4} {int(causal):>6} {s:>7} "
                                  f"{b:>6} {h:>6} {shown}", flush=True)
                            if out_file:
                                out_file.write(json.dumps(row) + "\n")
                                out_file.flush()
                        del sets, ref_out
                        torch.cuda.empty_cache()
    finally:
        if out_file:
            out_file.close()
    return rows, (0 if measured else 1)


def run_one(torch, fwd, sets, mode, args, do_bench, backend_ctx):
    """Median ms of the forward or the backward over the input sets; also returns the
    forward output of set 0 (for --check)."""
    import contextlib
    n = len(sets)
    with backend_ctx if backend_ctx is not None else contextlib.nullcontext():
        if mode == "fwd":
            out0 = fwd(*sets[0][:3])
            ms = sc.time_calls(torch, lambda i: fwd(*sets[i % n][:3]), args, do_bench)
            return ms, out0
        leaves = [[t.detach().requires_grad_() for t in st[:3]] for st in sets]
        outs = [fwd(*lv) for lv in leaves]

        def call(i):
            for t in leaves[i % n]:
                t.grad = None
            outs[i % n].backward(sets[i % n][3], retain_graph=True)
        ms = sc.time_calls(torch, call, args, do_bench)
        return ms, None


# ---- table, plot ------------------------------------------------------------------------

def print_table(rows, impls):
    names = [impl_name(k) for k in impls]
    table = {}
    for r in rows:
        key = (r["mode"], r["headdim"], r["causal"], r["seqlen"])
        table.setdefault(key, {})[r["impl"]] = r
    print("\nTFLOP/s (- = not measured; see the lines above for why)\n")
    head = ["mode", "d", "causal", "seqlen"] + names
    if "flash4-torch" in names:
        head += [f"flash4/{n}" for n in names if n != "flash4-torch"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in sorted(table, key=lambda k: (k[0] != "fwd", k[1], k[2], k[3])):
        cells = [key[0], str(key[1]), str(int(key[2])), str(key[3])]
        vals = {}
        for n in names:
            r = table[key].get(n)
            vals[n] = r["tflops"] if r and r.get("status") == "ok" else None
            cells.append(f"{vals[n]:.1f}" if vals[n] is not None else "-")
        if "flash4-torch" in names:
            a = vals["flash4-torch"]
            for n in names:
                if n != "flash4-torch":
                    cells.append(f"{a / vals[n]:.2f}" if a is not None and vals[n] else "-")
        print("| " + " | ".join(cells) + " |")


def plot(json_path, out_dir):
    """Charts through bench/plot.py (it reads every *.jsonl of the folder)."""
    folder = os.path.dirname(os.path.abspath(json_path))
    cmd = [sys.executable, os.path.join(HERE, "plot.py"), folder, "--out", out_dir]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        print(f"compare: plot.py failed ({done.returncode}): {done.stderr.strip()[-500:]}",
              file=sys.stderr)
    return done.returncode


def main(argv=None):
    args = parse_args(argv)
    rows, rc = measure(args)
    if rows is None:
        return rc
    print_table(rows, args.impls)
    if args.plot:
        rc = plot(args.json, args.plot) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
