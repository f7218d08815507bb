#!/usr/bin/env python3
"""Summarise an ncu per-SASS-instruction export (run_ncu_bwd.sh's *.sass.csv,
plain or .gz): stall samples by reason, then the N instructions with the most
samples, each with its three largest reasons (% of all samples).

Usage: python3 src/sm90/dev/ncu_stalls.py FILE.sass.csv[.gz] [N]
"""
import collections
import csv
import gzip
import sys


def read_export(path):
    """(column names, {name: index}, data rows) of a per-SASS export, plain or .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    cols = rows[head]
    data = [r for r in rows[head + 1:] if len(r) == len(cols)]
    return cols, {c: i for i, c in enumerate(cols)}, data


def main():
    path = sys.argv[1]
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    cols, ix, data = read_export(path)
    total_col = "Warp Stall Sampling (All Samples)"
    reasons = [c for c in cols if c.startswith("stall_") and "Not Issued" not in c]
    count = lambda r, c: int(r[ix[c]] or 0)
    total = sum(count(r, total_col) for r in data) or 1
    by_reason = collections.Counter()
    for r in data:
        for c in reasons:
            by_reason[c] += count(r, c)
    print(f"{total} samples over {len(data)} instructions")
    print("by reason: " + ", ".join(f"{k[6:]} {100 * v / total:.1f}%"
                                     for k, v in by_reason.most_common(12)))
    top = sorted(range(len(data)), key=lambda i: -count(data[i], total_col))[:top_n]
    for i in sorted(top):
        r = data[i]
        worst = sorted(((count(r, c), c[6:]) for c in reasons), reverse=True)[:3]
        print(f"{i:5d} {100 * count(r, total_col) / total:5.1f}%  {r[1].strip()[:60]:60s} " +
              " ".join(f"{n}:{100 * v / total:.1f}" for v, n in worst if v))


if __name__ == "__main__":
    main()
