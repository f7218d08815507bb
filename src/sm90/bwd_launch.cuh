// Launch helpers for the Hopper backward: the three kernels of one head dim
// (preprocess, main, postprocess) on a stream, and the per-head-dim entry
// points that the instantiation files (bwd_sm90_hdim*.cu) define.
#pragma once
#include <cuda_runtime.h>
#include "sm90/bwd_kernel.cuh"

namespace flash4 {
namespace sm90 {

// Mask family of a call (the main kernel's template flags).
enum class BwdMask : int { kNone = 0, kCausal = 1, kLocal = 2 };

// Everything a backward launch needs; filled by sm90_bwd_run (bwd_sm90.cu).
struct BwdLaunch {
  BwdKernelArgs main;
  BwdPrepArgs prep;
  BwdPostArgs post;
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int n_blocks = 0;     // ceil(Sk / kBlockN): main-kernel CTAs per (b, h_kv)
  int prep_blocks = 0;  // sq_pad / 64
  int post_blocks = 0;  // ceil(Sq / bwd_post_rows)
  BwdMask mask = BwdMask::kNone;
  bool softcap = false;
  // Deterministic mode (main.dq_sem / dq_ticket and dq_sem_region set);
  // only with prep_blocks > 0, as the preprocess zeroes the region.
  bool deterministic = false;
  int* dq_sem_region = nullptr;  // the workspace's dq_sem region
};

// The kernel head dim that runs head dim d (8..256, multiple of 8): maps are
// d columns wide, TMA zero-fills the rest (sm90/tensor_map.hpp).
inline int bwd_kernel_headdim(int d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

// Tile sizes of the main kernel for kernel head dim kd (64, 128, 256; the
// same in every mode), and the query rows of a postprocess CTA.
inline int bwd_block_m(int kd) {
  return kd == 64    ? BwdConfig<64, __nv_bfloat16, false>::kBlockM
         : kd == 128 ? BwdConfig<128, __nv_bfloat16, false>::kBlockM
                     : BwdConfig<256, __nv_bfloat16, false>::kBlockM;
}
inline int bwd_block_n(int kd) {
  return kd == 64    ? BwdConfig<64, __nv_bfloat16, false>::kBlockN
         : kd == 128 ? BwdConfig<128, __nv_bfloat16, false>::kBlockN
                     : BwdConfig<256, __nv_bfloat16, false>::kBlockN;
}
inline int bwd_post_rows(int kd) {
  return kd == 64 ? bwd_post_rows<64>() : kd == 128 ? bwd_post_rows<128>() : bwd_post_rows<256>();
}

// Programmatic dependent launch (PDL) of a kernel that follows another of
// this call on the stream: its CTAs may start while the previous grid drains
// and wait in griddepcontrol.wait (the kernels' first instruction) for its
// completion. Only after a kernel of this call: the first kernel of a call
// keeps full stream order with the caller's work (the main kernel reads Q,
// K, V, dO the caller may have just written).
inline void set_pdl(cudaLaunchConfig_t& cfg, cudaLaunchAttribute& attr, bool after_own_kernel) {
  if (!after_own_kernel) return;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
}

template <class C>
cudaError_t launch_bwd_main(const BwdLaunch& l, cudaStream_t stream) {
  auto kernel = bwd_kernel<C>;
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(l.n_blocks) * static_cast<unsigned>(l.heads_kv) *
                         static_cast<unsigned>(l.batch),
                     1, 1);  // < 2^31 (sm90_bwd_supported)
  cfg.blockDim = dim3(C::kNumThreads, 1, 1);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr;
  set_pdl(cfg, attr, l.prep_blocks > 0);
  return cudaLaunchKernelEx(&cfg, kernel, l.main);
}

template <int kD, typename T, bool kDeterministic, bool kSoftcap>
cudaError_t launch_bwd_main_masked(const BwdLaunch& l, cudaStream_t stream) {
  switch (l.mask) {
    case BwdMask::kCausal:
      return launch_bwd_main<BwdConfig<kD, T, true, kDeterministic, false, kSoftcap>>(l, stream);
    case BwdMask::kLocal:
      return launch_bwd_main<BwdConfig<kD, T, false, kDeterministic, true, kSoftcap>>(l, stream);
    default:
      return launch_bwd_main<BwdConfig<kD, T, false, kDeterministic, false, kSoftcap>>(l, stream);
  }
}

// Preprocess -> main -> postprocess, each skipped when it has nothing to do
// (Sq == 0: no query rows; Sk == 0: no key blocks, dq comes out zero).
template <int kD, typename T, bool kDeterministic>
cudaError_t launch_bwd(const BwdLaunch& l, cudaStream_t stream) {
  if (l.prep_blocks > 0) {
    bwd_preprocess_kernel<T, kD, kDeterministic>
        <<<dim3(static_cast<unsigned>(l.prep_blocks), static_cast<unsigned>(l.heads_q),
                static_cast<unsigned>(l.batch)),
           256, 0, stream>>>(l.prep, l.dq_sem_region);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (l.n_blocks > 0) {
    const cudaError_t e = l.softcap ? launch_bwd_main_masked<kD, T, kDeterministic, true>(l, stream)
                                    : launch_bwd_main_masked<kD, T, kDeterministic, false>(l, stream);
    if (e != cudaSuccess) return e;
  }
  if (l.post_blocks > 0) {
    const dim3 grid(static_cast<unsigned>(l.post_blocks), static_cast<unsigned>(l.heads_q),
                    static_cast<unsigned>(l.batch));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(256, 1, 1);
    cfg.stream = stream;
    cudaLaunchAttribute attr;
    set_pdl(cfg, attr, l.n_blocks > 0 || l.prep_blocks > 0);
    const cudaError_t e = cudaLaunchKernelEx(&cfg, bwd_postprocess_kernel<T, kD>, l.post);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <int kD, bool kDeterministic>
cudaError_t launch_bwd_shipped(const BwdLaunch& l, bool bf16, cudaStream_t stream) {
  return bf16 ? launch_bwd<kD, __nv_bfloat16, kDeterministic>(l, stream)
              : launch_bwd<kD, __half, kDeterministic>(l, stream);
}

// Defined in bwd_sm90_hdim64.cu / bwd_sm90_hdim128.cu (every mode; the
// deterministic kernels come from the *_det.cu files, compiled apart).
cudaError_t bwd_run_hdim64(const BwdLaunch& l, bool bf16, cudaStream_t stream);
cudaError_t bwd_run_hdim128(const BwdLaunch& l, bool bf16, cudaStream_t stream);
// Defined in bwd_sm90_hdim256.cu / bwd_sm90_hdim256_det.cu.
cudaError_t bwd_run_hdim256(const BwdLaunch& l, bool bf16, cudaStream_t stream);
cudaError_t bwd_run_hdim256_det(const BwdLaunch& l, bool bf16, cudaStream_t stream);
// Defined in bwd_sm90_hdim64_det.cu / bwd_sm90_hdim128_det.cu.
cudaError_t bwd_run_hdim64_det(const BwdLaunch& l, bool bf16, cudaStream_t stream);
cudaError_t bwd_run_hdim128_det(const BwdLaunch& l, bool bf16, cudaStream_t stream);

}  // namespace sm90
}  // namespace flash4
