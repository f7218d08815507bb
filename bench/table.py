#!/usr/bin/env python3
"""Markdown tables (README) from bench/compare.py's JSON lines: flash4 next to the SDPA backends.

One table per mode: d, causal, seqlen, TFLOP/s of flash4 (path), sdpa-cudnn and sdpa-flash2,
flash4/cudnn and, with --targets (the shared anchors' targets-vs-cudnn.json), the target ratio
and whether it is met. The last line counts the points that meet their target.
Several files (or repeated points): by default the last measurement of a point wins; with
--median each implementation's TFLOP/s is the median of its measurements of the point (the
ratio is then median over median; the count of samples is printed under the table).
Usage: python3 bench/table.py compare.jsonl [more.jsonl ...] [--median] [--targets targets-vs-cudnn.json]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import load_file  # noqa: E402  (the JSON-lines reader)


def load(paths, median=False):
    """(mode, d, causal, seqlen, impl) -> a row (the last one, or with --median a copy of it
    whose tflops is the median over every row of that key); and the most samples of a key."""
    best, seen = {}, {}
    for path in paths:
        for r in load_file(path):
            if r.get("tflops") is None:
                continue
            key = (r["mode"], r["headdim"], int(bool(r["causal"])), r["seqlen"], r["impl"])
            best[key] = r  # the last measurement of a point wins
            seen.setdefault(key, []).append(r["tflops"])
    if median:
        best = {k: dict(r, tflops=statistics.median(seen[k])) for k, r in best.items()}
    most = {}
    for k, v in seen.items():
        most[k[0]] = max(most.get(k[0], 0), len(v))
    return best, most


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("--median", action="store_true", help="median of a point's measurements")
    ap.add_argument("--targets", help="JSON object: '<mode>-d<D>-c<0|1>-s<seqlen>' -> ratio to cuDNN")
    a = ap.parse_args()
    rows, samples = load(a.jsonl, a.median)
    targets = json.load(open(a.targets)) if a.targets else {}
    points = sorted({k[:4] for k in rows}, key=lambda k: (k[0] != "fwd", k[1], k[2], k[3]))
    for mode in ("fwd", "bwd"):
        mine = [p for p in points if p[0] == mode]
        if not mine:
            continue
        met = total = 0
        print(f"\n{'Forward' if mode == 'fwd' else 'Backward'}:\n")
        # FlashAttention-3 columns only where a run measured it (compare.py --impls ...,fa3).
        has_fa3 = any(rows.get(p + ("fa3",)) for p in mine)
        head = "| d | causal | seqlen | flash4 (path) | sdpa-cudnn | sdpa-flash2 | flash4/cudnn |"
        head += " fa3 | flash4/fa3 |" if has_fa3 else ""
        print(head + (" target | met |" if targets else ""))
        print("|---" * (7 + (2 if has_fa3 else 0) + (2 if targets else 0)) + "|")
        for p in mine:
            f4 = rows.get(p + ("flash4-torch",))
            cu = rows.get(p + ("sdpa-cudnn",))
            fa = rows.get(p + ("sdpa-flash2",))
            cell = lambda r: f"{r['tflops']:.0f}" if r else "–"
            ratio = f4["tflops"] / cu["tflops"] if f4 and cu else None
            line = (f"| {p[1]} | {p[2]} | {p[3]} | {cell(f4)} ({f4.get('path', '?') if f4 else '–'}) | "
                    f"{cell(cu)} | {cell(fa)} | {f'{ratio:.2f}' if ratio else '–'} |")
            if has_fa3:
                f3 = rows.get(p + ("fa3",))
                r3 = f4["tflops"] / f3["tflops"] if f4 and f3 else None
                line += f" {cell(f3)} | {f'{r3:.2f}' if r3 else '–'} |"
            t = targets.get(f"{mode}-d{p[1]}-c{p[2]}-s{p[3]}")
            if targets:
                ok = ratio is not None and t is not None and ratio >= t
                met += ok
                total += t is not None
                line += f" {t:.2f} | {'yes' if ok else 'no'} |" if t is not None else " – | – |"
            print(line)
        if targets:
            print(f"\n{mode}: target met at {met} of {total} points")
        if a.median and samples.get(mode, 0) > 1:
            print(f"\n({mode}: median of up to {samples[mode]} samples per point)")


if __name__ == "__main__":
    main()
