// Hopper forward: coverage checks, tensor maps and dispatch.
// The kernel itself is in fwd_kernel.cuh; instantiations in fwd_sm90_hdim*.cu;
// the per-call tile/grid choice in fwd_launch.cuh (choose_fwd).
//
// Coverage (everything else is answered "not supported" with the reason, so
// dispatch falls back to the portable path):
//   compute capability 9.0 (sm_90a code), fp16/bf16, head dim 64 or 128,
//   batched layout with any 16-byte-multiple strides and 16-byte aligned
//   pointers, any Sq/Sk >= 0, GQA/MQA, causal (bottom-right aligned) or no
//   mask, softmax_scale > 0, LSE optional, exp2_emulation 0/-1 (MUFU exp2).
// Not covered yet: varlen (cu_seqlens), seqused_k, sliding window, softcap,
//   other head dims.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "common/kernels.hpp"
#include "sm90/fwd_launch.cuh"

namespace flash4 {

namespace {

constexpr int kSm90BlockN = 128;  // K/V rows per block (box rows of the K/V maps)
static_assert(sm90::ShippedFwdConfig<64, __nv_bfloat16, false, 3>::kBlockN == kSm90BlockN &&
                  sm90::ShippedFwdConfig<64, __nv_bfloat16, true, 2>::kBlockN == kSm90BlockN &&
                  sm90::ShippedFwdConfig<128, __nv_bfloat16, false, 2>::kBlockN == kSm90BlockN,
              "host tile sizes must match the kernel configuration");

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  });
  return fn;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// One (rows, heads, batch) stride set of a 4-D tensor (D, S, H, B) in elements.
struct Dims4 {
  int64_t d, s, h, b;
  int64_t row_stride, head_stride, batch_stride;
};

// TMA strides in bytes. A dimension of size 1 is never stepped, so its stride
// is replaced by a legal packed value (the caller's may be 0 or unaligned).
void tma_strides(const Dims4& t, uint64_t out[3]) {
  constexpr int64_t kElem = 2;
  const int64_t packed_row = ((t.d * kElem + 15) / 16) * 16;
  const int64_t rs = t.s > 1 ? t.row_stride * kElem : packed_row;
  const int64_t hs = t.h > 1 ? t.head_stride * kElem : rs * t.s;
  const int64_t bs = t.b > 1 ? t.batch_stride * kElem : hs * t.h;
  out[0] = static_cast<uint64_t>(rs);
  out[1] = static_cast<uint64_t>(hs);
  out[2] = static_cast<uint64_t>(bs);
}

bool check_tensor(const char* name, const void* ptr, const Dims4& t, std::string* why) {
  if (!aligned16(ptr)) {
    if (why) *why = std::string("sm90 forward needs 16-byte aligned ") + name + " (TMA)";
    return false;
  }
  uint64_t st[3];
  tma_strides(t, st);
  const int64_t sizes[3] = {t.s, t.h, t.b};
  const char* dim_names[3] = {"row", "head", "batch"};
  for (int i = 0; i < 3; ++i) {
    const int64_t v = static_cast<int64_t>(st[i]);
    if (sizes[i] > 1 && (v <= 0 || v % 16 != 0 || v >= (int64_t(1) << 40))) {
      if (why)
        *why = std::string("sm90 forward needs ") + name + " " + dim_names[i] +
               " stride in bytes positive, a multiple of 16 and below 2^40 (TMA)";
      return false;
    }
  }
  return true;
}

bool encode_map(CUtensorMap* map, const void* ptr, bool bf16, const Dims4& t, uint32_t box_rows) {
  auto enc = tensor_map_encoder();
  if (enc == nullptr) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(t.d),
                              static_cast<cuuint64_t>(t.s > 0 ? t.s : 1),
                              static_cast<cuuint64_t>(t.h), static_cast<cuuint64_t>(t.b)};
  uint64_t st[3];
  tma_strides(t, st);
  const cuuint64_t strides[3] = {st[0], st[1], st[2]};
  const cuuint32_t box[4] = {64u, box_rows, 1u, 1u};
  const cuuint32_t estr[4] = {1u, 1u, 1u, 1u};
  const CUresult r =
      enc(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
          const_cast<void*>(ptr), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

Dims4 q_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride, p.q_head_stride,
          p.q_batch_stride};
}
Dims4 k_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride, p.k_head_stride,
          p.k_batch_stride};
}
Dims4 v_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride, p.v_head_stride,
          p.v_batch_stride};
}
Dims4 o_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_q, p.heads_q, p.batch, p.o_row_stride, p.o_head_stride,
          p.o_batch_stride};
}

}  // namespace

