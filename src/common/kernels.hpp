// Entry points of the kernel families, one block per path. Validation has
// already run; each family checks only what it itself cannot do.
#pragma once
#include <cuda_runtime.h>
#include <cstddef>
#include <cstdint>
#include <string>
#include "common/params.hpp"

namespace flash4 {

// ---- portable forward (sm80-class: mma.sync, ldmatrix, cp.async) --------
// Runs on compute capability >= 8.0. Head dims up to 256, multiples of 8.
bool sm80_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why);
cudaError_t sm80_fwd_run(const FwdParams& p, cudaStream_t stream);

// ---- Hopper forward (sm_90a: TMA, wgmma, warp specialisation) -----------
// Defined only when FLASH4_HAVE_SM90; dispatch checks the macro.
bool sm90_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why);
cudaError_t sm90_fwd_run(const FwdParams& p, cudaStream_t stream);

// ---- backward workspace (every backward path uses this layout) ----------
// Rows of the query side are padded to 128 per (batch, head):
//   sq_pad = round_up(Sq, 128) (batched; varlen: of max_seqlen_q); varlen
//   packs the sequences per head, sequence b from row
//   round_up(cu_seqlens_q[b], 4) + 132 b (a multiple of 4: 16-byte aligned
//   rows of the fp32 row arrays, which the kernel bulk-copies) with
//   round_up(len, 128) rows, so rows = round_up(total_q + 132 * B, 4).
//   dq_accum  fp32 rows x Hq x d_pad            (offset 0; d_pad the head dim
//             of the kernel that runs: 64, 128 or 256; in between, the
//             next larger)
//   lse_log2  fp32 rows x Hq                    (after dq_accum)
//   dsum      fp32 rows x Hq                    (after lse_log2)
//   dq_sem    deterministic only (after dsum, at a multiple of 16 bytes):
//             int32 [4 + Hq * ceil(rows / 32)]: word 0 a CTA ticket
//             counter, words 1..3 unused, then 2 semaphores per 64 padded
//             query rows of each head (dQ summed in a fixed order; see
//             src/sm90/bwd_kernel.cuh). Zeroed by the backward itself.
// Every region starts at a multiple of 16 bytes from the workspace start.
struct BwdWorkspace {
  uint64_t rows = 0;      // padded query rows over the batch (B * sq_pad batched)
  uint64_t sq_pad = 0;    // batched: round_up(Sq, 128)
  uint64_t d_pad = 0;     // 64, 128 or 256: the smallest one >= D (D > 256: round_up(D, 256))
  uint64_t dq_accum_offset = 0, lse_log2_offset = 0, dsum_offset = 0;  // bytes
  uint64_t dq_sem_offset = 0, dq_sem_bytes = 0;  // bytes; 0 bytes unless deterministic
  uint64_t total_bytes = 0;
};
// False when the sizes overflow.
inline bool bwd_workspace_layout(const BwdParams& p, int64_t total_q, BwdWorkspace* w) {
  BwdWorkspace r;
  r.sq_pad = (uint64_t(p.seqlen_q) + 127u) / 128u * 128u;
  r.rows = p.cu_seqlens_q != nullptr ? (uint64_t(total_q) + 132u * uint64_t(p.batch) + 3u) / 4u * 4u
                                     : uint64_t(p.batch) * r.sq_pad;
  const uint64_t d = p.headdim > 0 ? uint64_t(p.headdim) : 0u;
  r.d_pad = d <= 64 ? 64u : d <= 128 ? 128u : (d + 255u) / 256u * 256u;
  uint64_t row_elems = 0, dq_elems = 0, dq_bytes = 0, row_bytes = 0, total = 0;
  if (__builtin_mul_overflow(r.rows, uint64_t(p.heads_q), &row_elems) ||
      __builtin_mul_overflow(row_elems, r.d_pad, &dq_elems) ||
      __builtin_mul_overflow(dq_elems, uint64_t(4), &dq_bytes) ||
      __builtin_mul_overflow(row_elems, uint64_t(4), &row_bytes) ||
      __builtin_add_overflow(dq_bytes, 2 * row_bytes, &total) || row_bytes > (UINT64_MAX / 4) ||
      total > SIZE_MAX)
    return false;
  r.dq_accum_offset = 0;
  r.lse_log2_offset = dq_bytes;
  r.dsum_offset = dq_bytes + row_bytes;
  if (p.deterministic) {
    // ceil(rows / 32) * Hq <= row_elems / 32 + Hq: the product cannot wrap.
    r.dq_sem_bytes = 16u + 4u * (((r.rows + 31u) / 32u) * uint64_t(p.heads_q));
    if (__builtin_add_overflow(total, uint64_t(15), &r.dq_sem_offset)) return false;
    r.dq_sem_offset = r.dq_sem_offset / 16u * 16u;
    if (__builtin_add_overflow(r.dq_sem_offset, r.dq_sem_bytes, &total) || total > SIZE_MAX)
      return false;
  }
  r.total_bytes = total;
  *w = r;
  return true;
}

// ---- Hopper backward (sm_90a: TMA, wgmma, bulk reduce-add of dQ) ---------
// Defined only when FLASH4_HAVE_SM90. p.workspace / p.workspace_bytes hold
// the caller's workspace (bwd_workspace_layout), 16-byte aligned.
bool sm90_bwd_supported(const BwdParams& p, int cc_major, int cc_minor, std::string* why);
cudaError_t sm90_bwd_run(const BwdParams& p, cudaStream_t stream);

}  // namespace flash4
