// Hopper (sm_90a) attention backward: preprocess, main kernel, postprocess.
//
// Notation: a (batch b, query head h) has Sq query rows i and Sk keys j;
// kv head h_kv = h / group. c = softmax_scale, c2 = c * log2(e).
//   P  = exp2(c2 * Q K^T - LSE * log2(e))      (recomputed, no row max)
//   dP = dO V^T,  D_i = rowsum(dO_i * O_i),  dS = P * (dP - D)
//   dV = P^T dO,  dK = c * dS^T Q,  dQ = c * dS K
//
// Workspace (BwdWorkspace in src/common/kernels.hpp; rows padded to
// sq_pad = round_up(Sq, 128) per (b, h); varlen: packed per head, see
// BwdRowSpace):
//   dq_accum  fp32 (B, Hq, sq_pad, D) as chunks of kBlockM rows (see below)
//   lse_log2  fp32 (B, Hq, sq_pad): LSE * log2(e); +inf on rows >= Sq and on
//             rows whose LSE is -inf (no visible key), so that P = 0 there
//   dsum      fp32 (B, Hq, sq_pad): D_i; 0 on rows >= Sq
// The preprocess writes every row the main kernel reads: the workspace needs
// no initialisation by the caller.
//
// 1. bwd_preprocess_kernel: grid (sq_pad/64, Hq, B). D and lse_log2 of 64
//    rows, and zeroes the same rows of dq_accum (deterministic: and their
//    dQ semaphores, and the CTA ticket counter; head dims 64 / 128 only the
//    query blocks no key block reaches, as the first adder stores).
// 2. bwd_kernel (K/V-stationary, FA2/FA3 style): one CTA per (key block of
//    128, kv head, batch), 1-D grid (order: see the kernel).
//    A CTA owns kBlockN = 128 keys of one (b, h_kv) and walks every (query
//    head of the group, query block of kBlockM rows) with visible keys, so
//    dK/dV of the group stay in registers (no atomics, deterministic).
//      WG0      producer (setmaxnreg.dec): one thread issues every load: K, V
//               once (TMA), then per iteration Q, dO (TMA, 128B swizzle) and
//               the lse_log2 / dsum rows (2-D fp32 TMA maps), all completing
//               on one mbarrier of a kStages ring.
//      WG1, WG2 consumers (setmaxnreg.inc); consumer w owns keys
//               [64w, 64w+64) of the block. Per iteration:
//                 S^T  = K_w Q^T      SS wgmma, M = 64 keys, N = kBlockM
//                 dP^T = V_w dO^T     SS wgmma
//                 P^T, dS^T           registers (fp32), masked by -inf args
//                 dV  += P^T dO       RS wgmma (P^T packed from the accumulator)
//                 dK  += dS^T Q       RS wgmma
//                 dS^T -> shared memory (double buffered), one 256-thread barrier
//                 dQ_w = dS K         SS wgmma, both operands MN-major, 64 x 64:
//                        d = 64:  query rows [64w, 64w+64) of a 128-row block
//                        d = 128: head-dim columns [64w, 64w+64) of a 64-row block
//                 (S^T of the next iteration issued here, BwdConfig::kIssueAhead)
//                 dQ_w -> shared memory (dq_piece_offset layout, 16-byte
//                        stores) -> one cp.reduce.async.bulk .add.f32 of 16 KB
//                        into dq_accum, issued by the piece's writer thread
//                        (kDqWriters; deterministic: in turn, see below)
//               Epilogue: dK * c and dV through shared memory and TMA stores
//               (the store clips the key tail); written even when the block
//               sees no query (zero gradients).
//      dQ writers (d 64 / 128, every mode): the reduce-adds are issued by two
//               threads (thread 32 for consumer 0's pieces, 64 for consumer
//               1's: warps 1 and 2 of WG0) from staged pieces (dq_full /
//               dq_empty mbarriers); deterministic kernels add the semaphore
//               turns, see "Deterministic mode".
//    Head dim 256 (bwd_consumer_d256x80.cuh): 80-key blocks, the consumers
//    split the keys for S / dP and the head dim for transposed dK / dV / dQ
//    GEMMs; one dO stage (on its own do_full / do_empty barriers); dQ pieces
//    partly added from registers (deterministic: all of them, in turns that
//    two turn keepers grant instead of dQ writers).
// 3. bwd_postprocess_kernel: grid (ceil(Sq/kBlockM), Hq, B). dq = c * dq_accum
//    in the output dtype, through a shared-memory transpose (16-byte stores).
//
// dq_accum chunk layout: (b, h, query block m) owns kBlockM * D consecutive
// floats (8192 for both head dims) = two 64x64 pieces, piece w written by
// consumer w. Inside a piece, element (register i, thread t) of the wgmma
// accumulator fragment is at dq_piece_offset(i, t) = (i / 4) 512 + 4 t + i % 4
// (sm90/fragments.hpp): a thread adds 16 contiguous bytes per instruction, a
// warp 512; the deterministic staging stores the same layout (16-byte stores,
// conflict-free) and the writer's reduce-add is one contiguous bulk copy. Fragment:
// warp = t / 32, lane = t % 32, row = 16 warp + lane / 4 + 8 ((i >> 1) & 1),
// col = 8 (i >> 2) + 2 (lane % 4) + (i & 1) (see ptx.cuh).
//
// Deterministic mode (BwdConfig kDeterministic; args.deterministic == 1):
// the dQ partials of each (b, h, query block m, consumer piece w) are added
// in ascending key-block order n_block = 0, 1, ..., so dq_accum holds the same
// fp32 sums on every run (dK / dV never depend on the order: registers).
//   * dq_sem (workspace region; word 0 the CTA ticket counter, see below,
//     the semaphores from word 4; zeroed by the preprocess): one int32 per
//     (b, h, m, w), at row_offset(h, m) / 32 + w (row_offset: the chunk's
//     first workspace row). The consumers stage their pieces in shared
//     memory; the piece's writer thread spins until its semaphore equals the
//     number of adds that come before this CTA's (ld.acquire.gpu), issues
//     the reduce-add, frees the staging buffer once read, waits for the add
//     to complete in global memory (cp.async.bulk.wait_group 0, not .read),
//     fences (async proxy, then gpu scope) and adds 1 (release).
//   * The key blocks that add into (h, m) are contiguous, n_first(m) ..
//     last(m) (bwd_m_range is exact and the visible region is a band), each
//     contributing CTA adds exactly once, and in ascending order the adds
//     before key block n are n - n_first(m) (n_first = 0 without a left
//     window edge).
//     Query blocks no key block reaches (causal, Sq > Sk) have no adds and
//     no waiters. GQA: each query head has its own semaphores, and one CTA
//     walks all heads of its group, so the order is over key blocks only.
//   * No deadlock: the CTA order (n_block, hb) is not taken from blockIdx
//     (hardware need not start CTAs in blockIdx order) but from a ticket,
//     atomicAdd on dq_ticket (zeroed by the preprocess) by each CTA once it
//     runs. Tickets map to (hb, n_block) as blockIdx does by default, so the
//     predecessors (same hb, smaller n_block) of a CTA hold smaller tickets:
//     they are already resident (started) when it waits, and a resident CTA
//     keeps its SM until it exits. Induction on tickets: the unfinished CTA
//     with the smallest ticket has all predecessors finished, so each of its
//     waits is already satisfied and it runs to completion; no cycle exists
//     because waits only go to smaller tickets.
//   * Unmasked (no causal / window) with nm >= nk query blocks per key block
//     and at most half a wave of key blocks (det_rotate, set on the host when
//     2 ceil(Sk / 128) <= SMs): CTA n walks m = (m0(n) + i) mod nm with
//     m0(n) = floor(n nm / nk), and the adders of m go in the order they
//     reach it: n*, n* - 1, ..., 0, nk - 1, ..., n* + 1 (n* the last CTA with
//     m0 <= m). Each add then waits for one made ~nm/nk iterations earlier
//     instead of the previous key block's add of the same iteration, so the
//     CTAs of a (b, h_kv) do not trail each other by one add each. Waits go
//     to larger tickets too; progress needs every CTA of a (b, h_kv) to be
//     able to run at once: tickets start in order, the (b, h_kv) before it
//     finish, and at most half a wave of them exists (det_rotate).
//   * Causal CTAs walk (m descending, query head fastest) instead of (head,
//     m ascending): every CTA of a (b, h_kv) then visits the shared (h, m)
//     in the same sequence, starting with the last query block, which every
//     key block sees; the CTAs of one hb run in lock step one add apart
//     instead of CTA n idling until CTA 0 reaches m_begin(n).
//
// Masking: key j is visible to query i of a sequence with (Sq, Sk) iff
// j < Sk (keys used: seqused_k applied), j <= i + Sk - Sq + right (right >= 0;
// causal: right = 0) and j >= i + Sk - Sq - left (left >= 0). A CTA visits
// exactly the query blocks that see one of its keys (bwd_m_range); only tiles
// crossing the key tail or a window edge test elements. Query tails are
// zero-filled by TMA and have lse_log2 = +inf, which makes P exactly 0.
// Softcap (kSoftcap): t = tanh(c s / cap) replaces c s in P (exp2 multiplier
// cap * log2(e)) and dS is multiplied by 1 - t^2.
// Sequences: batched, or varlen (cu_seqlens) and seqused_k through ragged
// 5-D TMA maps (sm90/tensor_map.hpp, sm90/sequence.cuh): rows past a sequence read as 0
// and are dropped on stores; keys in [seqused_k, key rows) get zero dK, dV.
#pragma once
#include <cuda.h>
#include <cstdint>
#include "sm90/bwd_ptx.cuh"
#include "sm90/bwd_blocks.hpp"
#include "sm90/fast_div.hpp"
#include "sm90/fragments.hpp"
#include "sm90/panels.cuh"
#include "sm90/sequence.cuh"

