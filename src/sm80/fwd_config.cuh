// Tile configurations of the portable (sm80-class) forward and the launch
// entry that each per-head-dim translation unit instantiates. Light header:
// no kernel code, so the dispatcher can include it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "common/params.hpp"

namespace flash4 {
namespace sm80 {

// kHeadDim: padded head dim of the instantiation (columns >= the real head
// dim are loaded as zeros and never stored). Each warp owns kMTiles
// consecutive 16-row slices of the kBlockM query rows.
template <typename T_, int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, bool kQInRegs_>
struct FwdConfig {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kMTiles = kBlockM / (16 * kNWarps);  // 16-row slices per warp
  static constexpr int kNTiles = kBlockN / 8;                // n-tiles of S
  static constexpr int kDTiles = kHeadDim / 8;               // n-tiles of O
  static constexpr int kKSteps = kHeadDim / 16;              // k-steps of Q.K^T
  static constexpr int kPSteps = kBlockN / 16;               // k-steps of P.V
  static constexpr int kChunks = kHeadDim / 8;               // 16-byte chunks per row
  // Shared tiles are row-major. Rows of a multiple of 8 chunks use an XOR
  // swizzle of the chunk index with (row % 8); others get one chunk of
  // padding (odd row stride in chunks). Both keep ldmatrix conflict-free.
  static constexpr bool kSwizzle = (kChunks % 8) == 0;
  static constexpr int kRowChunks = kSwizzle ? kChunks : kChunks + 1;
  static constexpr int kRowBytes = kRowChunks * 16;
  static constexpr int kSmemQ = kBlockM * kRowBytes;
  static constexpr int kSmemKV = kBlockN * kRowBytes;
  static constexpr int kSmemBytes = kSmemQ + 2 * kSmemKV;

  static_assert(kHeadDim % 16 == 0 && kHeadDim <= 256, "padded head dim");
  static_assert(kMTiles >= 1 && kMTiles * 16 * kNWarps == kBlockM, "rows per warp");
  static_assert(kBlockN % 16 == 0, "kBlockN");
  static_assert(kSwizzle || (kRowChunks % 2) == 1, "odd padded stride");
};

// The ten shipped instantiations (one per padded head dim and dtype).
// Every one fits in 96 KiB of shared memory, so it runs on every cc >= 8.0
// part (sm86/sm89 allow 99 KiB per block). Chosen by measurement on H100
// (bf16, 16k tokens, 2048/d heads): d64 128x64 beat 128x128 (which spills
// heavily) and 128x128/8 warps; d128 128x64 beat 128x32 and 64x64 with Q in
// registers; d256 64x64 beat 128x64/8 warps. d96 and d128 spill a few
// loop-invariant scalars (ptxas fills all 255 registers with ldmatrix
// prefetch; about 6 L1-resident reloads per key block for d128) and are still
// the fastest configurations tried. See src/sm80/dev/ for the driver.
template <typename T> using FwdHd64 = FwdConfig<T, 64, 128, 64, 4, false>;
template <typename T> using FwdHd96 = FwdConfig<T, 96, 128, 64, 4, false>;
template <typename T> using FwdHd128 = FwdConfig<T, 128, 128, 64, 4, false>;
template <typename T> using FwdHd192 = FwdConfig<T, 192, 128, 64, 8, false>;
template <typename T> using FwdHd256 = FwdConfig<T, 256, 64, 64, 4, false>;

// Launches fwd_kernel<Cfg> on `stream`; returns cudaGetLastError().
template <class Cfg>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream);

// Number of query blocks of the grid (max over the batch for varlen).
__host__ __device__ inline long long fwd_num_m_blocks(int seqlen_q, int block_m) {
  return seqlen_q <= 0 ? 0 : (static_cast<long long>(seqlen_q) + block_m - 1) / block_m;
}

}  // namespace sm80
}  // namespace flash4