bool sm90_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why) {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  if (cc_major != 9 || cc_minor != 0)
    return no("sm90 forward is built for sm_90a and runs only on compute capability 9.0, not " +
              std::to_string(cc_major) + "." + std::to_string(cc_minor));
  if (p.dtype != DType::kBf16 && p.dtype != DType::kFp16)
    return no("sm90 forward supports fp16 and bf16 only");
  if (p.headdim != 64 && p.headdim != 128)
    return no("sm90 forward has no kernel for head dim " + std::to_string(p.headdim) +
              " (instantiated: 64, 128)");
  if (p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr)
    return no("sm90 forward does not support varlen (cu_seqlens) yet");
  if (p.seqused_k != nullptr) return no("sm90 forward does not support seqused_k yet");
  if (p.softcap != 0.f) return no("sm90 forward does not support softcap yet");
  if (p.window_left >= 0 || (p.window_right >= 0 && !(p.is_causal && p.window_right == 0)))
    return no("sm90 forward does not support local (sliding window) attention yet");
  if (p.exp2_emulation > 0)
    return no("sm90 forward does not ship exp2 emulation (a kernel option, measured slower on "
              "H100); exp2_emulation must be 0 or -1");
  if (!(p.softmax_scale > 0.f) || !(p.softmax_scale_log2 > 0.f))
    return no("sm90 forward needs softmax_scale > 0 (the row max is taken on unscaled scores)");
  if (p.batch < 0) return no("negative batch");
  if (p.heads_q < 1) return no("sm90 forward needs heads_q >= 1");
  if (p.heads_kv < 1 || p.heads_q % p.heads_kv != 0)
    return no("sm90 forward needs heads_q to be a multiple of heads_kv");
  if (p.seqlen_q < 0 || p.seqlen_k < 0) return no("negative sequence length");
  if (static_cast<int64_t>((p.seqlen_q + 63) / 64) * p.heads_q * p.batch >
      (int64_t(1) << 31) - 1)
    return no("sm90 forward supports at most 2^31-1 output tiles");
  if (!check_tensor("q", p.q, q_dims(p), why)) return false;
  if (!check_tensor("k", p.k, k_dims(p), why)) return false;
  if (!check_tensor("v", p.v, v_dims(p), why)) return false;
  if (!check_tensor("out", p.out, o_dims(p), why)) return false;
  if (tensor_map_encoder() == nullptr)
    return no("sm90 forward needs cuTensorMapEncodeTiled from the driver (not found)");
  if (why) *why = "sm90 forward (TMA + wgmma, warp-specialised)";
  return true;
}

cudaError_t sm90_fwd_run(const FwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return cudaSuccess;  // nothing to write
  const bool bf16 = p.dtype == DType::kBf16;
  sm90::FwdKernelArgs args;
  const sm90::FwdChoice choice = sm90::choose_fwd(p.headdim, p.is_causal, p.seqlen_k);
  const int block_m = 64 * choice.consumers;  // query rows per tile
  if (!encode_map(&args.tm_q, p.q, bf16, q_dims(p), static_cast<uint32_t>(block_m)) ||
      !encode_map(&args.tm_k, p.k, bf16, k_dims(p), kSm90BlockN) ||
      !encode_map(&args.tm_v, p.v, bf16, v_dims(p), kSm90BlockN) ||
      !encode_map(&args.tm_o, p.out, bf16, o_dims(p), 64))
    return cudaErrorInvalidValue;
  args.lse = p.lse;
  args.lse_batch_stride = p.lse_batch_stride;
  args.lse_head_stride = p.lse_head_stride;
  args.scale_log2 = p.softmax_scale_log2;
  int num_sms = p.num_sms;
  if (num_sms <= 0) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
  }
  const sm90::FwdLaunch l =
      sm90::plan_fwd_tiles(&args, block_m, p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv,
                           p.headdim, num_sms, choice.persistent);
  switch (p.headdim) {
    case 64: return sm90::fwd_run_hdim64(args, l, bf16, p.is_causal, choice.consumers, stream);
    case 128: return sm90::fwd_run_hdim128(args, l, bf16, p.is_causal, choice.consumers, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace flash4
