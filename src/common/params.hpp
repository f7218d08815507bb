// Kernel-facing parameters: what validation hands to the kernels once every
// rule has been checked. Plain data, 64-bit strides (elements), no CUDA types,
// so host tests can build and inspect it.
#pragma once
#include <cstdint>

namespace flash4 {

enum class DType : int { kFp16 = 0, kBf16 = 1 };

struct FwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // nullptr: not written

  // Element strides. Batched: row = sequence position. Varlen: batch strides
  // are 0 and a sequence's first row is cu_seqlens[b].
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  // lse[b*lse_batch_stride + h*lse_head_stride + row]; varlen: row is the
  // global token index (cu_seqlens_q[b] + i) and lse_batch_stride is 0.
  int64_t lse_batch_stride = 0, lse_head_stride = 0;

  int batch = 0;
  int seqlen_q = 0;  // batched: Sq; varlen: max_seqlen_q
  int seqlen_k = 0;  // batched: Sk; varlen: max_seqlen_k
  int heads_q = 0, heads_kv = 0;
  int headdim = 0;   // actual head dim (multiple of 8, <= 256)

  // Rows of the q / k tensors: varlen total_q / total_k (shape[0]);
  // batched B * Sq / B * Sk.
  int64_t total_q = 0, total_k = 0;

  const int32_t* cu_seqlens_q = nullptr;  // device, B+1; nullptr: batched
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;     // device, B; nullptr: unused

  float softmax_scale = 0.f;
  float softmax_scale_log2 = 0.f;  // softmax_scale * log2(e)
  float softcap = 0.f;             // 0: off
  // Normalised mask: -1 = unbounded. causal => window_right == 0.
  // Query i of a sequence with lengths (sq, sk) sees keys
  // [i + sk - sq - window_left, i + sk - sq + window_right].
  int window_left = -1, window_right = -1;
  bool is_causal = false;

  DType dtype = DType::kBf16;
  int exp2_emulation = 0;  // sm90: -1 off, 0 default, 1 on
  int num_sms = 0;         // of the device the call runs on
};

struct BwdParams : FwdParams {
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t do_batch_stride = 0, do_row_stride = 0, do_head_stride = 0;
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;
  bool deterministic = false;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

}  // namespace flash4
