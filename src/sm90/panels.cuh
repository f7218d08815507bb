// 64-column panels of a tile that hold no data: head dims 136..192 on the
// head-dim-256 kernels (forward and backward).
//
// Such a kernel's last panel (columns 192..255) lies entirely past the real
// head dim. TMA would zero-fill it, but on a ragged 5-D map (varlen,
// seqused_k; sm90/tensor_map.hpp) a box entirely out of bounds in dimension
// 0 faulted on the H100 ("illegal memory access", depending on where the
// tensors sat: head dims 136 and 192 with varlen, never 200 / 240 / 256 or
// plain 4-D maps). So the kernels issue no TMA for these panels: their
// shared-memory tiles are zeroed once at kernel start (no load ever writes
// them again, and they hold zeros, which add nothing to the GEMMs) and
// their stores are skipped (the columns do not exist).
#pragma once
#include <cstdint>

#include "sm90/ptx.cuh"

namespace flash4 {
namespace sm90 {

// Zeroes panels [first, kPanels) of `tiles` tiles of kPanels panels each
// (tile i at base + i * tile_bytes, panel p at + p * panel_bytes), with all
// threads of the CTA; then makes the zeros visible to the async proxy (TMA,
// wgmma). Call before the __syncthreads that precedes the pipelines.
template <int kPanels>
__device__ __forceinline__ void zero_tail_panels(uint8_t* base, uint32_t tile_bytes, int tiles,
                                                 uint32_t panel_bytes, int first) {
  if (first >= kPanels) return;  // uniform: every panel has data
  const uint32_t span = static_cast<uint32_t>(kPanels - first) * panel_bytes;  // bytes per tile
  for (int i = 0; i < tiles; ++i) {
    uint8_t* p0 = base + i * tile_bytes + first * panel_bytes;
    for (uint32_t off = threadIdx.x * 16u; off < span; off += blockDim.x * 16u)
      *reinterpret_cast<uint4*>(p0 + off) = make_uint4(0u, 0u, 0u, 0u);
  }
  fence_proxy_async_smem();
}

}  // namespace sm90
}  // namespace flash4
