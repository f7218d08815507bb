// Hopper forward: coverage checks, tensor maps and dispatch.
// The kernel itself is in fwd_kernel.cuh; instantiations in fwd_sm90_hdim*.cu;
// the per-call tile/grid choice in fwd_launch.cuh (choose_fwd).
//
// Coverage (everything else is answered "not supported" with the reason, so
// dispatch falls back to the portable path):
//   compute capability 9.0 (sm_90a code), fp16/bf16, head dim 64, 128 or 256,
//   batched or varlen (cu_seqlens) layout with 16-byte-multiple strides and
//   16-byte aligned pointers, seqused_k, any Sq/Sk >= 0 (Sq + Sk < 2^30),
//   GQA/MQA, causal (bottom-right aligned), local windows (left/right, with
//   or without causal), softcap, softmax_scale > 0, LSE optional,
//   exp2_emulation 0/-1 (MUFU exp2).
// Not covered: other head dims (the portable path runs them).
//
// Tensor maps. Plain (batched, no seqused_k): 4-D {D, S, H, B}, byte strides
// {row, head, batch}. Ragged (varlen tensors; K/V with seqused_k): 5-D
// {D, L, H, B, E}, byte strides {row, head, batch, row}, L = max length,
// B = 1 for varlen, E = 2^31, base = the tensor minus L rows; the kernel addresses
// position pos of a sequence (start, len) with row coordinate L - len + pos
// and 5th coordinate start + len, so the row read is start + pos and rows
// pos >= len fall outside dimension 1: TMA zero-fills them on loads and
// drops them on stores (see fwd_kernel.cuh, "Sequences").
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/kernels.hpp"
#include "sm90/fwd_launch.cuh"

