// C entries for side-by-side timing from Python (bench_side_by_side.py,
// bench_ab.py): the library's sm90 forward on contiguous tensors. Dev only.
#include <cmath>
#include "common/kernels.hpp"

// (B, S, H, D) tensors, or with cu_seqlens (device, B+1, equal lengths S):
// packed (B*S, H, D) tensors and lse (H, B*S). softcap 0: off; window -1: unbounded.
extern "C" int flash4_dev_sm90_fwd_ex(void* q, void* k, void* v, void* o, float* lse, int B, int S,
                                      int H, int D, int causal, int bf16, float softcap,
                                      int window_left, int window_right, const int* cu_seqlens,
                                      void* stream) {
  flash4::FwdParams p;
  p.q = q; p.k = k; p.v = v; p.out = o; p.lse = lse;
  const bool varlen = cu_seqlens != nullptr;
  const int64_t rs = (int64_t)H * D, hs = D, bs = varlen ? 0 : (int64_t)S * H * D;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = rs;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = hs;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = bs;
  p.lse_batch_stride = varlen ? 0 : (int64_t)H * S;
  p.lse_head_stride = varlen ? (int64_t)B * S : S;
  p.cu_seqlens_q = p.cu_seqlens_k = cu_seqlens;
  p.batch = B; p.seqlen_q = S; p.seqlen_k = S; p.heads_q = H; p.heads_kv = H; p.headdim = D;
  p.softmax_scale = 1.f / std::sqrt((float)D);
  p.softmax_scale_log2 = p.softmax_scale * 1.4426950408889634f;
  p.softcap = softcap;
  p.window_left = window_left;
  p.window_right = causal ? 0 : window_right;
  p.is_causal = p.window_right == 0;
  p.dtype = bf16 ? flash4::DType::kBf16 : flash4::DType::kFp16;
  std::string why;
  if (!flash4::sm90_fwd_supported(p, 9, 0, &why)) return -1;
  return (int)flash4::sm90_fwd_run(p, (cudaStream_t)stream);
}

extern "C" int flash4_dev_sm90_fwd(void* q, void* k, void* v, void* o, float* lse, int B, int S,
                                   int H, int D, int causal, int bf16, void* stream) {
  return flash4_dev_sm90_fwd_ex(q, k, v, o, lse, B, S, H, D, causal, bf16, 0.f, -1, causal ? 0 : -1,
                                nullptr, stream);
}
