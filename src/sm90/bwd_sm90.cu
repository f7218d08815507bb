// Hopper backward: coverage checks, workspace carving, tensor maps and
// dispatch. The kernels are in bwd_kernel.cuh; instantiations in
// bwd_sm90_hdim*.cu.
//
// Coverage (everything else is answered "not supported" with the reason):
//   compute capability 9.0 (sm_90a code), fp16/bf16, head dim 64 or 128,
//   batched layout with 16-byte-multiple strides, any Sq/Sk >= 0, GQA/MQA,
//   causal (bottom-right aligned) or no mask, any finite softmax_scale,
//   deterministic dQ (fixed order of the fp32 adds: bwd_kernel.cuh).
//   Not yet: varlen, seqused_k, sliding window, softcap.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "common/kernels.hpp"
#include "sm90/bwd_launch.cuh"

namespace flash4 {

namespace {

constexpr int kBwdBlockN = 128;
static_assert(sm90::BwdConfig<64, __nv_bfloat16, false>::kBlockN == kBwdBlockN &&
                  sm90::BwdConfig<128, __nv_bfloat16, false>::kBlockN == kBwdBlockN,
              "host key-block size must match the kernel configuration");
constexpr int kMaxGridYZ = 65535;
constexpr int kMaxSeqlen = 2147483647 - 255;

PFN_cuTensorMapEncodeTiled_v12000 bwd_tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
    else
      (void)cudaGetLastError();  // a failed lookup must not look like a launch error later
  });
  return fn;
}

// A 4-D (D, S, H, B) 16-bit tensor in elements.
struct Tensor4 {
  const void* ptr;
  int64_t d, s, h, b;
  int64_t row_stride, head_stride, batch_stride;
};

// TMA strides in bytes. A dimension of size <= 1 is never stepped, so its
// stride is replaced by a legal packed value (the caller's may be anything).
void tma_strides(const Tensor4& t, uint64_t out[3]) {
  constexpr int64_t kElem = 2;
  const int64_t packed_row = ((t.d * kElem + 15) / 16) * 16;
  if (t.s <= 0 || t.h <= 0 || t.b <= 0) {  // empty: never read or written
    out[0] = out[1] = out[2] = static_cast<uint64_t>(packed_row);
    return;
  }
  const int64_t s = t.s > 1 ? t.s : 1;
  const int64_t rs = t.s > 1 ? t.row_stride * kElem : packed_row;
  const int64_t hs = t.h > 1 ? t.head_stride * kElem : rs * s;
  const int64_t bs = t.b > 1 ? t.batch_stride * kElem : hs * (t.h > 1 ? t.h : 1);
  out[0] = static_cast<uint64_t>(rs);
  out[1] = static_cast<uint64_t>(hs);
  out[2] = static_cast<uint64_t>(bs);
}

bool check_tma(const char* name, const Tensor4& t, std::string* why) {
  if ((reinterpret_cast<uintptr_t>(t.ptr) & 15u) != 0) {
    if (why) *why = std::string("sm90 backward needs 16-byte aligned ") + name + " (TMA)";
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
        *why = std::string("sm90 backward needs ") + name + " " + dim_names[i] +
               " stride in bytes positive, a multiple of 16 and below 2^40 (TMA)";
      return false;
    }
  }
  return true;
}

bool encode_map(CUtensorMap* map, const Tensor4& t, bool bf16, uint32_t box_rows) {
  auto enc = bwd_tensor_map_encoder();
  if (enc == nullptr) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(t.d), static_cast<cuuint64_t>(t.s > 0 ? t.s : 1),
                              static_cast<cuuint64_t>(t.h > 0 ? t.h : 1),
                              static_cast<cuuint64_t>(t.b > 0 ? t.b : 1)};
  uint64_t st[3];
  tma_strides(t, st);
  const cuuint64_t strides[3] = {st[0], st[1], st[2]};
  const cuuint32_t box[4] = {64u, box_rows, 1u, 1u};
  const cuuint32_t estr[4] = {1u, 1u, 1u, 1u};
  const CUresult r =
      enc(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
          const_cast<void*>(t.ptr), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

Tensor4 q_tensor(const BwdParams& p) {
  return {p.q, p.headdim, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride, p.q_head_stride,
          p.q_batch_stride};
}
Tensor4 do_tensor(const BwdParams& p) {
  return {p.dout, p.headdim, p.seqlen_q, p.heads_q, p.batch, p.do_row_stride, p.do_head_stride,
          p.do_batch_stride};
}
Tensor4 k_tensor(const BwdParams& p) {
  return {p.k, p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride, p.k_head_stride,
          p.k_batch_stride};
}
Tensor4 v_tensor(const BwdParams& p) {
  return {p.v, p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride, p.v_head_stride,
          p.v_batch_stride};
}
Tensor4 dk_tensor(const BwdParams& p) {
  return {p.dk, p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.dk_row_stride, p.dk_head_stride,
          p.dk_batch_stride};
}
Tensor4 dv_tensor(const BwdParams& p) {
  return {p.dv, p.headdim, p.seqlen_k, p.heads_kv, p.batch, p.dv_row_stride, p.dv_head_stride,
          p.dv_batch_stride};
}

}  // namespace

