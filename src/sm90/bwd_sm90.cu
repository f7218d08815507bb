// Hopper backward: coverage checks, workspace carving, tensor maps and
// dispatch. The kernels are in bwd_kernel.cuh; instantiations in
// bwd_sm90_hdim*.cu.
//
// Coverage (everything else is answered "not supported" with the reason):
//   compute capability 9.0 (sm_90a code), fp16/bf16, head dims 8..256 in
//   multiples of 8 (kernels for 64, 128 and 256; a head dim in between runs
//   on the next larger kernel with maps D columns wide: TMA zero-fills the
//   missing columns of Q/K/V/dO and drops them from dK/dV), batched or
//   varlen (cu_seqlens) layout with 16-byte-multiple strides, seqused_k,
//   any Sq/Sk >= 0 (Sq + Sk < 2^30), GQA/MQA, causal (bottom-right
//   aligned), local windows (left/right, with or without causal), softcap,
//   any finite softmax_scale, deterministic dQ (fixed order of the fp32
//   adds: bwd_kernel.cuh).
//   Above head dim 128 the deterministic mode waits for its turn in the
//   consumers (no dQ writer threads: bwd_consumer_d256x80.cuh).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "common/kernels.hpp"
#include "sm90/bwd_launch.cuh"
#include "sm90/host_common.hpp"
#include "sm90/tensor_map.hpp"