namespace flash4 {

namespace {

// K/V rows per block (box rows of the K/V maps): sm90::fwd_block_n(headdim).
static_assert(sm90::ShippedFwdConfig<64, __nv_bfloat16, false, 3>::kBlockN == 128 &&
                  sm90::ShippedFwdConfig<64, __nv_bfloat16, true, 2>::kBlockN == 128 &&
                  sm90::ShippedFwdConfig<128, __nv_bfloat16, false, 2>::kBlockN == 128 &&
                  sm90::ShippedFwdConfig<256, __nv_bfloat16, false, 2>::kBlockN == 80 &&
                  sm90::ShippedFwdConfig<256, __half, true, 2, true>::kBlockN == 80,
              "host tile sizes (fwd_block_n) must match the kernel configuration");

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

bool legal_stride(int64_t bytes) {
  return bytes > 0 && bytes % 16 == 0 && bytes < (int64_t(1) << 40);
}

// Ragged maps step rows through two dimensions and start L rows before the
// tensor: the real row stride is always used, and the shifted base must not
// wrap below address 0.
bool check_tensor(const char* name, const void* ptr, const Dims4& t, bool ragged,
                  std::string* why) {
  if (!aligned16(ptr)) {
    if (why) *why = std::string("sm90 forward needs 16-byte aligned ") + name + " (TMA)";
    return false;
  }
  uint64_t st[3];
  tma_strides(t, st);
  if (ragged) st[0] = static_cast<uint64_t>(t.row_stride * 2);
  const int64_t sizes[3] = {ragged ? int64_t(2) : t.s, t.h, t.b};
  const char* dim_names[3] = {"row", "head", "batch"};
  for (int i = 0; i < 3; ++i) {
    if (sizes[i] > 1 && !legal_stride(static_cast<int64_t>(st[i]))) {
      if (why)
        *why = std::string("sm90 forward needs ") + name + " " + dim_names[i] +
               " stride in bytes positive, a multiple of 16 and below 2^40 (TMA)";
      return false;
    }
  }
  if (ragged) {
    const uint64_t shift = static_cast<uint64_t>(t.s > 0 ? t.s : 1) * st[0];
    if (reinterpret_cast<uintptr_t>(ptr) < shift) {
      if (why)
        *why = std::string("sm90 forward (varlen / seqused_k) needs the address of ") + name +
               " to be at least max_seqlen rows (it addresses rows from L rows before it)";
      return false;
    }
  }
  return true;
}

bool encode_map(CUtensorMap* map, const void* ptr, bool bf16, const Dims4& t, bool ragged,
                uint32_t box_rows) {
  auto enc = tensor_map_encoder();
  if (enc == nullptr) return false;
  const uint64_t L = static_cast<uint64_t>(t.s > 0 ? t.s : 1);
  uint64_t st[3];
  tma_strides(t, st);
  if (ragged) st[0] = static_cast<uint64_t>(t.row_stride * 2);
  const cuuint64_t dims[5] = {static_cast<cuuint64_t>(t.d), static_cast<cuuint64_t>(L),
                              static_cast<cuuint64_t>(t.h), static_cast<cuuint64_t>(t.b),
                              cuuint64_t(1) << 31};
  const cuuint64_t strides[4] = {st[0], st[1], st[2], st[0]};
  const cuuint32_t box[5] = {64u, box_rows, 1u, 1u, 1u};
  const cuuint32_t estr[5] = {1u, 1u, 1u, 1u, 1u};
  const char* base = static_cast<const char*>(ptr);
  if (ragged) base = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(ptr) - L * st[0]);
  const CUresult r =
      enc(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
          ragged ? 5u : 4u,
          const_cast<char*>(base), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// Varlen tensors are (total, H, D): one "batch" entry in the maps.
int map_batch(const FwdParams& p) { return p.cu_seqlens_q != nullptr ? 1 : p.batch; }
Dims4 q_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.q_row_stride, p.q_head_stride,
          p.q_batch_stride};
}
Dims4 k_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.k_row_stride, p.k_head_stride,
          p.k_batch_stride};
}
Dims4 v_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.v_row_stride, p.v_head_stride,
          p.v_batch_stride};
}
Dims4 o_dims(const FwdParams& p) {
  return {p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.o_row_stride, p.o_head_stride,
          p.o_batch_stride};
}
bool q_ragged(const FwdParams& p) { return p.cu_seqlens_q != nullptr; }
bool k_ragged(const FwdParams& p) { return p.cu_seqlens_k != nullptr || p.seqused_k != nullptr; }

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
  if (p.headdim != 64 && p.headdim != 128 && p.headdim != 256)
    return no("sm90 forward has no kernel for head dim " + std::to_string(p.headdim) +
              " (instantiated: 64, 128, 256)");
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    return no("sm90 forward needs both cu_seqlens_q and cu_seqlens_k for varlen");
  if (p.exp2_emulation > 0)
    return no("sm90 forward does not ship exp2 emulation (a kernel option, measured slower on "
              "H100); exp2_emulation must be 0 or -1");
  if (!(p.softcap >= 0.f) || !std::isfinite(p.softcap))
    return no("sm90 forward needs a finite softcap >= 0");
  if (!(p.softmax_scale > 0.f) || !(p.softmax_scale_log2 > 0.f) ||
      !std::isfinite(p.softmax_scale))
    return no("sm90 forward needs a finite softmax_scale > 0 (the row max is taken on unscaled "
              "scores)");
  if (p.window_left < -1 || p.window_right < -1) return no("window bounds must be >= -1");
  if (p.is_causal && p.window_right != 0)
    return no("sm90 forward: causal means window_right == 0");
  if (p.batch < 0) return no("negative batch");
  if (p.heads_q < 1) return no("sm90 forward needs heads_q >= 1");
  if (p.heads_kv < 1 || p.heads_q % p.heads_kv != 0)
    return no("sm90 forward needs heads_q to be a multiple of heads_kv");
  if (p.seqlen_q < 0 || p.seqlen_k < 0) return no("negative sequence length");
  if (int64_t(p.seqlen_q) + p.seqlen_k >= (int64_t(1) << 30))
    return no("sm90 forward supports seqlen_q + seqlen_k < 2^30 (32-bit mask arithmetic)");
  if (static_cast<int64_t>((p.seqlen_q + 63) / 64) * p.heads_q * p.batch >
      (int64_t(1) << 31) - 1)
    return no("sm90 forward supports at most 2^31-1 output tiles");
  if (!check_tensor("q", p.q, q_dims(p), q_ragged(p), why)) return false;
  if (!check_tensor("k", p.k, k_dims(p), k_ragged(p), why)) return false;
  if (!check_tensor("v", p.v, v_dims(p), k_ragged(p), why)) return false;
  if (!check_tensor("out", p.out, o_dims(p), q_ragged(p), why)) return false;
  if (tensor_map_encoder() == nullptr)
    return no("sm90 forward needs cuTensorMapEncodeTiled from the driver (not found)");
  if (q_ragged(p) || k_ragged(p)) {
    // The ragged maps (5-D, shifted base) are encoded once here, so that a
    // driver that rejects them sends the call to the portable path instead of
    // failing it.
    CUtensorMap probe;
    const bool bf16 = p.dtype == DType::kBf16;
    if ((q_ragged(p) && (!encode_map(&probe, p.q, bf16, q_dims(p), true, 64) ||
                         !encode_map(&probe, p.out, bf16, o_dims(p), true, 64))) ||
        (k_ragged(p) &&
         (!encode_map(&probe, p.k, bf16, k_dims(p), true, sm90::fwd_block_n(p.headdim)) ||
          !encode_map(&probe, p.v, bf16, v_dims(p), true, sm90::fwd_block_n(p.headdim)))))
      return no("sm90 forward: the driver rejected the varlen / seqused_k tensor maps");
  }
  if (why) *why = "sm90 forward (TMA + wgmma, warp-specialised)";
  return true;
}

