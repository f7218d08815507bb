// Launch helpers for the Hopper forward: one function template that launches
// one configuration, and the per-head-dim entry points that the instantiation
// files (fwd_sm90_hdim*.cu) define.
#pragma once
#include <cuda_runtime.h>
#include "common/params.hpp"
#include "sm90/fwd_kernel.cuh"

namespace flash4 {
namespace sm90 {

struct FwdLaunch {
  int grid = 0;  // CTAs: args.num_tiles (one tile each) or fewer (persistent)
};

template <class C>
cudaError_t launch_fwd(const FwdKernelArgs& args, const FwdLaunch& l, cudaStream_t stream) {
  auto kernel = fwd_kernel<C>;
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(l.grid), 1, 1);
  cfg.blockDim = dim3(C::kNumThreads, 1, 1);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = nullptr;
  cfg.numAttrs = 0;
  return cudaLaunchKernelEx(&cfg, kernel, args);
}

// What the library ships, per (head dim, dtype, causal, consumer count,
// softcap): intra-warpgroup overlap + ping-pong, FA4's conditional rescale
// (the reference max moves only when a row max grows by more than 8 in log2
// units: +2-10% at d64 / d128, +1-6% at d256 on the H200; error ratio up to
// ~1.8 against 1.0 with threshold 0, within the 2x rule; docs/perf.md), MUFU
// exp2, K/V stages: 3 at head dim 64 (its short blocks
// waited on K/V loads at 512; +0-2.4% at 512-4k on the H200, docs/perf.md),
// 2 otherwise (shared memory). Head dim 256 (128x80 tiles, O staged over V)
// runs without ping-pong, as FA3 does there: its wgmmas are long next to the
// softmax of a 64x80 block (not measured here).
// Head dim 128 keeps Q in registers (RS Q K^T: +4-5% on H100, docs/perf.md).
template <int kD>
constexpr bool kShippedQInRegs = kD == 128;
constexpr int kShippedRescaleThreshold = 8;
template <int kD, typename T, bool kCausal, int kConsumers, bool kSoftcap = false>
using ShippedFwdConfig = FwdConfig<kD, T, kCausal, /*stages*/ (kD == 64 ? 3 : 2), /*overlap*/ true,
                                   /*pingpong*/ kD != 256,
                                   /*rescale threshold*/ kShippedRescaleThreshold,
                                   /*exp2 emulation*/ 0, kConsumers, kSoftcap,
                                   /*block_n*/ 0, kShippedQInRegs<kD>>;

// The kernel head dim that runs head dim d (8..256, multiple of 8): the
// next instantiated one; its maps are d columns wide (sm90/tensor_map.hpp).
inline int fwd_kernel_headdim(int d) { return d <= 64 ? 64 : (d <= 128 ? 128 : 256); }

// K/V rows per block of the shipped configurations (the K/V maps' box rows).
inline int fwd_block_n(int headdim) { return headdim == 256 ? 80 : 128; }

// Per-call choice (measured on H100, bf16, B*S = 16k, see the sm90 notes):
//   consumers: head dim 64 uses 3 consumer warpgroups (192-row tiles), except
//     short causal (Sk <= 1024: 128-row tiles waste less on the diagonal);
//     head dim 128 and 256 use 2 (the register budget allows no more).
//   persistent: one CTA per SM with a static snake order. Non-causal tiles
//     cost the same, so it always wins (no relaunch per tile, epilogue
//     overlapped). Causal d128 tiles vary in cost and from Sk ~2k a static
//     split loses to the hardware's dynamic CTA scheduling (tiles are ordered
//     heaviest first), so there one CTA per tile is launched; causal d64
//     with 192-row tiles measured better persistent at every length.
//     Head dim 256 (O staged over the V ring, so the next tile's Q and K
//     load during the epilogue) follows the head dim 128 rule.
struct FwdChoice {
  int consumers = 2;
  bool persistent = true;
};
inline FwdChoice choose_fwd(int headdim, bool causal, int seqlen_k) {
  FwdChoice c;
  if (headdim == 64) {
    c.consumers = (causal && seqlen_k <= 1024) ? 2 : 3;
    c.persistent = true;
  } else {
    c.consumers = 2;
    c.persistent = !causal || seqlen_k <= 1024;
  }
  return c;
}

// Host-side tile bookkeeping shared by the library and the dev driver:
// fills the scheduling fields of `a` and returns the grid (persistent: at
// most one CTA per SM).
inline FwdLaunch plan_fwd_tiles(FwdKernelArgs* a, int block_m, int batch, int seqlen_q,
                                int seqlen_k, int heads_q, int heads_kv, int headdim, int num_sms,
                                bool persistent) {
  a->seqlen_q = seqlen_q;
  a->seqlen_k = seqlen_k;
  a->heads_q = heads_q;
  a->group = heads_q / heads_kv;
  a->num_m_blocks = (seqlen_q + block_m - 1) / block_m;
  a->num_hb = heads_q * batch;
  int64_t grid = static_cast<int64_t>(a->num_m_blocks) * a->num_hb;
  if (persistent && num_sms > 0 && grid > num_sms) grid = num_sms;
  // Causal order: sections of (b,h) pairs (sm90/tile_order.hpp says how large).
  a->heads_per_section = causal_heads_per_section(a->num_m_blocks, a->num_hb, a->group, seqlen_k,
                                                  headdim, persistent, num_sms, grid);
  // Callers guarantee num_m_blocks * num_hb < 2^31 (sm90_fwd_supported checks it).
  a->num_tiles = a->num_m_blocks * a->num_hb;
  a->div_m_blocks = FastDiv(a->num_m_blocks);
  a->div_heads_q = FastDiv(a->heads_q);
  a->div_section = FastDiv(a->num_m_blocks * a->heads_per_section);
  a->div_heads_per_section = FastDiv(a->heads_per_section);
  FwdLaunch l;
  l.grid = static_cast<int>(grid);
  return l;
}

template <int kD, typename T, bool kCausal, bool kSoftcap>
cudaError_t launch_fwd_shipped_t(const FwdKernelArgs& args, const FwdLaunch& l, int consumers,
                                 cudaStream_t stream) {
  if constexpr (kD == 64) {
    if (consumers == 3)
      return launch_fwd<ShippedFwdConfig<64, T, kCausal, 3, kSoftcap>>(args, l, stream);
    if constexpr (kCausal) {
      if (consumers == 2)
        return launch_fwd<ShippedFwdConfig<64, T, true, 2, kSoftcap>>(args, l, stream);
    }
  } else {
    if (consumers == 2)
      return launch_fwd<ShippedFwdConfig<kD, T, kCausal, 2, kSoftcap>>(args, l, stream);
  }
  return cudaErrorInvalidValue;  // a choice choose_fwd never makes
}

template <int kD, typename T>
cudaError_t launch_fwd_shipped_tt(const FwdKernelArgs& args, const FwdLaunch& l, bool causal,
                                  bool softcap, int consumers, cudaStream_t stream) {
  if (softcap)
    return causal ? launch_fwd_shipped_t<kD, T, true, true>(args, l, consumers, stream)
                  : launch_fwd_shipped_t<kD, T, false, true>(args, l, consumers, stream);
  return causal ? launch_fwd_shipped_t<kD, T, true, false>(args, l, consumers, stream)
                : launch_fwd_shipped_t<kD, T, false, false>(args, l, consumers, stream);
}

template <int kD>
cudaError_t launch_fwd_shipped(const FwdKernelArgs& args, const FwdLaunch& l, bool bf16,
                               bool causal, bool softcap, int consumers, cudaStream_t stream) {
  return bf16 ? launch_fwd_shipped_tt<kD, __nv_bfloat16>(args, l, causal, softcap, consumers,
                                                         stream)
              : launch_fwd_shipped_tt<kD, __half>(args, l, causal, softcap, consumers, stream);
}

// exp2_emulation = 1: 1 in kExp2EmuEveryShipped 8-column chunks of the
// exponentials on the FMA pipe (fwd_sm90_exp2emu.cu; head dims <= 128, no
// softcap).
constexpr int kExp2EmuEveryShipped = 4;
cudaError_t fwd_run_exp2emu(const FwdKernelArgs& args, const FwdLaunch& l, int kd, bool bf16,
                            bool causal, int consumers, cudaStream_t stream);

// Defined in fwd_sm90.cu: tensor maps and kernel arguments for a call that
// sm90_fwd_supported accepted, for tiles of block_m query rows (the library
// path and the dev driver build their arguments the same way) and K/V blocks
// of block_n rows (the configuration's kBlockN: the K/V maps' box).
cudaError_t fwd_prepare(const FwdParams& p, int block_m, int block_n, bool persistent,
                        FwdKernelArgs* args, FwdLaunch* launch);

// Defined in fwd_sm90_hdim64.cu / fwd_sm90_hdim128.cu / fwd_sm90_hdim256.cu.
cudaError_t fwd_run_hdim64(const FwdKernelArgs& args, const FwdLaunch& l, bool bf16, bool causal,
                           bool softcap, int consumers, cudaStream_t stream);
cudaError_t fwd_run_hdim128(const FwdKernelArgs& args, const FwdLaunch& l, bool bf16, bool causal,
                            bool softcap, int consumers, cudaStream_t stream);
cudaError_t fwd_run_hdim256(const FwdKernelArgs& args, const FwdLaunch& l, bool bf16, bool causal,
                            bool softcap, int consumers, cudaStream_t stream);

}  // namespace sm90
}  // namespace flash4
