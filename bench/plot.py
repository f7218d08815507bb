#!/usr/bin/env python3
"""Draw TFLOP/s charts from benchmark JSON lines (flash4 bench, bench/sdpa_compare.py).

One PNG per (mode, headdim, causal): grouped bars over seqlen, one bar per impl.
Usage: python3 bench/plot.py RESULTS_DIR [--out DIR]
"""
import argparse
import collections
import glob
import json
import os


def load_file(path):
    """The measured rows (status ok, with TFLOP/s) of one JSON-lines file."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("status", "ok") == "ok" and r.get("tflops"):
                rows.append(r)
    return rows


def load(results_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.jsonl"))):
        rows += load_file(path)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir")
    ap.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR)")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(args.results_dir)
    if not rows:
        raise SystemExit(f"no benchmark rows in {args.results_dir}")
    out = args.out or args.results_dir
    os.makedirs(out, exist_ok=True)
    groups = collections.defaultdict(dict)
    for r in rows:
        key = (r["mode"], int(r["headdim"]), int(bool(r["causal"])))
        groups[key][(r["impl"], int(r["seqlen"]))] = float(r["tflops"])
    device = rows[0].get("device", "")
    commit = rows[0].get("commit", "")
    date = rows[0].get("date", "")[:10]
    for (mode, d, causal), vals in sorted(groups.items()):
        impls = sorted({i for i, _ in vals}, key=lambda s: (not s.startswith("flash4"), s))
        seqlens = sorted({s for _, s in vals})
        width = 0.8 / len(impls)
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for k, impl in enumerate(impls):
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(seqlens))]
            ys = [vals.get((impl, s), 0.0) for s in seqlens]
            bars = ax.bar(xs, ys, width, label=impl)
            for x, y in zip(xs, ys):
                if y > 0:
                    ax.text(x, y + 4, f"{y:.0f}", ha="center", va="bottom", fontsize=6.5)
            del bars
        ax.set_xticks(range(len(seqlens)))
        ax.set_xticklabels([f"{s // 1024}k" if s >= 1024 else str(s) for s in seqlens])
        ax.set_xlabel("sequence length (batch x seqlen = 16k tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{mode}, head dim {d}, {'causal' if causal else 'non-causal'} — {device}, {date}, {commit}",
                     fontsize=9)
        ax.legend(fontsize=8, ncol=len(impls), loc="upper center", bbox_to_anchor=(0.5, -0.18))
        ax.set_ylim(0, max(vals.values()) * 1.15)
        fig.tight_layout()
        name = os.path.join(out, f"{mode}-d{d}-{'causal' if causal else 'noncausal'}.png")
        fig.savefig(name, dpi=110)
        plt.close(fig)
        print(name)


if __name__ == "__main__":
    main()