namespace flash4 {
namespace sm90 {

// Where the query rows of (b, h) live in the workspace arrays (dq_accum,
// lse_log2, dsum; src/common/kernels.hpp): batched, (b * Hq + h) * sq_pad;
// varlen, h * ws_rows + round_up(cu_seqlens_q[b], 4) + 132 b (sequences
// packed, each with round_up(len, 128) rows, which never reach the next one:
// the next starts at least len + 129 rows later). Always a multiple of 4, so
// the fp32 row arrays' bulk copies start 16-byte aligned.
struct BwdRowSpace {
  const int* cu_seqlens_q;  // nullptr: batched
  int64_t ws_rows;          // varlen: rows per head, round_up(total_q + 132 B, 4)
  int sq_pad;               // batched: rows per (b, h), a multiple of 128
  int heads_q;
  int seqlen_q;  // batched Sq / varlen max_seqlen_q
  // (first packed row, length) of sequence b (sm90/sequence.cuh).
  __device__ __forceinline__ int2 seq(int b) const { return seq_span(cu_seqlens_q, seqlen_q, b); }
  // (column, row) of query block m's rows in the 2-D maps of the row arrays:
  // batched {sq_pad, B * Hq}, varlen {ws_rows, Hq} (see base).
  __device__ __forceinline__ int2 map_coord(int b, int h, int q_start, int row) const {
    return cu_seqlens_q != nullptr ? make_int2(((q_start + 3) & ~3) + 132 * b + row, h)
                                   : make_int2(row, b * heads_q + h);
  }
  __device__ __forceinline__ int64_t base(int b, int h, int q_start) const {
    return cu_seqlens_q != nullptr
               ? static_cast<int64_t>(h) * ws_rows + ((static_cast<int64_t>(q_start) + 3) & ~int64_t(3)) +
                     132 * static_cast<int64_t>(b)
               : (static_cast<int64_t>(b) * heads_q + h) * sq_pad;
  }
};

// Main kernel parameters, passed by value as a __grid_constant__.
// Maps (sm90/tensor_map.hpp): plain 4-D, or ragged 5-D where the flags say.
struct BwdKernelArgs {
  CUtensorMap tm_q;   // {D, Sq, Hq, B}, box {64, kBlockM}; ragged if q_ragged
  CUtensorMap tm_do;  // same as Q
  CUtensorMap tm_k;   // {D, Sk, Hkv, B}, box {64, kBlockN}; ragged if k_ragged
  CUtensorMap tm_v;   // same as K
  CUtensorMap tm_dk;  // {D, Sk, Hkv, B}, box {64, 64} (one consumer's keys; d 256:
                      // {64, 80}); ragged if ks_ragged
  CUtensorMap tm_dv;  // same as dK
  CUtensorMap tm_lse;   // lse_log2 as 2-D fp32 {sq_pad, B Hq} / varlen {ws_rows, Hq}, box {kBlockM, 1}
  CUtensorMap tm_dsum;  // dsum, same
  float* dq_accum;
  BwdRowSpace rs;
  const int* cu_seqlens_k;  // varlen (with rs.cu_seqlens_q)
  const int* seqused_k;     // nullptr: unused
  int q_ragged;   // varlen: Q / dO maps are ragged
  int k_ragged;   // varlen or seqused_k: K / V maps are ragged (len = keys used)
  int ks_ragged;  // varlen: dK / dV maps are ragged (len = key rows)
  int seqlen_k;   // batched Sk / varlen max_seqlen_k
  int group;      // Hq / Hkv
  int heads_kv;
  int window_left;   // kLocal kernels: -1 unbounded, else >= 0
  int window_right;  // kLocal kernels: -1 unbounded, else >= 0
  int num_n_blocks;  // ceil(Sk / kBlockN)
  int num_hb;        // Hkv * B
  int hb_per_section;  // causal CTA order: (b, h_kv) pairs per L2 section
  int det_rotate;      // deterministic, no mask: rotated query-block order allowed (see file comment)
  float scale_log2;  // exp2 multiplier: softmax_scale * log2(e), or softcap * log2(e)
  float softcap_pre;  // kSoftcap kernels: 2 * log2(e) * softmax_scale / softcap
  float softmax_scale;
  // Deterministic mode only (nullptr otherwise): see the file comment.
  int* dq_sem;     // the semaphores (dq_sem region + 4 words)
  int* dq_ticket;  // the CTA ticket counter (dq_sem region, word 0)
  int data_panels;  // ceil(D / 64): the 64-column panels with data (sm90/panels.cuh)
};

struct BwdPrepArgs {
  const void* out;
  const void* dout;
  const float* lse;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t lse_batch_stride, lse_head_stride;
  float* dq_accum;
  float* lse_log2;
  float* dsum;
  BwdRowSpace rs;
  int headdim;  // real head dim (<= the kernel's)
  // Deterministic head dims 64 / 128: which query blocks some key block
  // reaches (their first adder stores, so they need no zeros).
  const int* cu_seqlens_k;
  const int* seqused_k;
  int seqlen_k;
  int window_left, window_right;  // the main kernel's mask edges (-1 unbounded)
};

struct BwdPostArgs {
  const float* dq_accum;
  void* dq;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  BwdRowSpace rs;
  int headdim;  // real head dim (<= the kernel's)
  float softmax_scale;
};

// kCausal: bottom-right causal mask (compile-time right edge 0).
// kLocal: a sliding window, runtime left / right (causal + left window too).
// kSoftcap: scores pass through softcap * tanh(scale * s / softcap).
template <int kHeadDim_, typename Elem_, bool kCausal_, bool kDeterministic_ = false,
          bool kLocal_ = false, bool kSoftcap_ = false>
struct BwdConfig {
  using Elem = Elem_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kCausal = kCausal_;
  static constexpr bool kDeterministic = kDeterministic_;
  static constexpr bool kLocal = kLocal_;
  static constexpr bool kSoftcap = kSoftcap_;
  static_assert(!(kCausal && kLocal), "a causal window is a kLocal kernel with right = 0");
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "instantiated head dims: 64, 128, 256");
  // Head dim 256, every mode: the 80-key kernel, 64 queries x 80 keys per
  // iteration, the consumers split the keys for S / dP (40 each) and the head
  // dim for the swapped GEMMs dV^T, dK^T, dQ^T (bwd_consumer_d256x80.cuh):
  // 20% fewer dQ reductions and Q / dO bytes per FLOP than 64-key blocks.
  static constexpr bool kKeys80 = kHeadDim == 256;

  // keys per CTA: 2 consumers x 64, or 80 (head dim 256)
  static constexpr int kBlockN = kKeys80 ? 80 : 128;
  // queries per iteration: 128 (d 64) or 64 (d 128, d 256)
  static constexpr int kBlockM = kKeys80 ? 64 : 8192 / kHeadDim;
  static constexpr int kStages = 2;                // Q / row-array ring (and dO)
  // dO stages: one in the 80-key kernel (two do not fit beside P and dS).
  static constexpr int kStagesDO = kKeys80 ? 1 : kStages;
  // Head dims 64 / 128, default mode: dQ writer threads as in deterministic
  // mode (threads 32 / 64 of the producer warpgroup reduce-add the staged
  // pieces; dq_full / dq_empty mbarriers), without the semaphores: the
  // consumers then hold no named barrier and no bulk-copy wait for dQ
  // (FlashAttention-3's dQ path; d64 ncu: 8.8% of the stall samples on the
  // consumer's staging and commit).
  static constexpr bool kDqWriters = !kDeterministic && !kKeys80;
  // Head dims 64 / 128: a consumer issues the next iteration's S^T before it
  // waits for this iteration's dQ GEMM, so the dQ wait, its staging and the
  // loop turn overlap tensor work (H200 A/B: d128 +0-4%, d64 +0-2%). (dP^T
  // cannot go ahead too: its accumulators do not fit; ptxas spilled 520-620 B.)
  // d64 with the dQ writers: since the warp-uniform descriptors the plain and
  // causal kernels keep their spills (0 / 16 B; before them: ~400 B and
  // C7512); the local softcap kernel went from 20 to 132 B, so not there.
  // Deterministic d64: measured 2-4% slower before the warp-uniform
  // descriptors; since them +1-2.5% non-causal, 0-0.5% causal (H200,
  // 2026-12-03); plain / local / causal keep their spills (24 / 8 / 0 B),
  // softcap 40 -> 164 B, so not with softcap.
  static constexpr bool kIssueAhead =
      !(kHeadDim == 64 && kSoftcap && (kLocal || kDeterministic));
  // Head dim 128, unmasked or causal, default mode: dV += P^T dO is issued as
  // soon as P^T is packed, before the wait for dP^T, so it runs during the
  // dS^T math (H200 A/B: +1-2% at 2k-16k unmasked). Causal: measured 1-3.5%
  // slower before the dQ writer threads; with them, and with kRowsAhead /
  // kLatePublish below, +1-5% at 1k-16k (H200, 2026-12-03). +-1%
  // deterministic, so not there; head dim 64 spilled 56-128 B (its P^T / dS^T
  // fragments are twice as large).
  static constexpr bool kEarlyDV = kHeadDim == 128 && !kSoftcap && !kLocal && !kDeterministic;
  // The kEarlyDV kernels (d128 unmasked and causal, default mode), from ncu against
  // FlashAttention-3 (docs/notes/ncu-flash4-vs-fa3-bwd.md):
  // kRowsAhead: the next stage's lse_log2 rows are read into registers right
  //   after its full wait, before the S^T issue-ahead, and the D rows right
  //   after the exponentials (the first FFMA waited on the lse loads, 5.3% of
  //   the samples: the S^T wait before them is already satisfied).
  // kLatePublish: a staged dQ piece is published to its writer (fence +
  //   arrive) at the top of the next turn, not right after its stores (that
  //   fence waited for the stores, 5.5% of the samples).
  static constexpr bool kRowsAhead = kEarlyDV;
  static constexpr bool kLatePublish = kEarlyDV;
  static constexpr int kNumThreads = 384;
  // 24 + 2 x 240 = 504 per lane. (32 + 2 x 240 = 512, the whole register
  // file, hung the deterministic kernels on H100: the consumers' setmaxnreg.inc
  // never returned.)
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;

