// The Hopper forward's tile order, host and device: which (query block, (b,h)
// pair) a linear tile index stands for, which index a persistent CTA takes in
// each round, and how many (b,h) pairs form a causal section. The kernel
// (sm90/fwd_kernel.cuh) and the host planner (plan_fwd_tiles in
// sm90/fwd_launch.cuh) call these; tests/test_tile_order.cpp replays whole
// schedules on the host.
#pragma once
#include <cstdint>
#include "sm90/fast_div.hpp"

#if defined(__CUDACC__)
#define FLASH4_TILE_ORDER_FN __host__ __device__ __forceinline__
#else
#define FLASH4_TILE_ORDER_FN inline
#endif

namespace flash4 {
namespace sm90 {

// Round r of the persistent loop takes tile r*G + bid, in reverse CTA order on
// odd rounds (snake), so that with tiles sorted heaviest first (causal) no CTA
// gets the heaviest tile of every round.
FLASH4_TILE_ORDER_FN int snake_tile_index(int round, int grid, int bid) {
  return round * grid + ((round & 1) ? (grid - 1 - bid) : bid);
}

// Causal tile t -> query block m and (b,h) pair hb. Sections of
// heads_per_section pairs (the last may hold fewer); inside a section the
// heaviest query blocks come first, pairs fastest. div_section divides by
// num_m_blocks * heads_per_section, div_hps by heads_per_section.
FLASH4_TILE_ORDER_FN void causal_tile(int t, int num_m_blocks, int num_hb, int heads_per_section,
                                      const FastDiv& div_section, const FastDiv& div_hps, int& m,
                                      int& hb) {
  const int sec = div_section.div(t);
  const int r = div_section.rem(t, sec);
  const int hs = heads_per_section < num_hb - sec * heads_per_section
                     ? heads_per_section
                     : num_hb - sec * heads_per_section;
  // the last section may hold fewer pairs: a plain division there
  const int q = hs == heads_per_section ? div_hps.div(r) : r / hs;
  m = num_m_blocks - 1 - q;
  hb = sec * heads_per_section + (r - q * hs);
}

// (b,h) pairs per causal section, at least 1 and at most num_hb; a multiple of
// group (a section holds whole K/V heads) except on the two-round rule.
//   Persistent grid of G CTAs, Sk <= 1024, when num_m_blocks divides 2G: a
//     section is two rounds (2G tiles). Round 0 gives CTA c section tile c and
//     round 1 (snake) tile 2G-1-c, i.e. query blocks m and num_m_blocks-1-m of
//     one pair, so every CTA gets the same work per two rounds and all tiles
//     of a head run within those rounds: its K/V is read from DRAM about once.
//     These shapes are DRAM-bound on H100 (ncu, d128 causal 512: 323 -> 265
//     MB, +9.5% / +15.6% at d128 causal 512 / 1k, docs/perf.md). Sections
//     that do not match two rounds drift against them and unbalance the CTAs
//     (d64 causal 8k-16k, 43 / 86 query blocks: 35% slower), hence the
//     divisibility condition.
//   Other persistent grids: a section's K/V (all its kv heads) fits ~4 MB
//     (Sk <= 1024) or ~32 MB of L2 (smaller sections measured erratic: the
//     static snake split interacts with section boundaries).
//   One CTA per tile: a section is about as many tiles as SMs, so every tile
//     of a head runs at once and reads its K/V from DRAM once (L2 budget
//     sweep, docs/perf.md: +7-8% at d128 2k-4k over 32 MB).
FLASH4_TILE_ORDER_FN int causal_heads_per_section(int num_m_blocks, int num_hb, int group,
                                                  int seqlen_k, int headdim, bool persistent,
                                                  int num_sms, int64_t grid) {
  const int64_t m_blocks = num_m_blocks > 0 ? num_m_blocks : 1;
  const int64_t g = group > 0 ? group : 1;
  int64_t hs;
  if (persistent && num_sms > 0 && seqlen_k <= 1024 && (2 * grid) % m_blocks == 0) {
    // Exactly two rounds, even where that splits a GQA group between two
    // sections (its K/V head is then read by both; rounding to whole groups
    // would break the pairing, which costs far more).
    hs = (2 * grid) / m_blocks;
  } else if (persistent || num_sms <= 0) {
    const int64_t kv_bytes = static_cast<int64_t>(seqlen_k > 0 ? seqlen_k : 1) * headdim * 2 * 2;
    const int64_t budget = (persistent && seqlen_k <= 1024 ? int64_t(4) : int64_t(32)) << 20;
    int64_t kv_heads_fit = budget / kv_bytes;
    if (kv_heads_fit < 1) kv_heads_fit = 1;
    hs = kv_heads_fit * g;
  } else {
    const int64_t kv_heads = num_sms / (m_blocks * g);
    hs = (kv_heads < 1 ? 1 : kv_heads) * g;
  }
  if (hs > num_hb) hs = num_hb;
  return static_cast<int>(hs < 1 ? 1 : hs);
}

}  // namespace sm90
}  // namespace flash4

#undef FLASH4_TILE_ORDER_FN
