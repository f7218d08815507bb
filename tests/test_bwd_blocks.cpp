// The backward's block ranges (sm90/bwd_blocks.hpp) on the host, against a
// brute-force scan of the mask: bwd_m_range must return exactly the query
// blocks with a visible (query, key) pair in the key block, and the key
// blocks that add into a query block must be contiguous from
// bwd_first_adder to bwd_last_adder (the deterministic mode's order rests on
// both; an in-kernel dQ finish would count adders with them). Block
// sizes of every kernel: 64 / 128 queries, 64 / 80 / 128 keys.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "sm90/bwd_blocks.hpp"

namespace {

using flash4::sm90::BwdBlockRange;

bool visible(int64_t i, int64_t j, int sq, int sk, int left, int right) {
  const int64_t d = j - (i + (static_cast<int64_t>(sk) - sq));
  if (j >= sk) return false;
  if (right >= 0 && d > right) return false;
  if (left >= 0 && d < -left) return false;
  return true;
}

template <int kBM, int kBN>
void check_case(int sq, int sk, int left, int right) {
  const int nm = (sq + kBM - 1) / kBM;
  const int nk = (sk + kBN - 1) / kBN;
  // sees[n][m]: some row of query block m sees some key of key block n.
  std::vector<std::vector<char>> sees(nk, std::vector<char>(nm, 0));
  for (int i = 0; i < sq; ++i)
    for (int j = 0; j < sk; ++j)
      if (visible(i, j, sq, sk, left, right)) sees[j / kBN][i / kBM] = 1;
  for (int n = 0; n < nk; ++n) {
    const BwdBlockRange r = flash4::sm90::bwd_m_range<kBM, kBN>(n, sq, sk, left, right);
    for (int m = 0; m < nm; ++m) {
      const bool in = m >= r.begin && m < r.end;
      ASSERT_EQ(in, sees[n][m] != 0) << "bm " << kBM << " bn " << kBN << " sq " << sq << " sk "
                                     << sk << " win (" << left << ", " << right << ") n " << n
                                     << " m " << m;
    }
    if (r.begin < r.end) {
      ASSERT_GE(r.begin, 0);
      ASSERT_LE(r.end, nm);
    }
  }
  for (int m = 0; m < nm; ++m) {
    int first = -1, last = -1;
    for (int n = 0; n < nk; ++n)
      if (sees[n][m]) {
        if (first < 0) first = n;
        last = n;
      }
    ASSERT_EQ((flash4::sm90::bwd_has_adder<kBM, kBN>(m, sq, sk, left, right)), first >= 0)
        << "bm " << kBM << " bn " << kBN << " sq " << sq << " sk " << sk << " win (" << left
        << ", " << right << ") m " << m;
    if (first < 0) continue;  // no adder: nobody waits on m
    for (int n = first; n <= last; ++n)
      ASSERT_TRUE(sees[n][m]) << "adders of m " << m << " not contiguous (sq " << sq << " sk "
                              << sk << " win (" << left << ", " << right << "))";
    const int last_adder = flash4::sm90::bwd_last_adder<kBM, kBN>(m, sq, sk, right);
    ASSERT_EQ(last_adder, last) << "bm " << kBM << " bn " << kBN << " sq " << sq << " sk " << sk
                                << " win (" << left << ", " << right << ") m " << m;
    const int first_adder = flash4::sm90::bwd_first_adder<kBM, kBN>(m, sq, sk, left);
    ASSERT_EQ(first_adder, first)
        << "bm " << kBM << " bn " << kBN << " sq " << sq << " sk " << sk << " win (" << left
        << ", " << right << ") m " << m;
  }
}

template <int kBM, int kBN>
void check_grid() {
  std::mt19937 rng(0x5eed + 131 * kBM + kBN);
  const int lens[] = {1, 63, 64, 65, 79, 80, 81, 113, 160, 239, 300, 517};
  const int edges[] = {-1, 0, 1, 7, 64, 80, 100, 200};
  for (int sq : lens)
    for (int sk : lens)
      for (int t = 0; t < 6; ++t) {
        // no mask, causal (right 0), and random windows
        const int left = t == 0 ? -1 : edges[rng() % 8];
        const int right = t == 0 ? -1 : t == 1 ? 0 : edges[rng() % 8];
        check_case<kBM, kBN>(sq, sk, left, right);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TEST(BwdBlocks, MRangeIsExactAndAddersAreContiguous) {
  check_grid<128, 128>();  // head dim 64
  check_grid<64, 128>();   // head dim 128
  check_grid<64, 80>();    // head dim 256
}

TEST(BwdBlocks, EmptyInputsGiveEmptyRanges) {
  const BwdBlockRange a = flash4::sm90::bwd_m_range<64, 80>(0, 0, 100, -1, -1);
  EXPECT_EQ(a.begin, a.end);
  const BwdBlockRange b = flash4::sm90::bwd_m_range<64, 80>(2, 100, 160, -1, -1);  // past sk
  EXPECT_EQ(b.begin, b.end);
}

}  // namespace
