// Which query blocks a backward key block visits, and in which order the key
// blocks add into a query block's dQ: host and device. The kernel
// (sm90/bwd_kernel.cuh) calls these; tests/test_bwd_blocks.cpp checks them
// against a brute-force scan of the mask on the host (block sizes 64, 80, 128).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FLASH4_BWD_BLOCKS_FN __host__ __device__ __forceinline__
#else
#define FLASH4_BWD_BLOCKS_FN inline
#endif

namespace flash4 {
namespace sm90 {

struct BwdBlockRange {
  int begin, end;  // query blocks [begin, end)
};

FLASH4_BWD_BLOCKS_FN int64_t bwd_min64(int64_t a, int64_t b) {
#if defined(__CUDA_ARCH__)
  return min(a, b);
#else
  return a < b ? a : b;
#endif
}
FLASH4_BWD_BLOCKS_FN int64_t bwd_max64(int64_t a, int64_t b) {
#if defined(__CUDA_ARCH__)
  return max(a, b);
#else
  return a > b ? a : b;
#endif
}

// Query blocks whose rows see a key of key block n_block. Key j is visible
// to query i iff j < sk, j <= i + off + right (right >= 0) and
// j >= i + off - left (left >= 0), off = sk - sq (-1: that edge unbounded).
// The rows that see some key of [j0, j1] are exactly [j0 - off - right,
// j1 - off + left] within [0, sq), so the range is exact: the deterministic
// mode relies on it.
template <int kBM, int kBN>
FLASH4_BWD_BLOCKS_FN BwdBlockRange bwd_m_range(int n_block, int sq, int sk, int left, int right) {
  const int64_t j0 = static_cast<int64_t>(n_block) * kBN;
  if (j0 >= sk || sq <= 0) return BwdBlockRange{0, 0};
  const int64_t j1 = bwd_min64(j0 + kBN, static_cast<int64_t>(sk)) - 1;
  const int64_t off = static_cast<int64_t>(sk) - sq;
  int64_t i_lo = 0, i_hi = sq - 1;
  if (right >= 0) i_lo = bwd_max64(i_lo, j0 - off - right);
  if (left >= 0) i_hi = bwd_min64(i_hi, j1 - off + left);
  if (i_lo > i_hi) return BwdBlockRange{0, 0};
  return BwdBlockRange{static_cast<int>(i_lo / kBM), static_cast<int>(i_hi / kBM) + 1};
}

// The first key block that adds into query block m (the adders of m are
// contiguous from it, as bwd_m_range is exact and the visible region is a
// band), so that in ascending order key block n comes after
// n - bwd_first_adder(m) others. Without a left edge it is block 0.
template <int kBM, int kBN>
FLASH4_BWD_BLOCKS_FN int bwd_first_adder(int m, int sq, int sk, int left) {
  const int64_t first_key = static_cast<int64_t>(m) * kBM + (static_cast<int64_t>(sk) - sq) - left;
  return left >= 0 ? static_cast<int>(bwd_max64(int64_t(0), first_key) / kBN) : 0;
}

// Whether some key block adds into query block m: the first candidate
// (bwd_first_adder) sees m, as the rows of m see one contiguous key range.
// Deterministic mode: the first adder stores its piece instead of adding, so
// the preprocess zeroes only the blocks no key block reaches.
template <int kBM, int kBN>
FLASH4_BWD_BLOCKS_FN bool bwd_has_adder(int m, int sq, int sk, int left, int right) {
  const BwdBlockRange r =
      bwd_m_range<kBM, kBN>(bwd_first_adder<kBM, kBN>(m, sq, sk, left), sq, sk, left, right);
  return m >= r.begin && m < r.end;
}

// The last key block that adds into query block m (valid when some block
// does: the adders are bwd_first_adder .. this one). For an in-kernel dQ
// finish (docs/notes/bwd-pre-post-costs.md, design A1): the piece's adder
// count is last - first + 1.
template <int kBM, int kBN>
FLASH4_BWD_BLOCKS_FN int bwd_last_adder(int m, int sq, int sk, int right) {
  const int64_t i_last = bwd_min64(static_cast<int64_t>(m) * kBM + kBM, static_cast<int64_t>(sq)) - 1;
  int64_t last_key = static_cast<int64_t>(sk) - 1;
  if (right >= 0) last_key = bwd_min64(last_key, i_last + (static_cast<int64_t>(sk) - sq) + right);
  return static_cast<int>(last_key / kBN);
}

}  // namespace sm90
}  // namespace flash4