  static constexpr int kPanels = kHeadDim / 64;  // 64-column panels of a Q/K row
  static constexpr int kPanelBytesM = kBlockM * 128;
  static constexpr int kPanelBytesN = kBlockN * 128;
  static constexpr int kQBytes = kPanels * kPanelBytesM;  // Q or dO tile
  static constexpr int kKBytes = kPanels * kPanelBytesN;  // K or V tile
  // dS^T: kBlockN key rows x kBlockM query columns, kBlockM/64 panels.
  static constexpr int kDSBytes = (kBlockM / 64) * kPanelBytesN;
  static constexpr int kDQPieceFloats = 64 * 64;
  static constexpr int kDQPieceBytes = kDQPieceFloats * 4;
  static constexpr int kRowBytes = kBlockM * 4;
  static_assert(kBlockM * kHeadDim == (kKeys80 ? 4 : 2) * kDQPieceFloats,
                "a dQ chunk is two (d 256: four) 64x64 pieces");
  // Head dims 64 / 128: dQ is staged in shared memory and bulk-added
  // (deterministic: by the writer threads, in turn). red.global.add.v4.f32 from
  // registers instead measured 2-3% slower at d128 non-causal (H200 A/B,
  // docs/perf.md) and spilled at d64. Head dim 256: no buffer fits; one dQ
  // piece goes by vector reductions, the other is staged over the finished Q
  // stage (deterministic: both by vector reductions; bwd_consumer_d256x80.cuh).
  // P and dS in 16 bits, two buffers each.
  static constexpr int kDQStageBytes = kKeys80 ? 0 : 2 * kDQPieceBytes;
  static constexpr int kPBytes = kKeys80 ? 2 * kDSBytes : 0;

  // Shared-memory layout (offsets from a 1024-aligned base).
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKBytes;
  static constexpr int kOffQ = kOffV + kKBytes;
  static constexpr int kOffDO = kOffQ + kStages * kQBytes;
  static constexpr int kOffDS = kOffDO + kStagesDO * kQBytes;
  static constexpr int kOffDQ = kOffDS + 2 * kDSBytes;
  static constexpr int kOffP = kOffDQ + kDQStageBytes;
  static constexpr int kOffLse = kOffP + kPBytes;
  static constexpr int kOffDsum = kOffLse + kStages * kRowBytes;
  static constexpr int kOffBar = kOffDsum + kStages * kRowBytes;
  // barriers: kv_full, full[S], empty[S]
  // + deterministic: dq_full[2], dq_empty[2] (consumer w <-> its dQ writer; head
  //   dim 256: consumer <-> its turn keeper)
  // + 80-key kernel: do_full, do_empty (the single dO buffer)
  static constexpr bool kDqBars = kDeterministic || kDqWriters;  // dq_full[2], dq_empty[2]
  static constexpr int kNumBars = 1 + 2 * kStages + (kDqBars ? 4 : 0) + (kKeys80 ? 2 : 0);
  static constexpr int kBarDO = 1 + 2 * kStages + (kDqBars ? 4 : 0);  // do_full, do_empty
  // 80-key kernel: dQ piece 1 is staged over the finished Q stage unless the
  // stage has zero-filled tail panels (head dims 136..192); the stage is then
  // released by one thread per consumer (empty barrier count 2, else 8).
  __device__ static bool keys80_stages_dq(int data_panels) {
    return kKeys80 && !kDeterministic && data_panels == kPanels;
  }
  static constexpr int kOffTicket = kOffBar + 8 * kNumBars;  // deterministic: the CTA's ticket
  static constexpr int kSmemBytes =
      kOffTicket + (kDeterministic ? 16 : 0) + 1024;  // + alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
};

// Named barrier ids (0 is __syncthreads).
enum BwdNamedBarrier : int {
  kBwdBarDS = 1,   // both consumers wrote dS^T (head dim 256: P and dS; 256 threads)
  kBwdBarWG0 = 2,  // per-consumer sync (kBwdBarWG0 + w, 128 threads)
  kBwdBarWG1 = 3,
  kBwdBarEpi = 4,  // both consumers finished every wgmma (256 threads)
};

// One sequence of the batch: lengths and TMA coordinates (sm90/sequence.cuh).
__device__ __forceinline__ SeqCoords bwd_seq(const BwdKernelArgs& a, int b) {
  return seq_coords(a.rs.cu_seqlens_q, a.cu_seqlens_k, a.seqused_k, a.rs.seqlen_q, a.seqlen_k, b);
}

// Shared-memory regions of a CTA (offsets in C, from the 1024-aligned base).
template <class C>
struct BwdSmem {
  uint8_t* k;
  uint8_t* v;
  uint8_t* q;
  uint8_t* dout;
  uint8_t* ds;
  float* dq;    // dQ staging (head dims 64, 128)
  uint8_t* p;   // P buffers, 16-bit (head dim 256)
  float* lse;   // lse_log2 rows, one block per stage
  float* dsum;  // D rows, one block per stage
  uint64_t* kv_full;
  uint64_t* full;      // [kStages]
  uint64_t* empty;     // [kStages]
  uint64_t* dq_full;   // [2], dQ writers (kDqBars)
  uint64_t* dq_empty;  // [2], dQ writers (kDqBars)
  uint64_t* do_full;   // 80-key kernel only: the single dO buffer
  uint64_t* do_empty;
  __device__ __forceinline__ explicit BwdSmem(uint8_t* base)
      : k(base + C::kOffK),
        v(base + C::kOffV),
        q(base + C::kOffQ),
        dout(base + C::kOffDO),
        ds(base + C::kOffDS),
        dq(reinterpret_cast<float*>(base + C::kOffDQ)),
        p(base + C::kOffP),
        lse(reinterpret_cast<float*>(base + C::kOffLse)),
        dsum(reinterpret_cast<float*>(base + C::kOffDsum)),
        kv_full(reinterpret_cast<uint64_t*>(base + C::kOffBar)),
        full(kv_full + 1),
        empty(kv_full + 1 + C::kStages),
        dq_full(kv_full + 1 + 2 * C::kStages),
        dq_empty(kv_full + 3 + 2 * C::kStages),
        do_full(kv_full + C::kBarDO),
        do_empty(kv_full + C::kBarDO + 1) {}
};

// One thread's 64x64 dQ piece fragment (wgmma accumulator registers) into a
// shared-memory staging piece, in the dq_piece_offset layout: 16-byte stores,
// conflict-free; the piece then goes out by one bulk reduce-add.
__device__ __forceinline__ void bwd_store_dq_piece(float* piece, const float (&dq)[32], int t) {
#pragma unroll
  for (int g = 0; g < 8; ++g)
    *reinterpret_cast<float4*>(piece + dq_piece_offset(4 * g, t)) =
        make_float4(dq[4 * g], dq[4 * g + 1], dq[4 * g + 2], dq[4 * g + 3]);
}

// Epilogue of head dims 64 / 128: dK / dV of 64 key rows (this thread: rows
// r, r + 8; accumulator columns 64 kAccPanels wide) -> the first kAccPanels
// 64-column panels of two K-shaped staging tiles (sK, sV: 128-byte swizzled
// rows, panel_bytes apart), dK scaled by sc.
template <typename T, int kAccPanels>
__device__ __forceinline__ void bwd_stage_dkdv(uint8_t* sK, uint8_t* sV,
                                               const float (&dk)[32 * kAccPanels],
                                               const float (&dv)[32 * kAccPanels], uint32_t r,
                                               int quad, uint32_t panel_bytes, float sc) {
  const uint32_t r7 = r & 7u;
#pragma unroll
  for (int p = 0; p < kAccPanels; ++p)
#pragma unroll
    for (int c = 0; c < 8; ++c)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = 4 * (8 * p + c) + 2 * hh;
        const uint32_t off = p * panel_bytes + (r + 8 * hh) * 128 +
                             ((static_cast<uint32_t>(c) ^ r7) << 4) + quad * 4;
        *reinterpret_cast<uint32_t*>(sK + off) = pack2<T>(dk[i] * sc, dk[i + 1] * sc);
        *reinterpret_cast<uint32_t*>(sV + off) = pack2<T>(dv[i], dv[i + 1]);
      }
}

