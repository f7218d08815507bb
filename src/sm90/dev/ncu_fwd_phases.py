#!/usr/bin/env python3
"""Share of ncu stall samples per phase of the Hopper forward kernel (producer,
tile start, first block, K/V loop, last P.V, epilogue).

Each profiled SASS instruction is mapped to its outermost fwd_kernel.cuh line
through a -lineinfo build of the same kernel (`nvdisasm -gi -c`), then the line
to a phase by markers in the source. The local SASS must match the profiled
kernel instruction for instruction (checked: opcode mismatches are reported).

Usage: python3 src/sm90/dev/ncu_fwd_phases.py PROFILE.sass.csv[.gz] LOCAL.sass fwd_kernel.cuh
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_stalls import read_export  # noqa: E402

# (marker in fwd_kernel.cuh, phase of the lines from it on), in source order.
MARKERS = [
    ("// ------------------------------------------------------------ producer", "producer"),
    ("// -------------------------------------------------------------- consumers",
     "consumer lambdas (softmax etc., inlined)"),
    ("for (int round = 0; round * static_cast<int>(gridDim.x) < args.num_tiles; ++round) {",
     "tile start (coordinates, Q wait)"),
    ("// Prologue: block n_blocks-1.", "first block"),
    ("for (int it = 1; it < n_blocks; ++it) {", "K/V loop"),
    ("const int gl = g + n_blocks - 1;", "last P.V"),
    ("// ----------------------------------------------------------- epilogue", "epilogue"),
    ("if (cw == 0) named_bar_sync(kBarSched0, 256);", "end"),
]


def phase_starts(kernel_src):
    lines = open(kernel_src).read().split("\n")
    starts, at = [], 0
    for marker, name in MARKERS:
        at = next(i for i in range(at, len(lines)) if marker in lines[i]) + 1  # 1-based
        starts.append((at, name))
    return starts


def local_lines(sass_path):
    """offset -> (outermost fwd_kernel.cuh line or None, opcode)."""
    loc, cur = {}, None
    for l in open(sass_path):
        if "## File" in l:
            pairs = re.findall(r'"[^"]*/([^"/]+)", line (\d+)', l)
            fk = [int(n) for f, n in pairs if f == "fwd_kernel.cuh"]
            cur = fk[-1] if fk else None
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*)", l)
        if m:
            loc[int(m.group(1), 16)] = (cur, opcode(m.group(2)))
    return loc


def opcode(instruction):
    """The opcode of a SASS instruction text, after any @predicate."""
    words = instruction.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].rstrip(";") if words else ""


def main():
    prof, sass, kernel_src = sys.argv[1:4]
    _, ix, data = read_export(prof)
    starts = phase_starts(kernel_src)
    loc = local_lines(sass)
    base = int(data[0][ix["Address"]], 16)
    samples = lambda r: int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
    by_phase, mismatched = collections.Counter(), 0
    for r in data:
        line, local_opcode = loc.get(int(r[ix["Address"]], 16) - base, (None, ""))
        mismatched += opcode(r[ix["Source"]]) != local_opcode
        name = "other" if line is None else "setup"
        for first, n in starts:
            if line is not None and line >= first:
                name = n
        by_phase[name] += samples(r)
    total = sum(by_phase.values()) or 1
    print(f"{len(data)} instructions, {mismatched} with another opcode in the local SASS")
    for name, v in by_phase.most_common():
        print(f"  {100 * v / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