bool sm90_bwd_supported(const BwdParams& p, int cc_major, int cc_minor, std::string* why) {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  if (cc_major != 9 || cc_minor != 0)
    return no("sm90 backward is built for sm_90a and runs only on compute capability 9.0, not " +
              std::to_string(cc_major) + "." + std::to_string(cc_minor));
  if (p.dtype != DType::kBf16 && p.dtype != DType::kFp16)
    return no("sm90 backward supports fp16 and bf16 only");
  if (p.headdim != 64 && p.headdim != 128)
    return no("sm90 backward has no kernel for head dim " + std::to_string(p.headdim) +
              " (instantiated: 64, 128)");
  if (p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr)
    return no("sm90 backward does not support varlen (cu_seqlens) yet");
  if (p.seqused_k != nullptr) return no("sm90 backward does not support seqused_k yet");
  if (p.softcap != 0.f) return no("sm90 backward does not support softcap yet");
  if (p.window_left >= 0 || (p.window_right >= 0 && !(p.is_causal && p.window_right == 0)))
    return no("sm90 backward does not support local (sliding window) attention yet");
  if (!(p.softmax_scale == p.softmax_scale) || !(p.softmax_scale_log2 == p.softmax_scale_log2))
    return no("sm90 backward needs a finite softmax_scale");
  if (p.batch < 0 || p.seqlen_q < 0 || p.seqlen_k < 0) return no("negative size");
  if (p.seqlen_q > kMaxSeqlen || p.seqlen_k > kMaxSeqlen)
    return no("sm90 backward supports sequence lengths up to 2^31 - 256 (int tile math)");
  if (p.heads_kv < 1 || p.heads_q < 1 || p.heads_q % p.heads_kv != 0)
    return no("sm90 backward needs heads_q to be a multiple of heads_kv");
  if (p.batch > kMaxGridYZ || p.heads_q > kMaxGridYZ)
    return no("sm90 backward supports batch and heads_q up to 65535 (grid y/z)");
  if ((int64_t(p.seqlen_k) + kBwdBlockN - 1) / kBwdBlockN * p.heads_kv * p.batch > int64_t(INT32_MAX))
    return no("sm90 backward supports at most 2^31 - 1 key blocks (x kv heads x batch)");
  if (!check_tma("q", q_tensor(p), why) || !check_tma("k", k_tensor(p), why) ||
      !check_tma("v", v_tensor(p), why) || !check_tma("dout", do_tensor(p), why) ||
      !check_tma("dk", dk_tensor(p), why) || !check_tma("dv", dv_tensor(p), why))
    return false;
  if (bwd_tensor_map_encoder() == nullptr)
    return no("sm90 backward needs cuTensorMapEncodeTiled from the driver (not found)");
  if (why)
    *why = p.deterministic
               ? "sm90 backward (TMA + wgmma, K/V-stationary, dQ by fp32 bulk reduce-add in a "
                 "fixed key-block order: deterministic)"
               : "sm90 backward (TMA + wgmma, K/V-stationary, dQ by fp32 bulk reduce-add)";
  return true;
}