// TMA stores of staged dK / dV (every backward kernel): one box of key rows
// (64; 80 at head dim 256) from key_start, 64-column panels
// [first_panel, first_panel + panels) below data_panels (sm90/panels.cuh);
// one thread, commits one group.
__device__ __forceinline__ void bwd_store_dkdv(const BwdKernelArgs& args, const SeqCoords& sqi,
                                               const uint8_t* sK, const uint8_t* sV,
                                               uint32_t panel_bytes, int first_panel, int panels,
                                               int key_start, int h_kv, int b, int data_panels) {
  for (int p = first_panel; p < first_panel + panels && p < data_panels; ++p) {
    const uint8_t* dk_src = sK + p * panel_bytes;
    const uint8_t* dv_src = sV + p * panel_bytes;
    if (args.ks_ragged) {
      // The store maps span all sk_rows key rows (varlen: k_ext = start + sk).
      const int ks_row = args.seqlen_k - sqi.sk_rows;
      const int ks_ext = sqi.k_ext - sqi.sk + sqi.sk_rows;
      tma_store_5d(&args.tm_dk, dk_src, p * 64, ks_row + key_start, h_kv, sqi.mb, ks_ext);
      tma_store_5d(&args.tm_dv, dv_src, p * 64, ks_row + key_start, h_kv, sqi.mb, ks_ext);
    } else {
      tma_store_4d(&args.tm_dk, dk_src, p * 64, key_start, h_kv, b);
      tma_store_4d(&args.tm_dv, dv_src, p * 64, key_start, h_kv, b);
    }
  }
  tma_store_commit();
}

// Whether a tile (kBM queries from q0 x the kBN keys from j_first) has
// elements to mask: it crosses the key tail or a window edge. Key j is
// visible to query i iff j < sk and j - (i + shift) in [-left, right]
// (shift = sk - sq; left / right -1: unbounded).
template <int kBM, int kBN>
__device__ __forceinline__ bool bwd_tile_needs_mask(int64_t j_first, int q0, int sk, int shift,
                                                    int left, int right) {
  bool any = j_first + kBN > sk;
  const int64_t d_max = j_first + kBN - 1 - q0 - shift;    // largest j - (i + shift)
  const int64_t d_min = j_first - (q0 + kBM - 1) - shift;  // smallest
  if (right >= 0) any = any || d_max > right;
  if (left >= 0) any = any || d_min < -left;
  return any;
}

// What a CTA works on, for its consumer warpgroups.
struct BwdCta {
  SeqCoords sqi;  // the sequence (lengths, TMA coordinates)
  int b, h_kv, n_block;
  int n_iters;      // (query head, query block) pairs to visit
  int left, right;  // mask edges, -1 unbounded
};

}  // namespace sm90
}  // namespace flash4

#include "sm90/bwd_consumer_d256x80.cuh"  // needs the types above; the kernel below calls it

namespace flash4 {
namespace sm90 {

template <class C>
__global__ void __launch_bounds__(C::kNumThreads, 1)
    bwd_kernel(const __grid_constant__ BwdKernelArgs args) {
  // Launched programmatically after the preprocess (bwd_launch.cuh): wait for
  // its completion (lse_log2 / D rows, zeroed dq_accum and semaphores) before
  // anything else. A no-op without a programmatic dependency.
  cudaGridDependencySynchronize();
  using T = typename C::Elem;
  constexpr int kD = C::kHeadDim;
  constexpr int kBM = C::kBlockM;
  constexpr int kBN = C::kBlockN;
  constexpr int kS = C::kStages;
  constexpr int kNS = kBM / 2;  // S^T / dP^T accumulators per thread (64 keys x kBM)
  constexpr int kNK = kD / 2;   // dK / dV accumulators per thread (64 keys x kD)

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_aligned_1024(smem_raw);
  uint8_t* sK = smem + C::kOffK;
  uint8_t* sV = smem + C::kOffV;
  uint8_t* sQ = smem + C::kOffQ;
  uint8_t* sDO = smem + C::kOffDO;
  uint8_t* sDS = smem + C::kOffDS;
  float* sDQ = reinterpret_cast<float*>(smem + C::kOffDQ);
  float* sLse = reinterpret_cast<float*>(smem + C::kOffLse);
  float* sDsum = reinterpret_cast<float*>(smem + C::kOffDsum);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBar);
  uint64_t* kv_full = bars;
  uint64_t* full = bars + 1;
  uint64_t* empty = bars + 1 + kS;
  uint64_t* dq_full = bars + 1 + 2 * kS;   // dQ writers only (kDqBars)
  uint64_t* dq_empty = dq_full + 2;        // dQ writers only (kDqBars)
  uint64_t* do_full = bars + C::kBarDO;    // 80-key kernel only: the single dO buffer
  uint64_t* do_empty = do_full + 1;

  const int tid = threadIdx.x;
  // Warp-uniform for the compiler too (a shuffle from lane 0), so that values
  // derived from it (descriptor bases) can live in uniform registers.
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int lane = tid % 32;
  // CTA order (1-D grid of num_n_blocks * num_hb): non-causal, key blocks
  // fastest, so CTAs running together share one head's Q / dO in L2. Causal:
  // (b, h_kv) pairs in sections of hb_per_section (sized on the host so that
  // a section's Q / dO fit in L2); inside a section key blocks slowest
  // (bottom-right mask: block 0 sees the most queries), so the heaviest CTAs
  // start first and a section ends with its lightest. Deterministic: the
  // position in this order is the CTA's ticket, not blockIdx (file comment).
  int cta = static_cast<int>(blockIdx.x);
  if constexpr (C::kDeterministic) {
    int* s_ticket = reinterpret_cast<int*>(smem + C::kOffTicket);
    if (tid == 0) *s_ticket = atomicAdd(args.dq_ticket, 1);
    __syncthreads();
    // A warp reduction of the (equal) values: its result is a uniform
    // register, so ptxas keeps the loop's descriptors and stage offsets in
    // the uniform datapath (read plainly from shared memory, the whole
    // deterministic consumer loop ran on vector registers: 740 instead of
    // 598 SASS instructions, an R2UR pair before every HGMMA).
    cta = __reduce_max_sync(0xffffffffu, *s_ticket);
  }
  int n_block, hb;
  if constexpr (C::kCausal) {
    const int per_sec = args.hb_per_section * args.num_n_blocks;
    const int sec = cta / per_sec;
    const int r = cta - sec * per_sec;
    const int hs = min(args.hb_per_section, args.num_hb - sec * args.hb_per_section);
    n_block = r / hs;
    hb = sec * args.hb_per_section + (r - n_block * hs);
  } else {
    hb = cta / args.num_n_blocks;
    n_block = cta - hb * args.num_n_blocks;
  }
  const int b = hb / args.heads_kv;
  const int h_kv = hb - b * args.heads_kv;
  const SeqCoords sqi = bwd_seq(args, b);
  // Varlen: a key block past this sequence's rows has nothing to write
  // (uniform over the CTA; no barrier has been initialised yet).
  if (n_block * kBN >= sqi.sk_rows) return;
  const int Sq = sqi.sq;
  const int Sk = sqi.sk;
  // Mask edges (-1: unbounded); compile-time for the causal and plain kernels.
  const int right = C::kCausal ? 0 : (C::kLocal ? args.window_right : -1);
  const int left = C::kLocal ? args.window_left : -1;
  const BwdBlockRange m_range = bwd_m_range<kBM, kBN>(n_block, Sq, Sk, left, right);
  const int m_begin = m_range.begin;
  const int nm = m_range.end - m_range.begin;  // query blocks per head
  const int n_iters = nm * args.group;
  // Deterministic, no mask: rotated order (file comment, "Deterministic
  // mode"). nk = key blocks with keys; CTA n starts at query block
  // m0 = floor(n nm / nk), so the CTAs of a (b, h_kv) add into different
  // query blocks at the same time.
  constexpr bool kRotatable = C::kDeterministic && !C::kCausal && !C::kLocal;
  const int nk = (Sk + kBN - 1) / kBN;
  const bool rotate = kRotatable && args.det_rotate != 0 && nm >= nk && n_block < nk;
  const int m0 = rotate ? static_cast<int>(static_cast<int64_t>(n_block) * nm / nk) : 0;
  // (query head, query block) of iteration it.
  // Deterministic kernels: the division by nm (or the group) that runs every
  // iteration in the producer, both consumers and the dQ writers is a
  // multiply-high (+1-4% on H100). The default kernels keep `/`: there the
  // same change measured 1-3.5% slower at causal d64 1k / d128 4k-16k
  // (docs/perf.md).
  const FastDiv it_div(C::kDeterministic ? (C::kCausal ? args.group : nm) : 1);
  auto iter_hm = [&](int it) -> int2 {
    int q, r;
    if constexpr (C::kDeterministic) {
      q = it_div.div(it);
      r = it_div.rem(it, q);
    } else {
      q = it / nm;
      r = it % nm;
    }
    if constexpr (C::kDeterministic && C::kCausal)  // m descending, head fastest
      return make_int2(h_kv * args.group + r, m_range.end - 1 - q);
    else if constexpr (kRotatable) {
      const int m = m0 + r < nm ? m0 + r : m0 + r - nm;  // (m0 + r) mod nm; m_begin = 0 here
      return make_int2(h_kv * args.group + q, rotate ? m : m_begin + r);
    } else
      return make_int2(h_kv * args.group + q, m_begin + r);
  };
  // Workspace row offset of (b, h, query block m).
  auto row_offset = [&](int h, int m) -> int64_t {
    return args.rs.base(b, h, sqi.q_start) + static_cast<int64_t>(m) * kBM;
  };
  // Deterministic: semaphore of consumer piece w of (h, m), and how many key
  // blocks add into (h, m) before this one: they are n_first .. n_block - 1
  // (contiguous; see bwd_m_range).
  auto dq_sem_of = [&](int h, int m, int w) -> int* {
    return args.dq_sem + row_offset(h, m) / 32 + w;
  };
  auto adds_before = [&](int m) -> int {
    if (kRotatable && rotate) {
      // Adders of m in the order they reach it: n* (the last CTA starting at
      // or before m), n* - 1, ..., 0, nk - 1, ..., n* + 1.
      const int n_star = static_cast<int>((static_cast<int64_t>(m + 1) * nk + nm - 1) / nm) - 1;
      const int r = n_star - n_block;
      return r >= 0 ? r : r + nk;
    }
    // bwd_first_adder's formula (sm90/bwd_blocks.hpp, host-tested), written
    // out: the call compiled the deterministic kernels differently (SASS).
    const int64_t first_key = static_cast<int64_t>(m) * kBM + (static_cast<int64_t>(Sk) - Sq) - left;
    return n_block - (left >= 0 ? static_cast<int>(max(int64_t(0), first_key) / kBN) : 0);
  };

