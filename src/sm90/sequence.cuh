// Sequence lengths and TMA coordinates of one batch entry, shared by the
// Hopper forward and backward kernels.
//
// Batched: every entry has the maps' lengths Lq, Lk. Varlen (cu_seqlens):
// sequence b is rows [cu[b], cu[b+1]) of packed tensors, its length clipped to
// the max length given (rows past it are never touched). seqused_k limits the
// keys used. Ragged maps (sm90/tensor_map.hpp) address position pos of a
// sequence (start, len) with row coordinate L - len + pos and 5th coordinate
// start + len, so positions >= len read as zeros and are dropped on stores.
#pragma once
#include <cuda_runtime.h>

namespace flash4 {
namespace sm90 {

// (first packed row, length) of sequence b: batched (cu == nullptr) {0, L}.
__device__ __forceinline__ int2 seq_span(const int* cu, int max_len, int b) {
  if (cu == nullptr) return make_int2(0, max_len);
  const int start = cu[b];
  return make_int2(start, max(0, min(cu[b + 1] - start, max_len)));
}

struct SeqCoords {
  int sq, sk;         // queries, keys used (seqused_k applied): the mask's Sk
  int sk_rows;        // key rows stored (>= sk)
  int q_start;        // first packed query row (varlen), else 0
  int q_row, q_ext;   // ragged Q / O / dO maps (varlen): coordinates of position 0
  int k_row, k_ext;   // ragged K / V maps (varlen or seqused_k; len = sk: unused keys read as 0)
  int mb;             // batch coordinate of the maps (0 for varlen maps)
};

// The ragged coordinates stay 0 where the maps are plain.
__device__ __forceinline__ SeqCoords seq_coords(const int* cu_seqlens_q, const int* cu_seqlens_k,
                                                const int* seqused_k, int Lq, int Lk, int b) {
  SeqCoords si;
  si.sq = Lq;
  si.sk = Lk;
  si.q_start = 0;
  si.q_row = si.q_ext = si.k_row = si.k_ext = 0;
  si.mb = b;
  int k_start = 0;
  if (cu_seqlens_q != nullptr) {
    si.q_start = cu_seqlens_q[b];
    // a max length below the real one drops the rows past it (never reads outside)
    si.sq = max(0, min(cu_seqlens_q[b + 1] - si.q_start, Lq));
    k_start = cu_seqlens_k[b];
    si.sk = max(0, min(cu_seqlens_k[b + 1] - k_start, Lk));
    si.q_row = Lq - si.sq;
    si.q_ext = si.q_start + si.sq;
    si.mb = 0;
  }
  si.sk_rows = si.sk;
  if (seqused_k != nullptr) si.sk = max(0, min(si.sk, seqused_k[b]));
  if (cu_seqlens_q != nullptr || seqused_k != nullptr) {
    si.k_row = Lk - si.sk;
    si.k_ext = k_start + si.sk;
  }
  return si;
}

}  // namespace sm90
}  // namespace flash4
