// Hopper forward: coverage checks, tensor maps and dispatch.
// The kernel itself is in fwd_kernel.cuh; instantiations in fwd_sm90_hdim*.cu;
// the per-call tile/grid choice in fwd_launch.cuh (choose_fwd).
//
// Coverage (everything else is answered "not supported" with the reason, so
// dispatch falls back to the portable path):
//   compute capability 9.0 (sm_90a code), fp16/bf16, head dims 8..256 in
//   multiples of 8 (kernels for 64, 128 and 256; a head dim in between runs
//   on the next larger kernel, whose tensor maps are D columns wide: TMA
//   zero-fills the missing columns of Q/K/V and drops them from O, so the
//   result is exact and the cost is that of the larger kernel),
//   batched or varlen (cu_seqlens) layout with 16-byte-multiple strides and
//   16-byte aligned pointers, seqused_k, any Sq/Sk >= 0 (Sq + Sk < 2^30),
//   GQA/MQA, causal (bottom-right aligned), local windows (left/right, with
//   or without causal), softcap, softmax_scale > 0, LSE optional,
//   exp2_emulation 0/-1 (MUFU exp2) and 1 (FA4's software exp2 for 1/4 of
//   the exponentials; head dims <= 128 without softcap, fwd_sm90_exp2emu.cu).
//
// Tensor maps: sm90/tensor_map.hpp (plain 4-D maps for batched tensors,
// 5-D "ragged" maps for varlen tensors and K/V with seqused_k).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common/kernels.hpp"
#include "sm90/fwd_launch.cuh"
#include "sm90/host_common.hpp"
#include "sm90/tensor_map.hpp"