  if (tid == 0) {
    mbar_init(kv_full, 1);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      mbar_init(&full[s], 1);
      // Every consumer warp; head dim 256 with dQ staged: one thread per
      // consumer, once its dQ staging in the stage has been read.
      mbar_init(&empty[s], C::keys80_stages_dq(args.data_panels) ? 2 : 8);
    }
    if constexpr (C::kDqBars) {
      for (int w = 0; w < 2; ++w) {
        mbar_init(&dq_full[w], 128);  // every thread of consumer w
        mbar_init(&dq_empty[w], 1);   // the writer
      }
    }
    if constexpr (C::kKeys80) {
      mbar_init(do_full, 1);
      mbar_init(do_empty, 8);  // every consumer warp
    }
    mbar_init_fence();
  }
  // Panels with no data (head dims 136..192 on the 256 kernel): zeroed once,
  // never loaded or stored (sm90/panels.cuh). Compile-time all below 256.
  const int np = C::kKeys80 ? args.data_panels : C::kPanels;
  if constexpr (C::kKeys80) {
    zero_tail_panels<C::kPanels>(sK, C::kKBytes, 2, C::kPanelBytesN, np);  // K, V
    zero_tail_panels<C::kPanels>(sQ, C::kQBytes, kS + C::kStagesDO, C::kPanelBytesM,
                                 np);  // Q, dO stages
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    setmaxnreg_dec<C::kProducerRegs>();
    if (tid == 0) {
      prefetch_tmap(&args.tm_q);
      prefetch_tmap(&args.tm_do);
      prefetch_tmap(&args.tm_k);
      prefetch_tmap(&args.tm_v);
      if (n_iters > 0) {  // the row maps are encoded only when there are query rows
        prefetch_tmap(&args.tm_lse);
        prefetch_tmap(&args.tm_dsum);
      }
      mbar_arrive_expect_tx(kv_full, 2 * np * C::kPanelBytesN);
#pragma unroll
      for (int p = 0; p < C::kPanels; ++p) {
        if (p >= np) continue;
        if (args.k_ragged) {
          tma_load_5d(sK + p * C::kPanelBytesN, &args.tm_k, kv_full, p * 64,
                      sqi.k_row + n_block * kBN, h_kv, sqi.mb, sqi.k_ext);
          tma_load_5d(sV + p * C::kPanelBytesN, &args.tm_v, kv_full, p * 64,
                      sqi.k_row + n_block * kBN, h_kv, sqi.mb, sqi.k_ext);
        } else {
          tma_load_4d(sK + p * C::kPanelBytesN, &args.tm_k, kv_full, p * 64, n_block * kBN, h_kv,
                      b);
          tma_load_4d(sV + p * C::kPanelBytesN, &args.tm_v, kv_full, p * 64, n_block * kBN, h_kv,
                      b);
        }
      }
      for (int it = 0; it < n_iters; ++it) {
        const int2 hm = iter_hm(it);
        const int h = hm.x;
        const int m = hm.y;
        const int s = it % kS;
        const uint32_t ph = (it / kS) & 1;
        mbar_wait(&empty[s], ph ^ 1);
        if constexpr (C::kKeys80) {
          // Q and the row arrays on full[s]; dO, single-buffered, on
          // do_full once the consumers released the previous one.
          // The data panels of query block m of head h (Q or dO) into a tile.
          auto load_rows = [&](uint8_t* dst, const CUtensorMap* map, uint64_t* bar) {
#pragma unroll
            for (int p = 0; p < C::kPanels; ++p) {
              if (p >= np) continue;
              if (args.q_ragged)
                tma_load_5d(dst + p * C::kPanelBytesM, map, bar, p * 64, sqi.q_row + m * kBM, h,
                            sqi.mb, sqi.q_ext);
              else
                tma_load_4d(dst + p * C::kPanelBytesM, map, bar, p * 64, m * kBM, h, b);
            }
          };
          mbar_arrive_expect_tx(&full[s], np * C::kPanelBytesM + 2 * C::kRowBytes);
          const int2 rc = args.rs.map_coord(b, h, sqi.q_start, m * kBM);
          tma_load_2d(sLse + s * kBM, &args.tm_lse, &full[s], rc.x, rc.y);
          tma_load_2d(sDsum + s * kBM, &args.tm_dsum, &full[s], rc.x, rc.y);
          load_rows(sQ + s * C::kQBytes, &args.tm_q, &full[s]);
          mbar_wait(do_empty, (it & 1) ^ 1);
          mbar_arrive_expect_tx(do_full, np * C::kPanelBytesM);
          load_rows(sDO, &args.tm_do, do_full);
          continue;
        }
        mbar_arrive_expect_tx(&full[s], 2 * np * C::kPanelBytesM + 2 * C::kRowBytes);
#pragma unroll
        for (int p = 0; p < C::kPanels; ++p) {
          if (p >= np) continue;
          uint8_t* dq_dst = sQ + s * C::kQBytes + p * C::kPanelBytesM;
          uint8_t* ddo_dst = sDO + s * C::kQBytes + p * C::kPanelBytesM;
          if (args.q_ragged) {
            tma_load_5d(dq_dst, &args.tm_q, &full[s], p * 64, sqi.q_row + m * kBM, h, sqi.mb,
                        sqi.q_ext);
            tma_load_5d(ddo_dst, &args.tm_do, &full[s], p * 64, sqi.q_row + m * kBM, h, sqi.mb,
                        sqi.q_ext);
          } else {
            tma_load_4d(dq_dst, &args.tm_q, &full[s], p * 64, m * kBM, h, b);
            tma_load_4d(ddo_dst, &args.tm_do, &full[s], p * 64, m * kBM, h, b);
          }
        }
        const int2 rc = args.rs.map_coord(b, h, sqi.q_start, m * kBM);
        tma_load_2d(sLse + s * kBM, &args.tm_lse, &full[s], rc.x, rc.y);
        tma_load_2d(sDsum + s * kBM, &args.tm_dsum, &full[s], rc.x, rc.y);
      }
    } else if (!C::kKeys80 && (tid == 32 || tid == 64)) {
      // dQ writers, one per consumer piece: thread 32 takes consumer 0's
      // pieces, thread 64 (another warp) consumer 1's. Each waits for its
      // staged piece, reduce-adds it and frees the staging buffer once read,
      // so neither consumer's buffer waits for the other's piece (ncu: with
      // one writer for both pieces, ~30% of the stall samples were consumers
      // waiting for it). Deterministic: before the add, it waits for its turn
      // on the piece's semaphore, and hands the turn on once the add is
      // complete in global memory; the consumers only wait for a free buffer,
      // so the semaphore waits and the adds' round trip overlap their next
      // iteration's matmuls.
      const int w = tid / 32 - 1;
      for (int it = 0; it < n_iters; ++it) {
        const int2 hm = iter_hm(it);
        int* sem = nullptr;  // deterministic: the piece's semaphore
        if constexpr (C::kDeterministic) sem = dq_sem_of(hm.x, hm.y, w);
        const int64_t dst = row_offset(hm.x, hm.y) * kD + w * C::kDQPieceFloats;
        mbar_wait(&dq_full[w], it & 1);
        int before = 1;  // adds into the piece before this one (default mode: unknown)
        if constexpr (C::kDeterministic) {
          before = adds_before(hm.y);
          sem_wait_eq(sem, before);
          fence_proxy_async_global();  // the acquire orders the bulk add below
        }
        // Deterministic: the first adder stores (the preprocess zeroes only the
        // query blocks no key block reaches: 2 x 134 MB less DRAM traffic at
        // d128, the zeroing and the adds' reads of zeroed lines). Predicated,
        // not branched: a branch here made ptxas spill more in the d128 kernel.
        bulk_store_or_add_f32(args.dq_accum + dst, sDQ + w * C::kDQPieceFloats, C::kDQPieceBytes,
                              before == 0);
        tma_store_commit();
        tma_store_wait_read_all();  // the piece is read: the consumer may refill the buffer
        mbar_arrive(&dq_empty[w]);
        if constexpr (C::kDeterministic) {
          bulk_wait_all();             // the add is complete in global memory (not only read)
          fence_proxy_async_global();  // ... and ordered before this thread's generic accesses
          __threadfence();
          red_release_gpu_add_s32(sem, 1);  // the next key block's turn
        }
      }
      if constexpr (!C::kDeterministic) bulk_wait_all();  // before the shared memory goes away
    } else if (C::kDeterministic && C::kKeys80 && (tid == 32 || tid == 64)) {
      // Turn keepers (deterministic, head dim 256; bwd_consumer_d256x80.cuh):
      // the consumers add dQ from registers (nothing is staged); thread 32
      // (consumer 0's pieces) and thread 64 (consumer 1's), in different
      // warps, keep the semaphore traffic off their path: the consumer waits
      // only for the grant in shared memory, the global round trips run under
      // its GEMMs. (Each consumer doing this itself measured 0.58-0.71 of the
      // default mode, one keeper for both 0.68-0.78: docs/perf.md.) Per
      // iteration: wait for the turn on the piece pair of (h, m), grant it
      // (dq_empty[w]), wait until every thread of consumer w has issued its
      // adds (dq_full[w]), fence, hand the turn on.
      const int w = tid / 32 - 1;
      for (int it = 0; it < n_iters; ++it) {
        const int2 hm = iter_hm(it);
        int* sem = dq_sem_of(hm.x, hm.y, w);
        sem_wait_eq(sem, adds_before(hm.y));
        mbar_arrive(&dq_empty[w]);
        mbar_wait(&dq_full[w], it & 1);
        __threadfence();  // the consumer's adds (ordered before its arrivals) come first
        red_release_gpu_add_s32(sem, 1);
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  setmaxnreg_inc<C::kConsumerRegs>();
  if constexpr (C::kKeys80) {
    const BwdCta work{sqi, b, h_kv, n_block, n_iters, left, right};
    bwd_consumers_keys80<C>(args, smem, work, iter_hm, row_offset);
  } else {
    // Head dims 64 and 128. (The main loop is kept inline: rebuilt on shared
    // helpers, or moved into a function, the deterministic d64 kernel spilled
    // 260-280 B instead of 76 and ran ~20% slower. The epilogue shares
    // bwd_stage_dkdv / bwd_store_dkdv: SASS byte-identical to the inline copy.)
    const int cw = wg - 1;            // consumer 0/1: keys [64 cw, 64 cw + 64) of the block
    const int wthr = tid - 128 * wg;  // thread within the warpgroup
    const int warp_in_wg = wthr / 32;
    const int quad = lane % 4;
    const int row0 = 16 * warp_in_wg + lane / 4;  // key row within the consumer's 64 (+8 for hh=1)
    const int key0 = n_block * kBN + 64 * cw + row0;
    const int shift = Sk - Sq;  // key j visible to query i iff j - (i + shift) in [-left, right]
    const float c2 = args.scale_log2;
    const bool key_tail = static_cast<int64_t>(n_block + 1) * kBN > Sk;

    const uint32_t k_base = smem_u32(sK);
    const uint32_t v_base = smem_u32(sV);
    const uint32_t q_base = smem_u32(sQ);
    const uint32_t do_base = smem_u32(sDO);
    const uint32_t ds_base = smem_u32(sDS);
    float* sDQ_mine = sDQ + cw * C::kDQPieceFloats;

    float dv[kNK];
    float dk[kNK];
    float s_acc[kNS];
    float dp_acc[kNS];
    float dq[32];
    uint32_t p_frag[kBM / 16][4];
    uint32_t ds_frag[kBM / 16][4];
    float2 lse_r[C::kRowsAhead ? kBM / 8 : 1];  // C::kRowsAhead: lse_log2 rows of the next front
#pragma unroll
    for (int i = 0; i < kNK; ++i) dv[i] = dk[i] = 0.f;

    // S^T = K_w Q^T (acc) or dP^T = V_w dO^T: both operands K-major, 128B swizzle.
    auto issue_kt = [&](float(&acc)[kNS], uint32_t a_tile, uint32_t b_tile) {
      uint32_t aa = a_tile + cw * 64 * 128;  // rows [64 cw, 64 cw + 64) of the key block
      uint32_t ba = b_tile;
      reg_fence(aa);
      reg_fence(ba);
      const uint64_t a_desc = make_sw128_desc(aa, 16, 1024);
      const uint64_t b_desc = make_sw128_desc(ba, 16, 1024);
      // The first k-step overwrites (scale-d 0), but the asm reads its "+f"
      // operands: defining them here ends the previous iteration's live range.
#pragma unroll
      for (int i = 0; i < kNS; ++i) acc[i] = 0.f;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const uint32_t off_a = (kk / 4) * C::kPanelBytesN + (kk % 4) * 32;
        const uint32_t off_b = (kk / 4) * C::kPanelBytesM + (kk % 4) * 32;
        wgmma_ss<T, kBM>(acc, desc_advance(a_desc, off_a), desc_advance(b_desc, off_b), kk > 0);
      }
      wgmma_commit_group();
    };

    // dV += P^T dO (RS: P^T from p_frag; dO of stage s MN-major), one group.
    auto issue_dv = [&](int s) {
      uint32_t doa = do_base + s * C::kQBytes;
      reg_fence(doa);
      const uint64_t do_desc = make_sw128_desc(doa, C::kPanelBytesM, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs_tb<T, kD>(dv, p_frag[kk], desc_advance(do_desc, kk * 16 * 128), 1);
      wgmma_commit_group();
    };

    // The loop is rotated so that no wgmma is in flight across its back edge
    // (accumulators in flight there made ptxas serialise every wgmma, C7514):
    // front(it) waits for stage it, issues S^T (unless issued ahead) and dP^T,
    // computes P^T and dS^T and packs them (p_frag, ds_frag); a loop turn then
    // runs the dV, dK and dQ GEMMs of it, issues S^T of it + 1 while the dQ
    // GEMM runs (C::kIssueAhead), stages dQ, and runs front(it + 1).
    // C::kRowsAhead: this thread's lse_log2 row pairs of stage st into lse_r.
    auto load_lse_rows = [&](int st) {
#pragma unroll
      for (int c = 0; c < kBM / 8; ++c)
        lse_r[c] = *reinterpret_cast<const float2*>(sLse + st * kBM + 8 * c + 2 * quad);
    };

    auto front = [&](int it, bool s_issued) {
      const int2 hm = iter_hm(it);
      const int m = hm.y;
      const int s = it % kS;
      const int q0 = m * kBM;
      if (!s_issued) {
        mbar_wait(&full[s], (it / kS) & 1);
        if constexpr (C::kRowsAhead) load_lse_rows(s);
        issue_kt(s_acc, k_base, q_base + s * C::kQBytes);
      }
      issue_kt(dp_acc, v_base, do_base + s * C::kQBytes);

      // ---- P^T = exp2(c2 S^T - lse_log2[query]), masked arguments -> -inf.
      // Only tiles that cross the key tail or a mask edge test elements.
      // (bwd_tile_needs_mask's test, written out: the call compiled the d64 /
      // d128 kernels differently, SASS.)
      bool need_mask = key_tail;
      {
        const int64_t j_first = static_cast<int64_t>(n_block) * kBN;
        const int64_t d_max = j_first + kBN - 1 - q0 - shift;  // largest j - (i + shift)
        const int64_t d_min = j_first - (q0 + kBM - 1) - shift;  // smallest
        if (right >= 0) need_mask = need_mask || d_max > right;
        if (left >= 0) need_mask = need_mask || d_min < -left;
      }
      const float* lse_s = sLse + s * kBM;
      const float* dsum_s = sDsum + s * kBM;
      // Element (c, hh, e): key key0 + 8 hh, query q0 + 8 c + 2 quad + e.
      auto masked = [&](int c, int hh, int e) -> bool {
        const int key = key0 + 8 * hh;
        const int d = key - (q0 + 8 * c + 2 * quad + e) - shift;  // |d| < 2^31: Sq + Sk < 2^30
        bool m = key >= Sk;
        if (right >= 0) m = m || d > right;
        if (left >= 0) m = m || d < -left;
        return m;
      };
      if constexpr (C::kSoftcap) {
        // t = tanh(scale s / cap); P = exp2(cap log2(e) t - lse); the softcap's
        // derivative multiplies dS: dS^T = P^T (dP^T - D) (1 - t^2). Both
        // accumulators first (t is needed with dP; no registers to keep it).
        const float pre = args.softcap_pre;
        wgmma_wait_group<0>();
        reg_fence_array(s_acc);
        reg_fence_array(dp_acc);
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c) {
          const float2 l = *reinterpret_cast<const float2*>(lse_s + 8 * c + 2 * quad);
          const float2 dd = *reinterpret_cast<const float2*>(dsum_s + 8 * c + 2 * quad);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int i = 4 * c + 2 * hh + e;
              const float t = softcap_tanh(s_acc[i], pre);
              float x = fmaf(t, c2, -(e ? l.y : l.x));
              if (need_mask && masked(c, hh, e)) x = -INFINITY;
              const float pv = ex2_approx(x);
              s_acc[i] = pv;
              dp_acc[i] = pv * (dp_acc[i] - (e ? dd.y : dd.x)) * fmaf(-t, t, 1.0f);
            }
        }
      } else {
        // Head dim 64: the first two lse_log2 / D row pairs are read before
        // the S^T / dP^T waits (the waits' memory clobbers keep later loads
        // behind them). H200 A/B: d64 causal +1% from 2k, non-causal +-0.5%;
        // at d128 all eight pairs ahead measured 0-2% slower causal and +-0.3%
        // non-causal, though ncu had its first FFMA waiting on them (6% of the
        // stall samples), so d128 reads them after the waits.
        constexpr int kPre = C::kHeadDim == 64 ? 2 : 0;
        float2 lse_pre[kPre > 0 ? kPre : 1];
#pragma unroll
        for (int c = 0; c < kPre; ++c)
          lse_pre[c] = *reinterpret_cast<const float2*>(lse_s + 8 * c + 2 * quad);
        wgmma_wait_group<1>();
        reg_fence_array(s_acc);
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c) {
          float2 l;
          if constexpr (C::kRowsAhead)
            l = lse_r[c];
          else
            l = c < kPre ? lse_pre[c] : *reinterpret_cast<const float2*>(lse_s + 8 * c + 2 * quad);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            float x0 = fmaf(s_acc[4 * c + 2 * hh], c2, -l.x);
            float x1 = fmaf(s_acc[4 * c + 2 * hh + 1], c2, -l.y);
            if (need_mask) {
              if (masked(c, hh, 0)) x0 = -INFINITY;
              if (masked(c, hh, 1)) x1 = -INFINITY;
            }
            s_acc[4 * c + 2 * hh] = ex2_approx(x0);
            s_acc[4 * c + 2 * hh + 1] = ex2_approx(x1);
          }
        }
        float2 dsum_r[C::kRowsAhead ? kBM / 8 : 1];  // D rows, read under the MUFUs
        if constexpr (C::kRowsAhead) {
#pragma unroll
          for (int c = 0; c < kBM / 8; ++c)
            dsum_r[c] = *reinterpret_cast<const float2*>(dsum_s + 8 * c + 2 * quad);
        }
        // ---- dV += P^T dO now (C::kEarlyDV), so the tensor pipe has work
        // during the dS^T math; drained at the end of front (nothing may be
        // in flight across the loop's back edge).
        if constexpr (C::kEarlyDV) {
#pragma unroll
          for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
            for (int j = 0; j < 4; ++j)
              p_frag[kk][j] = pack2<T>(s_acc[8 * kk + 2 * j], s_acc[8 * kk + 2 * j + 1]);
          issue_dv(s);
        }
        // ---- dS^T = P^T * (dP^T - D[query]); D rows as the lse_log2 rows above.
        float2 dsum_pre[kPre > 0 ? kPre : 1];
#pragma unroll
        for (int c = 0; c < kPre; ++c)
          dsum_pre[c] = *reinterpret_cast<const float2*>(dsum_s + 8 * c + 2 * quad);
        wgmma_wait_group<C::kEarlyDV ? 1 : 0>();  // dP^T done (dV may still run)
        reg_fence_array(dp_acc);
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c) {
          float2 dd;
          if constexpr (C::kRowsAhead)
            dd = dsum_r[c];
          else
            dd = c < kPre ? dsum_pre[c] : *reinterpret_cast<const float2*>(dsum_s + 8 * c + 2 * quad);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            dp_acc[4 * c + 2 * hh] = s_acc[4 * c + 2 * hh] * (dp_acc[4 * c + 2 * hh] - dd.x);
            dp_acc[4 * c + 2 * hh + 1] =
                s_acc[4 * c + 2 * hh + 1] * (dp_acc[4 * c + 2 * hh + 1] - dd.y);
          }
        }
      }
      // Packed here: 16-bit P^T / dS^T (32 registers) cross the loop's back
      // edge, not the 64 fp32 accumulators (those spilled).
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if constexpr (!C::kEarlyDV)
            p_frag[kk][j] = pack2<T>(s_acc[8 * kk + 2 * j], s_acc[8 * kk + 2 * j + 1]);
          ds_frag[kk][j] = pack2<T>(dp_acc[8 * kk + 2 * j], dp_acc[8 * kk + 2 * j + 1]);
        }
      if constexpr (C::kEarlyDV) {
        wgmma_wait_group<0>();  // dV
        reg_fence_array(dv);
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
          for (int j = 0; j < 4; ++j) reg_fence(p_frag[kk][j]);  // read by dV until here
      }
    };

    mbar_wait(kv_full, 0);  // also before the epilogue reuses sK / sV when n_iters == 0
    if (n_iters > 0) front(0, false);
    for (int it = 0; it < n_iters; ++it) {
      const int m = iter_hm(it).y;
      const int s = it % kS;
      if constexpr (C::kLatePublish) {
        if (it > 0) {  // the piece staged at the end of turn it - 1
          fence_proxy_async_smem();
          mbar_arrive(&dq_full[cw]);
        }
      }

      // ---- dV += P^T dO, dK += dS^T Q (B operands MN-major: rows = queries)
      {
        uint32_t doa = do_base + s * C::kQBytes;
        uint32_t qa = q_base + s * C::kQBytes;
        reg_fence(doa);
        reg_fence(qa);
        const uint64_t do_desc = make_sw128_desc(doa, C::kPanelBytesM, 1024);
        const uint64_t q_desc = make_sw128_desc(qa, C::kPanelBytesM, 1024);
        wgmma_fence();
        if constexpr (!C::kEarlyDV) {
#pragma unroll
          for (int kk = 0; kk < kBM / 16; ++kk)
            wgmma_rs_tb<T, kD>(dv, p_frag[kk], desc_advance(do_desc, kk * 16 * 128), 1);
        }
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
          wgmma_rs_tb<T, kD>(dk, ds_frag[kk], desc_advance(q_desc, kk * 16 * 128), 1);
        wgmma_commit_group();
      }

      // ---- dS^T -> shared memory (buffer it & 1), rows = keys, swizzled
      {
        uint8_t* buf = sDS + (it & 1) * C::kDSBytes;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const uint32_t r = static_cast<uint32_t>(64 * cw + row0 + 8 * hh);
          uint8_t* row_base = buf + r * 128 + quad * 4;
#pragma unroll
          for (int c = 0; c < kBM / 8; ++c) {
            const uint32_t chunk = static_cast<uint32_t>(c % 8);
            *reinterpret_cast<uint32_t*>(row_base + (c / 8) * C::kPanelBytesN +
                                         ((chunk ^ (r & 7u)) << 4)) = ds_frag[c / 2][2 * (c % 2) + hh];
          }
        }
      }
      fence_proxy_async_smem();
      named_bar_sync(kBwdBarDS, 256);

      // ---- dQ piece = dS K: A = dS (MN-major: queries contiguous), B = K (MN-major: d contiguous)
      {
        constexpr int kAPanelStep = kD == 64 ? 1 : 0;  // d 64: consumer w takes query rows 64w..
        constexpr int kBPanelStep = kD == 64 ? 0 : 1;  // d 128: consumer w takes d columns 64w..
        uint32_t da = ds_base + (it & 1) * C::kDSBytes + cw * kAPanelStep * C::kPanelBytesN;
        uint32_t ka = k_base + cw * kBPanelStep * C::kPanelBytesN;
        reg_fence(da);
        reg_fence(ka);
        const uint64_t a_desc = make_sw128_desc(da, C::kPanelBytesN, 1024);
        const uint64_t b_desc = make_sw128_desc(ka, C::kPanelBytesN, 1024);
#pragma unroll
        for (int i = 0; i < 32; ++i) dq[i] = 0.f;  // see issue_kt
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk)
          wgmma_ss_tatb_m64n64k16<T>(dq, desc_advance(a_desc, kk * 16 * 128),
                                     desc_advance(b_desc, kk * 16 * 128), kk > 0);
        wgmma_commit_group();
      }
      // Pending: {dV + dK, dQ}. Once dV / dK are done, stage s (Q, dO, row
      // arrays) is free and p_frag / ds_frag are dead; the next S^T goes into
      // the idle s_acc while the dQ GEMM runs (C::kIssueAhead).
      wgmma_wait_group<1>();
      reg_fence_array(dv);
      reg_fence_array(dk);
      __syncwarp();  // every lane's reads of the stage's row arrays come before the release
      if (lane == 0) mbar_arrive(&empty[s]);
      // ---- dQ piece -> shared memory -> bulk reduce-add into dq_accum
      // This thread's dQ fragment into its staging buffer (16-byte stores).
      // Staged for this consumer's writer thread (producer warpgroup), which
      // adds it (deterministic: in turn); wait only until it has read this
      // buffer's last piece.
      static_assert(C::kDqBars, "head dims 64 / 128 hand dQ to writer threads in every mode");
      auto stage_dq = [&](bool publish) {
        // One lane spins, then the warp reconverges: a spin by every thread
        // here (end of the loop body) also cost the uniform datapath.
        if (lane == 0) mbar_wait(&dq_empty[cw], (it & 1) ^ 1);
        __syncwarp();
        bwd_store_dq_piece(sDQ_mine, dq, wthr);
        if (publish) {  // else at the top of the next turn (C::kLatePublish)
          fence_proxy_async_smem();
          mbar_arrive(&dq_full[cw]);
        }
      };
      // One branch per path, each ending with no wgmma in flight (ptxas does
      // not correlate two tests of the same condition: S^T looked in flight at
      // the loop exit, and it serialised every wgmma, C7515).
      if (it + 1 < n_iters) {
        if constexpr (C::kIssueAhead) {
          const int sn = (it + 1) % kS;
          mbar_wait(&full[sn], ((it + 1) / kS) & 1);
          if constexpr (C::kRowsAhead) load_lse_rows(sn);
          issue_kt(s_acc, k_base, q_base + sn * C::kQBytes);
          wgmma_wait_group<1>();  // the dQ GEMM (issued before it) is done
        } else {
          wgmma_wait_group<0>();
        }
        reg_fence_array(dq);
        stage_dq(/*publish*/ !C::kLatePublish);
        front(it + 1, C::kIssueAhead);
      } else {
        wgmma_wait_group<0>();
        reg_fence_array(dq);
        stage_dq(/*publish*/ true);
      }
    }
    // ------------------------------------------------------------- epilogue
    // Every wgmma of both consumers (dQ reads all of sK) is complete: sK / sV
    // become the staging buffers of dK / dV (this consumer's 64 rows).
    named_bar_sync(kBwdBarEpi, 256);
    {
      const float sc = args.softmax_scale;
      const uint32_t r = static_cast<uint32_t>(64 * cw + row0);
      bwd_stage_dkdv<T, C::kPanels>(sK, sV, dk, dv, r, quad, C::kPanelBytesN, sc);
    }
    fence_proxy_async_smem();
    named_bar_sync(kBwdBarWG0 + cw, 128);
    if (wthr == 0) {
      const int key_start = n_block * kBN + 64 * cw;
      if (key_start < sqi.sk_rows) {  // keys in [sk, sk_rows) get their zero gradients
        bwd_store_dkdv(args, sqi, sK + 64 * cw * 128, sV + 64 * cw * 128, C::kPanelBytesN, 0,
                       C::kPanels, key_start, h_kv, b, C::kPanels);
      }
      bulk_wait_all();  // dQ reduce-adds and dK / dV stores complete
    }

  }
}