namespace sm90 {

cudaError_t fwd_prepare(const FwdParams& p, int block_m, bool persistent, FwdKernelArgs* args,
                        FwdLaunch* launch) {
  const bool bf16 = p.dtype == DType::kBf16;
  const uint32_t block_n = static_cast<uint32_t>(fwd_block_n(p.headdim));
  FwdKernelArgs& a = *args;
  a = FwdKernelArgs{};
  if (!encode_map(&a.tm_q, p.q, bf16, q_dims(p), q_ragged(p), static_cast<uint32_t>(block_m)) ||
      !encode_map(&a.tm_k, p.k, bf16, k_dims(p), k_ragged(p), block_n) ||
      !encode_map(&a.tm_v, p.v, bf16, v_dims(p), k_ragged(p), block_n) ||
      !encode_map(&a.tm_o, p.out, bf16, o_dims(p), q_ragged(p), 64))
    return cudaErrorInvalidValue;
  a.lse = p.lse;
  a.lse_batch_stride = p.lse_batch_stride;
  a.lse_head_stride = p.lse_head_stride;
  a.cu_seqlens_q = p.cu_seqlens_q;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.seqused_k = p.seqused_k;
  a.q_ragged = q_ragged(p) ? 1 : 0;
  a.k_ragged = k_ragged(p) ? 1 : 0;
  // Windows at least as wide as the sequences are no windows: left >= Sk
  // (max) or right >= Sq (max) bound nothing (and this keeps the kernel's
  // 32-bit mask arithmetic small).
  a.window_left = p.window_left >= p.seqlen_k ? -1 : p.window_left;
  a.window_right = p.is_causal ? 0 : (p.window_right >= p.seqlen_q ? -1 : p.window_right);
  if (p.softcap > 0.f) {
    constexpr double kLog2e = 1.4426950408889634;
    a.softcap_pre = static_cast<float>(2.0 * kLog2e * double(p.softmax_scale) / double(p.softcap));
    a.scale_log2 = static_cast<float>(double(p.softcap) * kLog2e);
  } else {
    a.softcap_pre = 0.f;
    a.scale_log2 = p.softmax_scale_log2;
  }
  int num_sms = p.num_sms;
  if (num_sms <= 0) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
  }
  *launch = plan_fwd_tiles(&a, block_m, p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv,
                           p.headdim, num_sms, persistent);
  return cudaSuccess;
}

}  // namespace sm90

cudaError_t sm90_fwd_run(const FwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return cudaSuccess;  // nothing to write
  const bool bf16 = p.dtype == DType::kBf16;
  const sm90::FwdChoice choice = sm90::choose_fwd(p.headdim, p.is_causal, p.seqlen_k);
  const int block_m = 64 * choice.consumers;  // query rows per tile
  sm90::FwdKernelArgs args;
  sm90::FwdLaunch l;
  const cudaError_t e = sm90::fwd_prepare(p, block_m, choice.persistent, &args, &l);
  if (e != cudaSuccess) return e;
  const bool softcap = p.softcap > 0.f;
  switch (p.headdim) {
    case 64:
      return sm90::fwd_run_hdim64(args, l, bf16, p.is_causal, softcap, choice.consumers, stream);
    case 128:
      return sm90::fwd_run_hdim128(args, l, bf16, p.is_causal, softcap, choice.consumers, stream);
    case 256:
      return sm90::fwd_run_hdim256(args, l, bf16, p.is_causal, softcap, choice.consumers, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace flash4
