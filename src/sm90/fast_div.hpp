// Division by a run-time divisor that stays fixed for a launch as a
// multiply-high and a shift: the Hopper forward's tile order divides by the
// query-block count and the head count between tiles (producer and
// consumers), and an integer division by a run-time value is ~20 dependent
// instructions (a MUFU.RCP among them). Host and device; checked against `/`
// on the host (tests/test_fast_div.cpp).
//
// For 1 <= d < 2^31, with l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1
// (Granlund-Montgomery, the multiplier's 33rd bit folded into "+ n"):
//   n / d = (umulhi(n, m) + n) >> l   for 0 <= n < 2^31 (the sum fits 32 bits).
#pragma once
#include <cstdint>

// (Its own macro: sm90/fragments.hpp defines FLASH4_HD without forceinline.)
#if defined(__CUDACC__)
#define FLASH4_FAST_DIV_FN __host__ __device__ __forceinline__
#else
#define FLASH4_FAST_DIV_FN inline
#endif

namespace flash4 {
namespace sm90 {

struct FastDiv {
  uint32_t divisor = 1;
  uint32_t multiplier = 1;
  uint32_t shift = 0;

  FastDiv() = default;
  // d < 1 is treated as 1 (callers pass counts that may be 0 when there is no work).
  FLASH4_FAST_DIV_FN explicit FastDiv(int d) {
    divisor = d < 1 ? 1u : static_cast<uint32_t>(d);
    uint32_t l = 0;
    while ((uint64_t(1) << l) < divisor) ++l;
    shift = l;
    multiplier = static_cast<uint32_t>(
        ((uint64_t(1) << 32) * ((uint64_t(1) << l) - divisor)) / divisor + 1);
  }
  // n / divisor for 0 <= n < 2^31.
  FLASH4_FAST_DIV_FN int div(int n) const {
    const uint32_t un = static_cast<uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(un, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(un) * multiplier) >> 32);
#endif
    return static_cast<int>((hi + un) >> shift);
  }
  // n % divisor, given q = div(n).
  FLASH4_FAST_DIV_FN int rem(int n, int q) const { return n - q * static_cast<int>(divisor); }
};

}  // namespace sm90
}  // namespace flash4

#undef FLASH4_FAST_DIV_FN