// ---------------------------------------------------------------------------
// Preprocess: 64 rows of one (b, h) per CTA of 256 threads.
// ---------------------------------------------------------------------------
template <typename T, int kD>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const T* x = reinterpret_cast<const T*>(&a);
  const T* y = reinterpret_cast<const T*>(&b);
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) s = fmaf(static_cast<float>(x[e]), static_cast<float>(y[e]), s);
  return s;
}

// One CTA per 64 padded rows of (b, h): rows [row0, row0 + 64) of the
// sequence's round_up(Sq, 128) workspace rows (varlen: CTAs past them exit).
// Deterministic: dq_sem_region is the workspace's dq_sem region (word 0 the
// CTA ticket counter, the semaphores from word 4), zeroed here; else unused
// (a separate parameter: a larger BwdPrepArgs changes the plain kernel's code).
template <typename T, int kD, bool kDeterministic>
__global__ void __launch_bounds__(256)
    bwd_preprocess_kernel(const BwdPrepArgs a, int* dq_sem_region) {
  // Programmatic dependent launch: once every CTA of this grid has started,
  // the main kernel's CTAs may be scheduled; they wait (griddepcontrol.wait)
  // for this grid's completion before touching anything, so its launch and
  // prologue overlap this grid's tail.
  cudaTriggerProgrammaticLaunchCompletion();
  constexpr int kRows = 64;
  constexpr int kTPR = kD / 8;  // threads per row, 16 bytes each
  static_assert(32 % kTPR == 0, "a row's threads sit in one warp");
  constexpr int kRowsPerPass = 256 / kTPR;
  const int h = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int row0 = static_cast<int>(blockIdx.x) * kRows;
  const int2 sq = a.rs.seq(b);  // (first packed row, length)
  if constexpr (kDeterministic) {  // the CTA ticket counter, before any early return
    // (this CTA returns at once when sequence 0 is empty under varlen)
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0)
      dq_sem_region[0] = 0;
  }
  if (row0 >= (sq.y + 127) / 128 * 128) return;
  const int64_t base = a.rs.base(b, h, sq.x);
  const int part = threadIdx.x % kTPR;
  const bool part_in = part * 8 < a.headdim;  // head dims below the kernel's
  for (int r = threadIdx.x / kTPR; r < kRows; r += kRowsPerPass) {
    const int i = row0 + r;
    const int64_t row = static_cast<int64_t>(sq.x) + i;  // packed row (varlen) or position
    float acc = 0.f;
    if (i < sq.y && part_in) {
      const uint4 o = *reinterpret_cast<const uint4*>(
          static_cast<const T*>(a.out) + b * a.o_batch_stride + row * a.o_row_stride +
          h * a.o_head_stride + part * 8);
      const uint4 d = *reinterpret_cast<const uint4*>(
          static_cast<const T*>(a.dout) + b * a.do_batch_stride + row * a.do_row_stride +
          h * a.do_head_stride + part * 8);
      acc = dot8<T, kD>(o, d);
    }
#pragma unroll
    for (int off = kTPR / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (part == 0) {
      const int64_t w = base + i;
      a.dsum[w] = acc;
      const float l =
          i < sq.y ? a.lse[b * a.lse_batch_stride + h * a.lse_head_stride + row] : -INFINITY;
      a.lse_log2[w] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
    }
  }
  // dq_accum: zeros, except (deterministic, head dims 64 / 128) where the
  // main kernel's first adder of the query block stores its piece. The tile
  // sizes are the main kernel's (BwdConfig: kBlockM = 8192 / d, kBlockN = 128).
  bool zero = true;
  if constexpr (kDeterministic && kD <= 128) {
    using Cfg = BwdConfig<kD, T, false>;
    static_assert(Cfg::kBlockM == 8192 / kD && Cfg::kBlockN == 128 && Cfg::kBlockM % kRows == 0,
                  "the preprocess's chunks and the main kernel's query blocks");
    const int sk = seq_coords(a.rs.cu_seqlens_q, a.cu_seqlens_k, a.seqused_k, a.rs.seqlen_q,
                              a.seqlen_k, b).sk;
    zero = !bwd_has_adder<Cfg::kBlockM, Cfg::kBlockN>(row0 / Cfg::kBlockM, sq.y, sk,
                                                      a.window_left, a.window_right);
  }
  if (zero) {
    float4* z = reinterpret_cast<float4*>(a.dq_accum + (base + row0) * kD);
    for (int e = threadIdx.x; e < kRows * kD / 4; e += 256) z[e] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if constexpr (kDeterministic) {  // the semaphores of these rows' pieces
    if (threadIdx.x < 2) dq_sem_region[4 + (base + row0) / 32 + threadIdx.x] = 0;
  } else {
    (void)dq_sem_region;
  }
}

// ---------------------------------------------------------------------------
// Postprocess: kRows query rows of one (b, h) per CTA: a query block's dq_accum
// chunk (d 64: 128 rows, d 128: 64), or half of one (d 256: 32 of 64 rows).
// ---------------------------------------------------------------------------
template <int kD>
__host__ __device__ constexpr int bwd_post_rows() {
  return kD == 256 ? 32 : 8192 / kD;
}

template <typename T, int kD>
__global__ void __launch_bounds__(256) bwd_postprocess_kernel(const BwdPostArgs a) {
  cudaGridDependencySynchronize();  // the main kernel's dq_accum (programmatic launch)
  constexpr int kRows = bwd_post_rows<kD>();
  constexpr int kChunkRows = kD == 256 ? 64 : kRows;  // the main kernel's kBlockM
  constexpr int kParts = kChunkRows / kRows;
  constexpr int kLd = kD + 4;  // padded row (floats); 16-byte aligned rows
  static_assert(kRows * kD == 8192, "8192 floats per CTA");
  __shared__ __align__(16) float tile[kRows * kLd];
  const int m = static_cast<int>(blockIdx.x) / kParts;    // query block (chunk)
  const int part = static_cast<int>(blockIdx.x) % kParts;  // d 256: which 32 rows
  const int h = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int2 sq = a.rs.seq(b);
  const int first_row = m * kChunkRows + part * kRows;
  if (first_row >= sq.y) return;  // varlen: past this sequence
  const float* chunk =
      a.dq_accum + (a.rs.base(b, h, sq.x) + static_cast<int64_t>(m) * kChunkRows) * kD;
  for (int e = threadIdx.x; e < 8192; e += 256) {
    // Layout: dq_piece_offset (d 256: dQ^T pieces); the mapping is host-tested
    // (tests/test_fragments.cpp).
    const DqPieceFloat f = dq_post_source(kD, e, part);
    const RowCol rc = dq_post_dest(kD, f.piece, f.off, part, kRows);
    tile[rc.row * kLd + rc.col] = chunk[f.piece * 4096 + f.off];
  }
  __syncthreads();
  const float sc = a.softmax_scale;
  const int groups = a.headdim / 8;  // 16-byte groups of a real row
  for (int e = threadIdx.x; e < kRows * (kD / 8); e += 256) {
    const int row = e / (kD / 8), cg = e % (kD / 8);
    const int i = first_row + row;
    if (i >= sq.y || cg >= groups) continue;
    const float4 lo = *reinterpret_cast<const float4*>(&tile[row * kLd + cg * 8]);
    const float4 hi = *reinterpret_cast<const float4*>(&tile[row * kLd + cg * 8 + 4]);
    uint4 v;
    v.x = pack2<T>(lo.x * sc, lo.y * sc);
    v.y = pack2<T>(lo.z * sc, lo.w * sc);
    v.z = pack2<T>(hi.x * sc, hi.y * sc);
    v.w = pack2<T>(hi.z * sc, hi.w * sc);
    const int64_t grow = static_cast<int64_t>(sq.x) + i;
    *reinterpret_cast<uint4*>(static_cast<T*>(a.dq) + b * a.dq_batch_stride +
                              grow * a.dq_row_stride + h * a.dq_head_stride + cg * 8) = v;
  }
}

}  // namespace sm90
}  // namespace flash4
