#!/usr/bin/env python3
"""Timing replay of the forward's persistent causal tile order (host model).

Each CTA of the persistent grid runs its tiles back to back (snake order,
sm90/tile_order.hpp); a tile of query block m costs m + 1 key blocks plus one
block-time of tile overhead. Prints the makespan and how long each head's tiles
stay in flight (first start to last end), for the old 4 MB sections and the
two-round sections. Usage: python3 src/sm90/dev/replay_causal_order.py
"""
import statistics


def replay(batch, heads, seqlen, block_m, grid, headdim, rule):
    M = (seqlen + block_m - 1) // block_m
    hb = batch * heads
    tiles = M * hb
    grid = min(grid, tiles)
    if rule == "two-rounds":
        hps = (2 * grid) // M
    else:  # 4 MB of K/V per section
        hps = max(1, (4 << 20) // (seqlen * headdim * 4))
    hps = min(hps, hb)

    def coord(t):
        sec, r = divmod(t, M * hps)
        hs = min(hps, hb - sec * hps)
        q = r // hs
        return M - 1 - q, sec * hps + (r - q * hs)

    clock = [0.0] * grid
    start, end = {}, {}
    for rnd in range((tiles + grid - 1) // grid):
        for bid in range(grid):
            t = rnd * grid + (grid - 1 - bid if rnd & 1 else bid)
            if t >= tiles:
                continue
            m, h = coord(t)
            s = clock[bid]
            clock[bid] += m + 2
            start[h] = min(start.get(h, 1e18), s)
            end[h] = max(end.get(h, 0.0), clock[bid])
    spans = [end[h] - start[h] for h in start]
    makespan = max(clock)
    live = statistics.mean(spans) / makespan * hb
    return makespan, statistics.mean(spans), max(spans), live * seqlen * headdim * 4 / 2**20, hps


if __name__ == "__main__":
    print("d   S     rule        makespan  head span (mean/max)  live K/V MB  heads/section")
    for d in (64, 128, 256):
        for S in (512, 1024):
            for rule in ("4MB", "two-rounds"):
                mk, mean, mx, mb, hps = replay(16384 // S, 2048 // d, S, 128, 132, d, rule)
                print(f"{d:<3} {S:<5} {rule:<11} {mk:8.1f}  {mean:8.1f} / {mx:6.1f}      {mb:8.1f}     {hps}")
