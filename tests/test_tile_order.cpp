// The Hopper forward's tile order (sm90/tile_order.hpp) on the host: the causal
// order is a bijection onto (query block, (b,h) pair), section sizes follow
// their rules, and on a persistent grid the two-round sections give every CTA
// the same work and run each head's tiles within one pair of rounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "sm90/tile_order.hpp"

namespace {
using flash4::sm90::causal_heads_per_section;
using flash4::sm90::causal_tile;
using flash4::sm90::FastDiv;
using flash4::sm90::snake_tile_index;

struct Shape {
  int num_m_blocks, num_hb, group, seqlen_k, headdim, num_sms;
  bool persistent;
};

struct Plan {
  int heads_per_section;
  int64_t grid;
  FastDiv div_section, div_hps;
};

Plan plan(const Shape& s) {
  Plan p;
  p.grid = static_cast<int64_t>(s.num_m_blocks) * s.num_hb;
  if (s.persistent && s.num_sms > 0 && p.grid > s.num_sms) p.grid = s.num_sms;
  p.heads_per_section = causal_heads_per_section(s.num_m_blocks, s.num_hb, s.group, s.seqlen_k, s.headdim,
                                   s.persistent, s.num_sms, p.grid);
  p.div_section = FastDiv(s.num_m_blocks * p.heads_per_section);
  p.div_hps = FastDiv(p.heads_per_section);
  return p;
}

std::pair<int, int> tile_of(const Shape& s, const Plan& p, int t) {
  int m = -1, hb = -1;
  causal_tile(t, s.num_m_blocks, s.num_hb, p.heads_per_section, p.div_section, p.div_hps, m, hb);
  return {m, hb};
}

TEST(TileOrder, CausalOrderIsABijection) {
  const std::vector<Shape> shapes = {
      {4, 512, 1, 512, 128, 132, true},     {8, 256, 1, 1024, 128, 132, true},
      {4, 512, 1, 512, 128, 114, true},     {3, 7, 1, 300, 64, 132, true},
      {43, 48, 1, 8192, 64, 132, true},     {17, 40, 4, 2048, 128, 132, false},
      {1, 1, 1, 1, 64, 132, true},          {9, 130, 2, 1100, 256, 132, false},
      {5, 66, 6, 600, 64, 16, true},        {4, 512, 8, 512, 128, 132, true}};
  for (const Shape& s : shapes) {
    const Plan p = plan(s);
    ASSERT_GE(p.heads_per_section, 1);
    ASSERT_LE(p.heads_per_section, s.num_hb);
    std::set<std::pair<int, int>> seen;
    const int tiles = s.num_m_blocks * s.num_hb;
    for (int t = 0; t < tiles; ++t) {
      const auto mh = tile_of(s, p, t);
      ASSERT_GE(mh.first, 0);
      ASSERT_LT(mh.first, s.num_m_blocks);
      ASSERT_GE(mh.second, 0);
      ASSERT_LT(mh.second, s.num_hb);
      ASSERT_TRUE(seen.insert(mh).second) << "tile " << t << " repeats (" << mh.first << ", "
                                          << mh.second << ")";
    }
  }
}

TEST(TileOrder, SnakeVisitsEveryIndexOncePerRound) {
  for (int grid : {1, 2, 7, 132}) {
    for (int round = 0; round < 4; ++round) {
      std::set<int> seen;
      for (int bid = 0; bid < grid; ++bid) seen.insert(snake_tile_index(round, grid, bid));
      EXPECT_EQ(static_cast<int>(seen.size()), grid);
      EXPECT_EQ(*seen.begin(), round * grid);
      EXPECT_EQ(*seen.rbegin(), round * grid + grid - 1);
    }
  }
}

// Replays a persistent causal schedule: per-CTA work (key blocks = m + 1 for a
// square causal tile) and, per (b,h) pair, the rounds its tiles run in.
struct Replay {
  double max_over_mean;
  int max_round_pairs_spanned;  // max over heads of (last round / 2 - first round / 2)
};

Replay replay(const Shape& s, const Plan& p) {
  const int grid = static_cast<int>(p.grid);
  const int tiles = s.num_m_blocks * s.num_hb;
  std::vector<int64_t> work(grid, 0);
  std::vector<int> first(s.num_hb, 1 << 30), last(s.num_hb, -1);
  for (int round = 0; round * grid < tiles; ++round)
    for (int bid = 0; bid < grid; ++bid) {
      const int t = snake_tile_index(round, grid, bid);
      if (t >= tiles) continue;
      const auto mh = tile_of(s, p, t);
      work[bid] += mh.first + 1;
      first[mh.second] = std::min(first[mh.second], round);
      last[mh.second] = std::max(last[mh.second], round);
    }
  int64_t total = 0;
  for (int64_t w : work) total += w;
  Replay r;
  r.max_over_mean = static_cast<double>(*std::max_element(work.begin(), work.end())) *
                    grid / static_cast<double>(total);
  r.max_round_pairs_spanned = 0;
  for (int h = 0; h < s.num_hb; ++h)
    r.max_round_pairs_spanned = std::max(r.max_round_pairs_spanned, last[h] / 2 - first[h] / 2);
  return r;
}

TEST(TileOrder, ShortCausalSectionsAreTwoRoundsAndBalanced) {
  // The benchmark's short causal shapes on 132 SMs (B*S = 16k tokens):
  // d128 512 / 1k (128-row tiles), d64 512 / 1k (2 consumers), d256 512 / 1k.
  const std::vector<Shape> shapes = {{4, 32 * 16, 1, 512, 128, 132, true},
                                     {8, 16 * 16, 1, 1024, 128, 132, true},
                                     {4, 32 * 32, 1, 512, 64, 132, true},
                                     {8, 16 * 32, 1, 1024, 64, 132, true},
                                     {4, 32 * 8, 1, 512, 256, 132, true},
                                     {8, 16 * 8, 1, 1024, 256, 132, true},
                                     {4, 32 * 16, 8, 512, 128, 132, true}};  // GQA 8
  for (const Shape& s : shapes) {
    const Plan p = plan(s);
    EXPECT_EQ(static_cast<int64_t>(p.heads_per_section) * s.num_m_blocks, 2 * p.grid)
        << "M=" << s.num_m_blocks << " hb=" << s.num_hb;
    const Replay r = replay(s, p);
    // Full sections pair m with M-1-m exactly; only the last partial section
    // adds imbalance.
    EXPECT_LE(r.max_over_mean, 1.05) << "M=" << s.num_m_blocks << " hb=" << s.num_hb;
    EXPECT_EQ(r.max_round_pairs_spanned, 0) << "M=" << s.num_m_blocks << " hb=" << s.num_hb;
  }
}

TEST(TileOrder, SectionsFallBackWhenTwoRoundsDoNotDivide) {
  struct Case {
    Shape shape;
    int heads_per_section;
    const char* why;
  };
  const std::vector<Case> cases = {
      {{8, 256, 1, 1024, 128, 114, true}, 8,
       "114 SMs, 8 query blocks: 228 % 8 != 0, the 4 MB budget (512 KB of K/V per head)"},
      {{43, 48, 1, 8192, 64, 132, true}, 16, "longer persistent: 32 MB budget (2 MB per head)"},
      {{8, 256, 2, 2048, 128, 132, false}, 16,
       "one CTA per tile: about as many tiles as SMs (132 / (8 * 2) = 8 kv heads)"},
      {{4, 512, 8, 512, 128, 132, true}, 66, "GQA keeps the two-round rule (not whole groups)"},
      {{11, 512, 4, 2048, 128, 132, true}, 128,
       "budget rules hold whole groups (1 MB per kv head: 32 kv heads of group 4)"},
      {{4, 6, 1, 512, 128, 132, true}, 6, "fewer tiles than SMs: one section"}};
  for (const Case& c : cases) EXPECT_EQ(plan(c.shape).heads_per_section, c.heads_per_section) << c.why;
}

}  // namespace