namespace flash4 {

namespace {

using sm90::TmaTensor;

constexpr int kMaxGridYZ = 65535;

// Varlen tensors are (total, H, D): one "batch" entry in the maps.
int map_batch(const BwdParams& p) { return p.cu_seqlens_q != nullptr ? 1 : p.batch; }
TmaTensor q_tensor(const BwdParams& p) {
  return {p.q, p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.q_row_stride, p.q_head_stride,
          p.q_batch_stride};
}
TmaTensor do_tensor(const BwdParams& p) {
  return {p.dout, p.headdim, p.seqlen_q, p.heads_q, map_batch(p), p.do_row_stride,
          p.do_head_stride, p.do_batch_stride};
}
TmaTensor k_tensor(const BwdParams& p) {
  return {p.k, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.k_row_stride, p.k_head_stride,
          p.k_batch_stride};
}
TmaTensor v_tensor(const BwdParams& p) {
  return {p.v, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.v_row_stride, p.v_head_stride,
          p.v_batch_stride};
}
TmaTensor dk_tensor(const BwdParams& p) {
  return {p.dk, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.dk_row_stride,
          p.dk_head_stride, p.dk_batch_stride};
}
TmaTensor dv_tensor(const BwdParams& p) {
  return {p.dv, p.headdim, p.seqlen_k, p.heads_kv, map_batch(p), p.dv_row_stride,
          p.dv_head_stride, p.dv_batch_stride};
}
bool q_ragged(const BwdParams& p) { return p.cu_seqlens_q != nullptr; }
bool k_ragged(const BwdParams& p) { return p.cu_seqlens_k != nullptr || p.seqused_k != nullptr; }

// Every map of a call: {map, tensor, ragged, box rows}.
struct MapSpec {
  CUtensorMap* map;
  TmaTensor t;
  bool ragged;
  uint32_t box_rows;
};
bool encode_all(const BwdParams& p, sm90::BwdKernelArgs* a) {
  const bool bf16 = p.dtype == DType::kBf16;
  const int kd = sm90::bwd_kernel_headdim(p.headdim);
  const uint32_t bm = static_cast<uint32_t>(sm90::bwd_block_m(kd));
  const uint32_t bn = static_cast<uint32_t>(sm90::bwd_block_n(kd));
  // dK / dV stores: 64 key rows per box (one consumer's keys), 80 at head
  // dim 256 (one box per panel).
  const uint32_t bs = bn == 80 ? 80u : 64u;
  const MapSpec specs[6] = {
      {&a->tm_q, q_tensor(p), q_ragged(p), bm},
      {&a->tm_do, do_tensor(p), q_ragged(p), bm},
      {&a->tm_k, k_tensor(p), k_ragged(p), bn},
      {&a->tm_v, v_tensor(p), k_ragged(p), bn},
      {&a->tm_dk, dk_tensor(p), q_ragged(p), bs},  // stores: ragged only for varlen
      {&a->tm_dv, dv_tensor(p), q_ragged(p), bs},
  };
  for (const MapSpec& s : specs)
    if (!sm90::tma_encode(s.map, s.t, bf16, s.ragged, s.box_rows)) return false;
  return true;
}

}  // namespace

bool sm90_bwd_supported(const BwdParams& p, int cc_major, int cc_minor, std::string* why) {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  if (!sm90::common_supported(p, "sm90 backward", cc_major, cc_minor, why)) return false;
  if (p.headdim < 8 || p.headdim > 256 || p.headdim % 8 != 0)
    return no("sm90 backward has no kernel for head dim " + std::to_string(p.headdim) +
              " (runs 8..256 in multiples of 8)");
  if (!std::isfinite(p.softmax_scale) || !std::isfinite(p.softmax_scale_log2))
    return no("sm90 backward needs a finite softmax_scale");
  if (p.softcap > 0.f && !(p.softmax_scale > 0.f))
    return no("sm90 backward with softcap needs softmax_scale > 0");
  if (p.batch > kMaxGridYZ || p.heads_q > kMaxGridYZ)
    return no("sm90 backward supports batch and heads_q up to 65535 (grid y/z)");
  const int bn = sm90::bwd_block_n(sm90::bwd_kernel_headdim(p.headdim));
  if ((int64_t(p.seqlen_k) + bn - 1) / bn * p.heads_kv * p.batch > int64_t(INT32_MAX))
    return no("sm90 backward supports at most 2^31 - 1 key blocks (x kv heads x batch)");
  constexpr const char* kPath = "sm90 backward";
  if (!sm90::tma_check(kPath, "q", q_tensor(p), q_ragged(p), why) ||
      !sm90::tma_check(kPath, "k", k_tensor(p), k_ragged(p), why) ||
      !sm90::tma_check(kPath, "v", v_tensor(p), k_ragged(p), why) ||
      !sm90::tma_check(kPath, "dout", do_tensor(p), q_ragged(p), why) ||
      !sm90::tma_check(kPath, "dk", dk_tensor(p), q_ragged(p), why) ||
      !sm90::tma_check(kPath, "dv", dv_tensor(p), q_ragged(p), why))
    return false;
  if (!sm90::tma_encoder_available())
    return no("sm90 backward needs cuTensorMapEncodeTiled from the driver (not found)");
  const int kd = sm90::bwd_kernel_headdim(p.headdim);
  if (q_ragged(p) || k_ragged(p) || kd != p.headdim) {
    // Encoded once here, so that a driver that rejects these maps gives a
    // reason instead of a failed launch.
    sm90::BwdKernelArgs probe;
    if (!encode_all(p, &probe))
      return no("sm90 backward: the driver rejected the tensor maps of this call (varlen, "
                "seqused_k or head dim " + std::to_string(p.headdim) + ")");
  }
  if (why) {
    // dQ's fp32 adds: bulk reduce-adds of staged pieces at head dims 64 / 128;
    // at 256 half staged, half vector reductions (all reductions when
    // deterministic or with empty tail panels).
    const char* dq_adds = kd == 256 ? "dQ by fp32 bulk reduce-add and vector reductions"
                                    : "dQ by fp32 bulk reduce-add";
    *why = std::string("sm90 backward (TMA + wgmma, K/V-stationary, ") + dq_adds +
           (p.deterministic ? " in a fixed key-block order: deterministic)" : ")");
    if (kd != p.headdim)
      *why += ", head dim " + std::to_string(p.headdim) + " on the " + std::to_string(kd) +
              " kernel (TMA zero-fills the extra columns)";
  }
  return true;
}

cudaError_t sm90_bwd_run(const BwdParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  BwdWorkspace ws;
  if (!bwd_workspace_layout(p, p.total_q, &ws) || p.workspace_bytes < ws.total_bytes ||
      (ws.total_bytes > 0 && (p.workspace == nullptr ||
                              (reinterpret_cast<uintptr_t>(p.workspace) & 15u) != 0)))
    return cudaErrorInvalidValue;  // api.cpp checks the workspace first: not reached
  const bool bf16 = p.dtype == DType::kBf16;
  const int kd = sm90::bwd_kernel_headdim(p.headdim);
  if (ws.d_pad != static_cast<uint64_t>(kd)) return cudaErrorInvalidValue;  // layout mismatch
  const int block_m = sm90::bwd_block_m(kd);
  const int post_rows = sm90::bwd_post_rows(kd);
  uint8_t* base = static_cast<uint8_t*>(p.workspace);
  float* dq_accum = reinterpret_cast<float*>(base + ws.dq_accum_offset);
  float* lse_log2 = reinterpret_cast<float*>(base + ws.lse_log2_offset);
  float* dsum = reinterpret_cast<float*>(base + ws.dsum_offset);
  // Deterministic: ticket counter (word 0), then the semaphores (word 4 on).
  int* dq_ticket = p.deterministic ? reinterpret_cast<int*>(base + ws.dq_sem_offset) : nullptr;
  int* dq_sem = p.deterministic ? dq_ticket + 4 : nullptr;

  sm90::BwdRowSpace rs;
  rs.cu_seqlens_q = p.cu_seqlens_q;
  rs.ws_rows = static_cast<int64_t>(ws.rows);
  rs.sq_pad = static_cast<int>(ws.sq_pad);
  rs.heads_q = p.heads_q;
  rs.seqlen_q = p.seqlen_q;

  sm90::BwdLaunch l;
  l.batch = p.batch;
  l.heads_q = p.heads_q;
  l.heads_kv = p.heads_kv;
  l.prep_blocks = static_cast<int>(ws.sq_pad / 64);
  l.post_blocks = (p.seqlen_q + post_rows - 1) / post_rows;
  // Without query rows there is no dQ to order (and no preprocess to zero
  // the semaphores): the plain kernel is the deterministic one.
  l.deterministic = p.deterministic && l.prep_blocks > 0;
  const int block_n = sm90::bwd_block_n(kd);
  l.n_blocks = (p.seqlen_k + block_n - 1) / block_n;
  const sm90::MaskEdges edges = sm90::mask_edges(p);
  const int left = edges.left;
  const int right = edges.right;
  int num_sms = 0;
  {
    const cudaError_t e = sm90::sm_count(p, &num_sms);
    if (e != cudaSuccess) return e;
  }
  l.mask = left >= 0 || (!p.is_causal && right >= 0) ? sm90::BwdMask::kLocal
           : p.is_causal                              ? sm90::BwdMask::kCausal
                                                      : sm90::BwdMask::kNone;
  l.softcap = p.softcap > 0.f;

  sm90::BwdKernelArgs& a = l.main;
  a = sm90::BwdKernelArgs{};
  if (l.n_blocks > 0 && !encode_all(p, &a)) return cudaErrorInvalidValue;
  if (l.n_blocks > 0 && l.prep_blocks > 0) {
    // The row arrays as 2-D maps, one row of the map per (b, h) (batched) or
    // per h (varlen): rows [x, x + block_m) of row y per query block.
    const bool varlen = p.cu_seqlens_q != nullptr;
    const uint64_t inner = varlen ? ws.rows : ws.sq_pad;
    const uint64_t outer = varlen ? uint64_t(p.heads_q) : uint64_t(p.batch) * uint64_t(p.heads_q);
    if (!sm90::tma_encode_rows_f32(&a.tm_lse, lse_log2, inner, outer, uint32_t(block_m)) ||
        !sm90::tma_encode_rows_f32(&a.tm_dsum, dsum, inner, outer, uint32_t(block_m)))
      return cudaErrorInvalidValue;
  }
  a.dq_accum = dq_accum;
  a.rs = rs;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.seqused_k = p.seqused_k;
  a.q_ragged = q_ragged(p) ? 1 : 0;
  a.k_ragged = k_ragged(p) ? 1 : 0;
  a.ks_ragged = q_ragged(p) ? 1 : 0;
  a.seqlen_k = p.seqlen_k;
  a.group = p.heads_q / p.heads_kv;
  a.heads_kv = p.heads_kv;
  a.window_left = left;
  a.window_right = right;
  a.num_n_blocks = l.n_blocks;
  a.num_hb = p.heads_kv * p.batch;
  if (l.deterministic) {
    // Deterministic causal CTAs of one (b, h_kv) add in key-block order, one
    // add apart: sections of many (b, h_kv) pairs (~32 MB of Q / dO) keep
    // those chains short among the resident CTAs (one wave per section
    // measured 0.72-0.81x of this at 4k-16k).
    const int64_t per_hb = int64_t(p.seqlen_q > 0 ? p.seqlen_q : 1) * kd * 2 * 2 * a.group;
    int64_t hs = (int64_t(32) << 20) / per_hb;
    if (hs < 1) hs = 1;
    if (hs > a.num_hb) hs = a.num_hb;
    a.hb_per_section = static_cast<int>(hs);
  } else {
    // Causal CTA order: a section holds about as many CTAs as SMs, so every
    // key block of a (b, h_kv) runs at once and Q / dO are read from DRAM
    // once. (A 32 MB L2 budget per section measured 15-27% slower at 512-1k:
    // L2 budget sweep, docs/perf.md.)
    int64_t hs = l.n_blocks > 0 ? num_sms / l.n_blocks : 1;
    if (hs < 1) hs = 1;
    if (hs > a.num_hb) hs = a.num_hb;
    a.hb_per_section = static_cast<int>(hs);
  }
  a.det_rotate = 0;
  if (l.deterministic && l.mask == sm90::BwdMask::kNone) {
    // One CTA per SM. The rotated order needs every key block of a (b, h_kv)
    // resident (progress) and pays for a (b, h_kv) only partly resident
    // (its CTAs wait for the rest): at least two (b, h_kv) per wave. With
    // one per wave (16k, 128 key blocks) the ascending order measured faster
    // (0.92 vs 0.85 of the default at d64).
    a.det_rotate = 2 * l.n_blocks <= num_sms ? 1 : 0;
  }
  const sm90::ScoreFactors sf = sm90::score_factors(p);
  a.scale_log2 = sf.scale_log2;
  a.softcap_pre = sf.softcap_pre;
  a.softmax_scale = p.softmax_scale;
  a.data_panels = (p.headdim + 63) / 64;  // sm90/panels.cuh
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
  pr.rs = rs;
  pr.headdim = p.headdim;
  pr.cu_seqlens_k = p.cu_seqlens_k;
  pr.seqused_k = p.seqused_k;
  pr.seqlen_k = p.seqlen_k;
  pr.window_left = left;
  pr.window_right = right;

  sm90::BwdPostArgs& po = l.post;
  po.dq_accum = dq_accum;
  po.dq = p.dq;
  po.dq_batch_stride = p.dq_batch_stride;
  po.dq_row_stride = p.dq_row_stride;
  po.dq_head_stride = p.dq_head_stride;
  po.rs = rs;
  po.headdim = p.headdim;
  po.softmax_scale = p.softmax_scale;

  switch (kd) {
    case 64: return sm90::bwd_run_hdim64(l, bf16, stream);
    case 128: return sm90::bwd_run_hdim128(l, bf16, stream);
    case 256: return sm90::bwd_run_hdim256(l, bf16, stream);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace flash4
