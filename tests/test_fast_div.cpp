// FastDiv (sm90/fast_div.hpp): multiply-high division against `/` on the host.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "sm90/fast_div.hpp"

namespace {
using flash4::sm90::FastDiv;

void expect_matches(int d, int n) {
  const FastDiv f(d);
  const int q = f.div(n);
  ASSERT_EQ(q, n / d) << "n=" << n << " d=" << d;
  ASSERT_EQ(f.rem(n, q), n % d) << "n=" << n << " d=" << d;
}

TEST(FastDiv, SmallDivisorsAllSmallNumerators) {
  for (int d = 1; d <= 300; ++d)
    for (int n = 0; n < 5000; ++n) expect_matches(d, n);
}

TEST(FastDiv, EdgesAndRandomPairsUpTo2To31) {
  std::mt19937_64 rng(12345);
  std::vector<int> divisors = {1, 2, 3, 7, 64, 127, 128, 129, 1000, 65535, 65536, 65537,
                               (1 << 20) + 1, (1 << 30) - 1, 1 << 30, (1 << 30) + 1,
                               2147483647};
  for (int i = 0; i < 200; ++i) divisors.push_back(1 + static_cast<int>(rng() % 2147483646u));
  for (int d : divisors) {
    for (int n : {0, 1, d - 1, d, d + 1, 2147483646, 2147483647}) {
      if (n < 0) continue;
      expect_matches(d, n);
    }
    // multiples of d and their neighbours, where a wrong rounding shows first
    for (int i = 0; i < 300; ++i) {
      const int64_t k = static_cast<int64_t>(rng() % (2147483647u / static_cast<uint32_t>(d) + 1));
      for (int64_t n : {k * d - 1, k * d, k * d + 1})
        if (n >= 0 && n <= 2147483647) expect_matches(d, static_cast<int>(n));
    }
    for (int i = 0; i < 300; ++i) expect_matches(d, static_cast<int>(rng() % 2147483648u));
  }
}

TEST(FastDiv, NonPositiveDivisorActsAsOne) {
  EXPECT_EQ(FastDiv(0).div(12345), 12345);
  EXPECT_EQ(FastDiv(-3).div(77), 77);
}
}  // namespace
