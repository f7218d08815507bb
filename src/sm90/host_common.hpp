// Host-side pieces shared by the Hopper forward and backward (fwd_sm90.cu,
// bwd_sm90.cu): the checks both paths make, the device's SM count, and the
// per-call values both kernels take (mask edges, softcap factors).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common/params.hpp"

namespace flash4 {
namespace sm90 {

// What every Hopper kernel needs of a call (path = "sm90 forward" /
// "sm90 backward", the start of each reason). Head dims, scale rules and
// grid limits are the caller's.
inline bool common_supported(const FwdParams& p, const char* path, int cc_major, int cc_minor,
                             std::string* why) {
  auto no = [&](const std::string& reason) {
    if (why) *why = std::string(path) + reason;
    return false;
  };
  if (cc_major != 9 || cc_minor != 0)
    return no(" is built for sm_90a and runs only on compute capability 9.0, not " +
              std::to_string(cc_major) + "." + std::to_string(cc_minor));
  if (p.dtype != DType::kBf16 && p.dtype != DType::kFp16) return no(" supports fp16 and bf16 only");
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr))
    return no(" needs both cu_seqlens_q and cu_seqlens_k for varlen");
  if (!(p.softcap >= 0.f) || !std::isfinite(p.softcap)) return no(" needs a finite softcap >= 0");
  if (p.window_left < -1 || p.window_right < -1) return no(": window bounds must be >= -1");
  if (p.is_causal && p.window_right != 0) return no(": causal means window_right == 0");
  if (p.batch < 0 || p.seqlen_q < 0 || p.seqlen_k < 0) return no(": negative size");
  if (int64_t(p.seqlen_q) + p.seqlen_k >= (int64_t(1) << 30))
    return no(" supports seqlen_q + seqlen_k < 2^30 (32-bit mask arithmetic)");
  if (p.heads_q < 1 || p.heads_kv < 1 || p.heads_q % p.heads_kv != 0)
    return no(" needs heads_q to be a multiple of heads_kv (both >= 1)");
  return true;
}

// The call's SM count (p.num_sms, else the current device's).
inline cudaError_t sm_count(const FwdParams& p, int* num_sms) {
  *num_sms = p.num_sms;
  if (*num_sms > 0) return cudaSuccess;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, dev);
  return e;
}

// Mask edges for the kernels (-1 unbounded). Windows at least as wide as the
// sequences bound nothing (and this keeps the kernels' 32-bit mask
// arithmetic small): left >= Sk or right >= Sq (max lengths for varlen).
struct MaskEdges {
  int left, right;
};
inline MaskEdges mask_edges(const FwdParams& p) {
  return {p.window_left >= p.seqlen_k ? -1 : p.window_left,
          p.is_causal ? 0 : (p.window_right >= p.seqlen_q ? -1 : p.window_right)};
}

// exp2 multiplier and softcap factor: softcap > 0 turns the score into
// t = tanh(scale s / cap), computed as softcap_tanh(s, pre) with
// pre = 2 log2(e) scale / cap, and P = exp2(cap log2(e) t - ...).
struct ScoreFactors {
  float scale_log2;
  float softcap_pre;  // 0 without softcap
};
inline ScoreFactors score_factors(const FwdParams& p) {
  if (!(p.softcap > 0.f)) return {p.softmax_scale_log2, 0.f};
  constexpr double kLog2e = 1.4426950408889634;
  return {static_cast<float>(double(p.softcap) * kLog2e),
          static_cast<float>(2.0 * kLog2e * double(p.softmax_scale) / double(p.softcap))};
}

}  // namespace sm90
}  // namespace flash4