cudaError_t sm90_bwd_run(const BwdParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  BwdWorkspace ws;
  if (!bwd_workspace_layout(p, 0, &ws) || p.workspace_bytes < ws.total_bytes ||
      (ws.total_bytes > 0 && (p.workspace == nullptr ||
                              (reinterpret_cast<uintptr_t>(p.workspace) & 15u) != 0)))
    return cudaErrorInvalidValue;  // api.cpp checks the workspace first: not reached
  const bool bf16 = p.dtype == DType::kBf16;
  const int block_m = p.headdim == 64 ? sm90::bwd_block_m<64>() : sm90::bwd_block_m<128>();
  uint8_t* base = static_cast<uint8_t*>(p.workspace);
  float* dq_accum = reinterpret_cast<float*>(base + ws.dq_accum_offset);
  float* lse_log2 = reinterpret_cast<float*>(base + ws.lse_log2_offset);
  float* dsum = reinterpret_cast<float*>(base + ws.dsum_offset);
  // Deterministic: ticket counter (word 0), then the semaphores (word 4 on).
  int* dq_ticket = p.deterministic ? reinterpret_cast<int*>(base + ws.dq_sem_offset) : nullptr;
  int* dq_sem = p.deterministic ? dq_ticket + 4 : nullptr;

  sm90::BwdLaunch l;
  l.batch = p.batch;
  l.heads_q = p.heads_q;
  l.heads_kv = p.heads_kv;
  l.n_blocks = (p.seqlen_k + kBwdBlockN - 1) / kBwdBlockN;
  l.prep_blocks = static_cast<int>(ws.sq_pad / 64);
  l.post_blocks = (p.seqlen_q + block_m - 1) / block_m;
  // Without query rows there is no dQ to order (and no preprocess to zero
  // the semaphores): the plain kernel is the deterministic one.
  l.deterministic = p.deterministic && l.prep_blocks > 0;

  sm90::BwdKernelArgs& a = l.main;
  if (l.n_blocks > 0) {
    if (!encode_map(&a.tm_q, q_tensor(p), bf16, static_cast<uint32_t>(block_m)) ||
        !encode_map(&a.tm_do, do_tensor(p), bf16, static_cast<uint32_t>(block_m)) ||
        !encode_map(&a.tm_k, k_tensor(p), bf16, kBwdBlockN) ||
        !encode_map(&a.tm_v, v_tensor(p), bf16, kBwdBlockN) ||
        !encode_map(&a.tm_dk, dk_tensor(p), bf16, 64) ||
        !encode_map(&a.tm_dv, dv_tensor(p), bf16, 64))
      return cudaErrorInvalidValue;
  }
  a.dq_accum = dq_accum;
  a.lse_log2 = lse_log2;
  a.dsum = dsum;
  a.seqlen_q = p.seqlen_q;
  a.seqlen_k = p.seqlen_k;
  a.heads_q = p.heads_q;
  a.group = p.heads_q / p.heads_kv;
  a.heads_kv = p.heads_kv;
  a.sq_pad = static_cast<int>(ws.sq_pad);
  a.num_m_blocks = l.post_blocks;
  a.num_n_blocks = l.n_blocks;
  a.num_hb = p.heads_kv * p.batch;
  {
    // Causal CTA order: a section's Q and dO (every query head of its kv
    // heads) should fit in ~32 MB of L2.
    const int64_t per_hb = int64_t(p.seqlen_q > 0 ? p.seqlen_q : 1) * p.headdim * 2 * 2 * a.group;
    int64_t hs = (int64_t(32) << 20) / per_hb;
    if (hs < 1) hs = 1;
    if (hs > a.num_hb) hs = a.num_hb;
    a.hb_per_section = static_cast<int>(hs);
  }
  a.scale_log2 = p.softmax_scale_log2;
  a.softmax_scale = p.softmax_scale;
  a.dq_sem = l.deterministic ? dq_sem : nullptr;
  a.dq_ticket = l.deterministic ? dq_ticket : nullptr;
  l.dq_sem_region = l.deterministic ? dq_ticket : nullptr;

  sm90::BwdPrepArgs& pr = l.prep;
  pr.out = p.out;
  pr.dout = p.dout;
  pr.lse = p.lse;
  pr.o_batch_stride = p.o_batch_stride;
  pr.o_row_stride = p.o_row_stride;
  pr.o_head_stride = p.o_head_stride;
  pr.do_batch_stride = p.do_batch_stride;
  pr.do_row_stride = p.do_row_stride;
  pr.do_head_stride = p.do_head_stride;
  pr.lse_batch_stride = p.lse_batch_stride;
  pr.lse_head_stride = p.lse_head_stride;
  pr.dq_accum = dq_accum;
  pr.lse_log2 = lse_log2;
  pr.dsum = dsum;
  pr.seqlen_q = p.seqlen_q;
  pr.heads_q = p.heads_q;
  pr.sq_pad = static_cast<int>(ws.sq_pad);

  sm90::BwdPostArgs& po = l.post;
  po.dq_accum = dq_accum;
  po.dq = p.dq;
  po.dq_batch_stride = p.dq_batch_stride;
  po.dq_row_stride = p.dq_row_stride;
  po.dq_head_stride = p.dq_head_stride;
  po.seqlen_q = p.seqlen_q;
  po.heads_q = p.heads_q;
  po.sq_pad = static_cast<int>(ws.sq_pad);
  po.softmax_scale = p.softmax_scale;

  switch (p.headdim) {
    case 64: return sm90::bwd_run_hdim64(l, bf16, p.is_causal, stream);
    case 128: return sm90::bwd_run_hdim128(l, bf16, p.is_causal, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace flash4