namespace flash4 {

namespace {

using sm90::TmaTensor;

// Varlen tensors are (total, H, D): one "batch" entry in the maps.
int map_batch(const FwdParams& p) { return p.cu_seqlens_q != nullptr ? 1 : p.batch; }
TmaTensor q_dims(const FwdParams& p) {
  return {p.q, p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.q_row_stride, p.q_head_stride,
          p.q_batch_stride};
}
TmaTensor k_dims(const FwdParams& p) {
  return {p.k, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.k_row_stride, p.k_head_stride,
          p.k_batch_stride};
}
TmaTensor v_dims(const FwdParams& p) {
  return {p.v, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.v_row_stride, p.v_head_stride,
          p.v_batch_stride};
}
TmaTensor o_dims(const FwdParams& p) {
  return {p.out, p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.o_row_stride, p.o_head_stride,
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
  if (!sm90::common_supported(p, "sm90 forward", cc_major, cc_minor, why)) return false;
  if (p.headdim < 8 || p.headdim > 256 || p.headdim % 8 != 0)
    return no("sm90 forward runs head dims 8..256 in multiples of 8, not " +
              std::to_string(p.headdim));
  if (p.exp2_emulation > 0 && (p.headdim > 128 || p.softcap > 0.f))
    return no("sm90 forward builds exp2 emulation (exp2_emulation = 1) for head dims up to 128 "
              "without softcap only");
  if (!(p.softmax_scale > 0.f) || !(p.softmax_scale_log2 > 0.f) ||
      !std::isfinite(p.softmax_scale))
    return no("sm90 forward needs a finite softmax_scale > 0 (the row max is taken on unscaled "
              "scores)");
  if (static_cast<int64_t>((p.seqlen_q + 63) / 64) * p.heads_q * p.batch >
      (int64_t(1) << 31) - 1)
    return no("sm90 forward supports at most 2^31-1 output tiles");
  constexpr const char* kPath = "sm90 forward";
  if (!sm90::tma_check(kPath, "q", q_dims(p), q_ragged(p), why) ||
      !sm90::tma_check(kPath, "k", k_dims(p), k_ragged(p), why) ||
      !sm90::tma_check(kPath, "v", v_dims(p), k_ragged(p), why) ||
      !sm90::tma_check(kPath, "out", o_dims(p), q_ragged(p), why))
    return false;
  if (!sm90::tma_encoder_available())
    return no("sm90 forward needs cuTensorMapEncodeTiled from the driver (not found)");
  const int kd = sm90::fwd_kernel_headdim(p.headdim);
  if (q_ragged(p) || k_ragged(p) || kd != p.headdim) {
    // Ragged maps (5-D, shifted base) and maps narrower than their boxes
    // (head dims run by a larger kernel) are encoded once here, so that a
    // driver that rejects them sends the call to the portable path instead
    // of failing it.
    CUtensorMap probe;
    const bool bf16 = p.dtype == DType::kBf16;
    const uint32_t bn = static_cast<uint32_t>(sm90::fwd_block_n(kd));
    if (!sm90::tma_encode(&probe, q_dims(p), bf16, q_ragged(p), 64) ||
        !sm90::tma_encode(&probe, o_dims(p), bf16, q_ragged(p), 64) ||
        !sm90::tma_encode(&probe, k_dims(p), bf16, k_ragged(p), bn) ||
        !sm90::tma_encode(&probe, v_dims(p), bf16, k_ragged(p), bn))
      return no("sm90 forward: the driver rejected the tensor maps of this call (varlen, "
                "seqused_k or head dim " + std::to_string(p.headdim) + ")");
  }
  if (why) {
    *why = "sm90 forward (TMA + wgmma, warp-specialised)";
    if (p.exp2_emulation > 0) *why += ", software exp2 for 1/4 of the exponentials";
    if (kd != p.headdim)
      *why += ", head dim " + std::to_string(p.headdim) + " on the " + std::to_string(kd) +
              " kernel (TMA zero-fills the extra columns)";
    return true;
  }
  return true;
}

namespace sm90 {

cudaError_t fwd_prepare(const FwdParams& p, int block_m, int block_n, bool persistent,
                        FwdKernelArgs* args, FwdLaunch* launch) {
  const bool bf16 = p.dtype == DType::kBf16;
  const int kd = fwd_kernel_headdim(p.headdim);
  const uint32_t box_n = static_cast<uint32_t>(block_n);
  FwdKernelArgs& a = *args;
  a = FwdKernelArgs{};
  if (!tma_encode(&a.tm_q, q_dims(p), bf16, q_ragged(p), static_cast<uint32_t>(block_m)) ||
      !tma_encode(&a.tm_k, k_dims(p), bf16, k_ragged(p), box_n) ||
      !tma_encode(&a.tm_v, v_dims(p), bf16, k_ragged(p), box_n) ||
      !tma_encode(&a.tm_o, o_dims(p), bf16, q_ragged(p), 64))
    return cudaErrorInvalidValue;
  a.lse = p.lse;
  a.lse_batch_stride = p.lse_batch_stride;
  a.lse_head_stride = p.lse_head_stride;
  a.cu_seqlens_q = p.cu_seqlens_q;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.seqused_k = p.seqused_k;
  a.q_ragged = q_ragged(p) ? 1 : 0;
  a.k_ragged = k_ragged(p) ? 1 : 0;
  const MaskEdges edges = mask_edges(p);
  a.window_left = edges.left;
  a.window_right = edges.right;
  const ScoreFactors sf = score_factors(p);
  a.scale_log2 = sf.scale_log2;
  a.softcap_pre = sf.softcap_pre;
  a.data_panels = (p.headdim + 63) / 64;  // sm90/panels.cuh
  int num_sms = 0;
  const cudaError_t e = sm_count(p, &num_sms);
  if (e != cudaSuccess) return e;
  *launch = plan_fwd_tiles(&a, block_m, p.batch, p.seqlen_q, p.seqlen_k, p.heads_q, p.heads_kv,
                           kd, num_sms, persistent);
  return cudaSuccess;
}

}  // namespace sm90

cudaError_t sm90_fwd_run(const FwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return cudaSuccess;  // nothing to write
  const bool bf16 = p.dtype == DType::kBf16;
  const int kd = sm90::fwd_kernel_headdim(p.headdim);
  const sm90::FwdChoice choice = sm90::choose_fwd(kd, p.is_causal, p.seqlen_k);
  const int block_m = 64 * choice.consumers;  // query rows per tile
  sm90::FwdKernelArgs args;
  sm90::FwdLaunch l;
  const cudaError_t e =
      sm90::fwd_prepare(p, block_m, sm90::fwd_block_n(kd), choice.persistent, &args, &l);
  if (e != cudaSuccess) return e;
  const bool softcap = p.softcap > 0.f;
  if (p.exp2_emulation > 0)  // supported() admits it for kd <= 128 without softcap
    return sm90::fwd_run_exp2emu(args, l, kd, bf16, p.is_causal, choice.consumers, stream);
  switch (kd) {
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
