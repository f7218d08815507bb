// Hopper (sm_90a) attention forward: TMA + wgmma + warp specialisation.
//
// CTA = 1 + kConsumers warpgroups (384 or 512 threads), looping over output
// tiles (64 * kConsumers query rows of one (batch, head)): round r takes
// tile r*gridDim.x + blockIdx.x (CTA order reversed on odd rounds).
// The host launches either one CTA per tile or a persistent grid of one CTA
// per SM; the code is the same.
//   WG0      producer: setmaxnreg.dec; one thread issues every TMA load:
//            per tile Q (once), then K and V blocks through a ring of
//            kStages stages that runs on across tiles.
//   WG1..    consumers: setmaxnreg.inc; consumer c owns rows [64c, 64c+64)
//            of the tile. Per K/V block:
//              S = Q K^T          SS wgmma (Q, K in 128B-swizzled smem), or
//                                 RS with Q in registers (kQInRegs, head dim
//                                 128: loaded once per tile by ldmatrix, Q
//                                 released at once; the wgmma reads only K)
//              online softmax     registers, exp2 with the scale folded in
//              O += P V           RS wgmma (P from registers, V MN-major)
//            then O / l goes to a staging buffer in smem (stmatrix, swizzled
//            as TMA expects) and out through a TMA store, which clips the row
//            tail; the store drains while the next tile runs. LSE is stored
//            directly. What the epilogue does not need O for (LSE, 1/l, the
//            wait for the previous store, the staging barrier) runs while the
//            tile's last P.V is in flight.
//
// Tiles: kBlockM = 64 * kConsumers query rows; kBlockN = 128 keys per K/V
// block (head dims 64, 128) or 80 (head dim 256: S 64x80 and O 64x256 take
// 40 + 128 accumulator registers of the 240, and Q (64 KB) + 2 K/V stages
// (160 KB) fill shared memory, so O is staged over the V ring, see below).
//
// Pipelines (mbarriers, explicit phase parity):
//   q_full  count 1 + tx bytes; q_empty count 4*kConsumers (every consumer
//           warp, after its last Q K^T of the tile). Tile j with work uses
//           parity j & 1.
//   O over Q (kAliasO, head dim 256): consumer c stages its O in its own 64
//           rows of the Q buffer (only its own Q K^T reads them, and the
//           wgmma.wait_group before the epilogue has retired those reads).
//           q_empty is then released only after the tile's O store has read
//           the buffer (cp.async.bulk.wait_group.read), and every tile that
//           the consumers visit (m0 < sq) takes a Q turn: a tile without work
//           gets a plain q_full arrive from the producer instead of a load.
//           So no Q load is ever in flight while O is staged. (Dev
//           configurations only: head dim 128 with kBlockN > 160.)
//   O over V (kOverV, head dim 256): the tile's O (64 KB, Q's layout) is
//           staged over the V ring (2 x 40 KB), so Q is released after the
//           last Q K^T as usual and the next tile's Q and first K load while
//           this tile's epilogue runs. The consumers meet at a named barrier
//           once every P.V of the tile has retired (the V ring is then idle:
//           each consumer's O spans both stages), and after the store has
//           read the buffer each consumer arrives on o_empty (count
//           kConsumers). The producer waits for that phase (tile j - 1's)
//           before the first V load of tile j, and at a tile without work
//           (whose zero O is staged too), so phases are waited in order and
//           no V load is in flight while O is staged. Head dims 136..192:
//           the V ring's tail panels (never loaded) then hold O values; they
//           only feed O's tail columns, which are never stored.
//   k/v_full  count 1 + tx bytes; k/v_empty count 4*kConsumers (after
//           wgmma.wait).
//   Global K/V iteration g uses stage g % kStages, parity (g / kStages) & 1.
//   Producers wait on `empty` with the opposite parity (a fresh barrier
//   counts as having completed the phase before phase 0).
//
// Options (template parameters of FwdConfig):
//   kOverlap   issue S(j) = Q K_j^T before O += P(j-1) V(j-1) and run the
//              softmax of block j while that P.V is in flight (FA3).
//              The O rescale owed by block j-1 is applied between issuing
//              S(j) and P(j-1) V(j-1), so it overlaps the Q K^T wgmma.
//   kPingPong  the consumer warpgroups take turns issuing their wgmmas
//              (named barriers), so one's softmax overlaps another's MMAs.
//              (Shipped on for head dims 64 and 128, off for 256, as FA3.)
//   kExp2EmuEvery  FA4's software exp2 for a fraction of the exponentials,
//              to offload the MUFU pipe. Measured slower here (d64 and
//              d128, 1/4 and 1/8 emulated): off in the shipped configs.
//   kConsumers 2 or 3 (head dim 64) consumer warpgroups.
//   kSoftcap   scores through tanh (see "Softcap" below).
//   kRescaleThreshold  when O (and l) are rescaled. Decided per warp
//              (__any_sync), so the skip is warp-uniform.
//              0: only when some row max of the warp grew; otherwise the
//                 rescale (a multiply by exactly 1) is skipped: bit-exact.
//              > 0 (FA4): the reference max moves only when the new max
//                 exceeds it by more than this many log2 units; P may then
//                 reach 2^threshold. Exact in real arithmetic (O and l share
//                 the reference max) but the largest P is no longer exactly
//                 1 before rounding, which adds bf16 rounding error
//                 (error ratio up to ~1.8 at 8, within the 2x rule).
//              Shipped: 8 (+0-16% on the H200; sm90/fwd_launch.cuh, docs/perf.md); the
//              exp2-emulation kernels keep 0.
//
// Sequences: batched (every batch entry has Sq queries, Sk keys) or varlen
// (cu_seqlens_q/k: sequence b is rows [cu[b], cu[b+1]) of packed tensors),
// optionally with seqused_k (sequence b uses its first seqused_k[b] keys).
// Plain tensor maps (batched, no seqused_k) are 4-D, {D, S, H, B}. "Ragged"
// maps (varlen tensors; K/V with seqused_k) are 5-D, {D, L, H, B, E} (see
// fwd_sm90.cu): a load or store of rows [pos, pos + box) of a sequence
// (start, len) uses row coordinate L - len + pos and 5th coordinate
// start + len; the map's base is L rows before the tensor, so the row
// addressed is start + pos, and pos >= len is out of bounds: zero-filled on
// loads, dropped on stores. (5-D maps for the plain case too measured a few
// percent slower on H100, so the plain path keeps 4-D maps.)
//
// Masking: key j is visible to query i of a sequence with (sq, sk) iff
// j < sk, j <= i + sk - sq + right (right >= 0; causal: right = 0) and
// j >= i + sk - sq - left (left >= 0). Only K blocks that hold a visible key
// for some row of the tile are visited; only blocks that cross a window
// edge or the sk tail are masked. Masked scores are -inf; rows with no
// visible key get O = 0 and LSE = -inf.
//
// Softcap (kSoftcap; args.softcap_pre = 2*log2(e)*scale/cap > 0): the score
// becomes t = tanh(scale*s/cap) (before masking) and the exp2 multiplier
// scale_log2 is cap*log2(e), so the softmax sees cap*t. tanh costs one
// MUFU.EX2 plus ~10 FMA-pipe operations per score. A template flag, not a
// runtime switch: the tanh code inside the main loop of the plain kernels
// measured 4-9% slower on H100 (same executed instructions; the loop body
// grew from 674 to 1782 instructions).
#pragma once
#include <cuda.h>
#include <cstdint>
#include <type_traits>
#include "sm90/fast_div.hpp"
#include "sm90/fragments.hpp"
#include "sm90/tile_order.hpp"
#include "sm90/ptx.cuh"
#include "sm90/panels.cuh"
#include "sm90/sequence.cuh"

namespace flash4 {
namespace sm90 {

// Kernel parameters, passed by value as a __grid_constant__.
struct FwdKernelArgs {
  CUtensorMap tm_q;  // dims {D, Lq, Hq, Bq, Eq}, box {64, kBlockM, 1, 1, 1}
  CUtensorMap tm_k;  // dims {D, Lk, Hkv, Bk, Ek}, box {64, kBlockN, 1, 1, 1}
  CUtensorMap tm_v;  // same as K
  CUtensorMap tm_o;  // as Q, box {64, 64, 1, 1, 1} (one consumer's rows)
  float* lse;        // nullptr: not written
  int64_t lse_batch_stride;  // varlen: 0 (row = cu_seqlens_q[b] + i)
  int64_t lse_head_stride;
  const int* cu_seqlens_q;  // nullptr: batched (then cu_seqlens_k is nullptr too)
  const int* cu_seqlens_k;
  const int* seqused_k;     // nullptr: unused
  int seqlen_q;  // batched Sq / varlen max_seqlen_q (the maps' Lq)
  int seqlen_k;  // batched Sk / varlen max_seqlen_k (the maps' Lk)
  int window_left;   // -1: unbounded
  int window_right;  // -1: unbounded (non-causal kernels only; causal kernels use 0)
  float softcap_pre;  // kSoftcap kernels: 2*log2(e)*softmax_scale/softcap (> 0)
  int q_ragged;  // tm_q / tm_o are 5-D ragged maps (varlen)
  int k_ragged;  // tm_k / tm_v are 5-D ragged maps (varlen or seqused_k)
  int heads_q;
  int group;           // Hq / Hkv
  int num_m_blocks;    // ceil(Sq / kBlockM)
  int num_hb;          // Hq * B
  int heads_per_section;  // causal tile order: (b,h) pairs per L2 section
  int num_tiles;       // num_m_blocks * num_hb (< 2^31, checked on the host)
  // The tile order's divisors as multiply-high divisions (sm90/fast_div.hpp):
  // num_m_blocks, heads_q, num_m_blocks * heads_per_section, heads_per_section.
  FastDiv div_m_blocks, div_heads_q, div_section, div_heads_per_section;
  float scale_log2;    // exp2 multiplier, > 0: softmax_scale*log2(e), or softcap*log2(e)
  int data_panels;     // ceil(D / 64): the 64-column panels with data (sm90/panels.cuh)
};

template <int kHeadDim_, typename Elem_, bool kCausal_, int kStages_ = 2, bool kOverlap_ = true,
          bool kPingPong_ = true, int kRescaleThreshold_ = 0, int kExp2EmuEvery_ = 0,
          int kConsumers_ = 2, bool kSoftcap_ = false, int kBlockN_ = 0, bool kQInRegs_ = false>
struct FwdConfig {
  using Elem = Elem_;
  static constexpr bool kSoftcap = kSoftcap_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kCausal = kCausal_;
  static constexpr int kStages = kStages_;
  static constexpr bool kOverlap = kOverlap_;
  static constexpr bool kPingPong = kPingPong_;
  static constexpr int kRescaleThreshold = kRescaleThreshold_;
  // A shorter consumer path (docs/notes/fa3-vs-flash4-fwd.md), three parts:
  //   kVoteFirst: the rescale vote on each thread's partial row max (the max
  //     shuffles only when the reference moves);
  //   kRowSumsLate: row sums kept per thread, reduced over the quad in the
  //     epilogue;
  //   kVWaitLate: V(it-1) waited after the Q K^T issue.
  // One decision for the three (H200): together +2-4% at d64 / d128; at d256
  // no part, alone or together, moved the time beyond the noise, so d256
  // keeps the previous path.
  static constexpr bool kVoteFirst = kHeadDim_ != 256;
  static constexpr bool kRowSumsLate = kVoteFirst;
  static constexpr bool kVWaitLate = kVoteFirst;
  // > 0: of each thread's 8-column groups c of S, those with
  // c % kExp2EmuEvery == kExp2EmuEvery - 1 use the polynomial exp2
  // (FMA pipe) instead of MUFU.EX2: 1/kExp2EmuEvery of the exponentials.
  static constexpr int kExp2EmuEvery = kExp2EmuEvery_;

  // Consumer warpgroups (64 query rows each): 2 (any head dim) or 3 (head
  // dim 64: O + S + P = 128 registers fit the 160 that 3 consumers get).
  static constexpr int kConsumers = kConsumers_;
  static constexpr int kBlockM = 64 * kConsumers;
  // Head dim 256: 80-key blocks (S 64x80 = 40 and O 64x256 = 128 accumulators
  // per thread fit the 240 registers; Q + 2 K/V stages fit shared memory).
  // kBlockN_ > 0 overrides (head dim 128: 160 or 176, dev measurements only).
  static constexpr int kBlockN = kBlockN_ > 0 ? kBlockN_ : (kHeadDim_ == 256 ? 80 : 128);
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "K/V block: multiple of 16, at most 256");
  static constexpr int kNumThreads = 128 * (kConsumers + 1);
  // Register split (multiple of 8, total <= 64K): 24/240 for 2 consumers, 32/160 for 3.
  static constexpr int kProducerRegs = kConsumers == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kConsumers == 2 ? 240 : 160;
  static_assert(kConsumers == 2 || (kConsumers == 3 && kHeadDim_ == 64),
                "3 consumer warpgroups only for head dim 64 (register budget)");
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536,
                "register budget");

  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "instantiated head dims: 64, 128, 256");
  static_assert(kStages >= 2, "at least two K/V stages");

  // A tile of R rows x kHeadDim is kPanels panels of R x 64 elements (128 B rows).
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr int kPanelBytesM = kBlockM * 128;
  static constexpr int kPanelBytesN = kBlockN * 128;
  static constexpr int kQBytes = kPanels * kPanelBytesM;
  static constexpr int kKVBytes = kPanels * kPanelBytesN;

  // Head dim 256: O staged over the V ring (see "O over V" in the header
  // comment), so the next tile's Q loads during the epilogue.
  static constexpr bool kOverV = kHeadDim_ == 256;
  // barriers: q_full, q_empty, k_full[S], k_empty[S], v_full[S], v_empty[S],
  // o_empty (kOverV)
  static constexpr int kNumBars = 2 + 4 * kStages + (kOverV ? 1 : 0);
  // After the tiles: the barriers, one scratch word per thread (the scheduling
  // pin in the main loop; per thread, so its stores never share a word:
  // racecheck clean), 1024 bytes of alignment slack.
  static constexpr int kTailBytes = 8 * kNumBars + 4 * kNumThreads + 1024;
  // O staging aliased with Q where a separate O buffer does not fit and O
  // does not go over V (head dim 128 with kBlockN > 160, dev configurations
  // only). Consumer c stages its O over
  // its own 64 Q rows, which only its own Q K^T reads; the Q of the next tile
  // is loaded only after the O store has read the buffer (see "O over Q" in
  // the header comment).
  static constexpr bool kAliasO =
      !kOverV && 2 * kQBytes + 2 * kStages * kKVBytes + kTailBytes > 227 * 1024;
  static_assert(!kOverV || kStages * kKVBytes >= kQBytes, "O over V: O fits the V ring");
  // Q K^T with Q from registers (RS wgmma; fragments loaded once per tile by
  // ldmatrix, Q released right after): the Q K^T wgmmas read only K from
  // shared memory.
  static constexpr bool kQInRegs = kQInRegs_;
  static_assert(!(kQInRegs && kAliasO), "Q in registers releases Q early: not with O over Q");

  // Shared-memory layout (offsets from a 1024-aligned base).
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + (kAliasO || kOverV ? 1 : 2) * kQBytes;
  static constexpr int kOffV = kOffK + kStages * kKVBytes;
  // O staging, same shape as Q: its own buffer after Q, over Q, or over V.
  static constexpr int kOffO = kAliasO ? kOffQ : (kOverV ? kOffV : kOffQ + kQBytes);
  static constexpr int kOffBar = kOffV + kStages * kKVBytes;
  static constexpr int kOffScratch = kOffBar + 8 * kNumBars;
  static constexpr int kSmemBytes = kOffBar + kTailBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
};

// Named barrier ids (0 is __syncthreads).
enum FwdNamedBarrier : int {
  kBarSched0 = 1,  // issue token of consumer c: kBarSched0 + c (c < 3)
  kBarEpi0 = 4,    // per-consumer epilogue sync: kBarEpi0 + c (c < 3)
  kBarVIdle = 7,   // O over V: every consumer's P.V of the tile retired
};

__device__ __forceinline__ int ceil_div_i(int a, int b) { return (a + b - 1) / b; }

struct TileCoord {
  int m_block, h, b;
};

// Tile order (sm90/tile_order.hpp). Non-causal: m-blocks fastest, so CTAs
// running together share one head's K/V in L2. Causal: (b,h) pairs in
// sections of heads_per_section (sized on the host), heaviest m-blocks first.
// (Divisions by the launch's fixed divisors are multiply-high divisions: the
// coordinates are computed between tiles, on the consumers' critical path.)
template <bool kCausal>
__device__ __forceinline__ TileCoord tile_coord(const FwdKernelArgs& a, int t) {
  int m, hb;
  if constexpr (!kCausal) {
    hb = a.div_m_blocks.div(t);
    m = a.div_m_blocks.rem(t, hb);
  } else {
    causal_tile(t, a.num_m_blocks, a.num_hb, a.heads_per_section, a.div_section,
                a.div_heads_per_section, m, hb);
  }
  TileCoord c;
  c.m_block = m;
  c.b = a.div_heads_q.div(hb);
  c.h = a.div_heads_q.rem(hb, c.b);
  return c;
}

// One sequence's lengths and TMA coordinates (see "Sequences" above).
using SeqInfo = SeqCoords;
__device__ __forceinline__ SeqInfo seq_info(const FwdKernelArgs& a, int b) {
  return seq_coords(a.cu_seqlens_q, a.cu_seqlens_k, a.seqused_k, a.seqlen_q, a.seqlen_k, b);
}

// K blocks [n_lo, n_hi) that tile rows [m0, m0 + kBM) visit, and the blocks
// that need masking: n >= mask_hi (sk tail or right edge for the first row)
// or n < mask_lo (left edge for the last row).
struct BlockRange {
  int n_lo, n_hi, mask_lo, mask_hi;
};
template <bool kCausal, int kBM, int kBN>
__device__ __forceinline__ BlockRange block_range(const FwdKernelArgs& a, int m0, int sq, int sk) {
  const int off = sk - sq;
  const int right = kCausal ? 0 : a.window_right;
  const int left = a.window_left;
  int end = sk, begin = 0, hi_first = sk, lo_last = 0;
  if (right >= 0) {
    end = min(end, m0 + kBM + off + right);  // last row sees keys <= m0+kBM-1+off+right
    hi_first = min(hi_first, m0 + off + right + 1);
  }
  if (left >= 0) {
    begin = max(0, m0 + off - left);
    lo_last = m0 + kBM - 1 + off - left;
  }
  BlockRange r;
  r.n_lo = begin / kBN;
  r.n_hi = end > begin ? ceil_div_i(end, kBN) : r.n_lo;
  r.mask_hi = max(hi_first, 0) / kBN;
  r.mask_lo = lo_last > 0 ? ceil_div_i(lo_last, kBN) : 0;
  return r;
}

template <class C>
__global__ void __launch_bounds__(C::kNumThreads, 1)
    fwd_kernel(const __grid_constant__ FwdKernelArgs args) {
  using T = typename C::Elem;
  constexpr int kD = C::kHeadDim;
  constexpr int kBM = C::kBlockM;
  constexpr int kBN = C::kBlockN;
  constexpr int kS = C::kStages;
  constexpr int kNS = kBN / 2;  // S accumulators per thread (64 x kBN per warpgroup)
  constexpr int kNO = kD / 2;   // O accumulators per thread

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_aligned_1024(smem_raw);
  uint8_t* sQ = smem + C::kOffQ;
  uint8_t* sO = smem + C::kOffO;
  uint8_t* sK = smem + C::kOffK;
  uint8_t* sV = smem + C::kOffV;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBar);
  uint64_t* q_full = bars;
  uint64_t* q_empty = bars + 1;
  uint64_t* k_full = bars + 2;
  uint64_t* k_empty = bars + 2 + kS;
  uint64_t* v_full = bars + 2 + 2 * kS;
  uint64_t* v_empty = bars + 2 + 3 * kS;
  uint64_t* o_empty = bars + 2 + 4 * kS;  // kOverV only

  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int lane = tid % 32;
  // Round r of the persistent loop: snake order (sm90/tile_order.hpp).
  auto tile_index = [&](int round) {
    return snake_tile_index(round, static_cast<int>(gridDim.x), static_cast<int>(blockIdx.x));
  };
  if (tid == 0) {
    mbar_init(q_full, 1);
    mbar_init(q_empty, 4 * C::kConsumers);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&k_empty[s], 4 * C::kConsumers);
      mbar_init(&v_empty[s], 4 * C::kConsumers);
    }
    if constexpr (C::kOverV) mbar_init(o_empty, C::kConsumers);
    mbar_init_fence();
  }
  // Panels with no data (head dims 136..192 on the 256 kernel): zero once,
  // never loaded or stored (sm90/panels.cuh). Compile-time all panels below 256.
  const int np = kD == 256 ? args.data_panels : C::kPanels;
  if constexpr (kD == 256) {
    zero_tail_panels<C::kPanels>(sQ, C::kQBytes, C::kAliasO || C::kOverV ? 1 : 2, C::kPanelBytesM,
                                 np);
    zero_tail_panels<C::kPanels>(sK, C::kKVBytes, 2 * kS, C::kPanelBytesN, np);  // K and V rings
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    setmaxnreg_dec<C::kProducerRegs>();
    if (tid == 0) {
      prefetch_tmap(&args.tm_q);
      prefetch_tmap(&args.tm_k);
      prefetch_tmap(&args.tm_v);
      int g = 0;       // global K/V iteration
      int q_iter = 0;  // tiles with work so far
      int o_iter = 0;  // kOverV: tiles the consumers visit (each stages an O) so far
      // kOverV: tile o_iter - 1's O store has read the V ring.
      auto wait_o_empty = [&]() {
        if constexpr (C::kOverV) {
          if (o_iter > 0) mbar_wait(o_empty, (o_iter - 1) & 1);
        }
      };
      for (int round = 0; round * static_cast<int>(gridDim.x) < args.num_tiles; ++round) {
        const int t = tile_index(round);
        if (t >= args.num_tiles) continue;
        const TileCoord tc = tile_coord<C::kCausal>(args, t);
        const int m0 = tc.m_block * kBM;
        const SeqInfo si = seq_info(args, tc.b);
        if (m0 >= si.sq) continue;  // varlen: past this sequence (the consumers skip it too)
        const BlockRange br = block_range<C::kCausal, kBM, kBN>(args, m0, si.sq, si.sk);
        const int n_blocks = br.n_hi - br.n_lo;
        if (n_blocks <= 0) {
          if constexpr (C::kAliasO) {
            // O over Q: the consumers still stage this tile's (zero) O in the
            // Q buffer, so the tile takes its Q turn too, without a load.
            mbar_wait(q_empty, (q_iter & 1) ^ 1);
            mbar_arrive(q_full);
            ++q_iter;
          }
          wait_o_empty();  // O over V: every visited tile's phase is waited, in order
          ++o_iter;
          continue;
        }
        const int h_kv = tc.h / args.group;
        mbar_wait(q_empty, (q_iter & 1) ^ 1);
        mbar_arrive_expect_tx(q_full, np * C::kPanelBytesM);
#pragma unroll
        for (int p = 0; p < C::kPanels; ++p) {
          if (p >= np) continue;
          if (args.q_ragged)
            tma_load_5d(sQ + p * C::kPanelBytesM, &args.tm_q, q_full, p * 64, si.q_row + m0,
                        tc.h, si.mb, si.q_ext);
          else
            tma_load_4d(sQ + p * C::kPanelBytesM, &args.tm_q, q_full, p * 64, m0, tc.h, tc.b);
        }
        ++q_iter;
        for (int it = 0; it < n_blocks; ++it, ++g) {
          const int n = br.n_hi - 1 - it;
          const int s = g % kS;
          const uint32_t ph = (g / kS) & 1;
          mbar_wait(&k_empty[s], ph ^ 1);
          mbar_arrive_expect_tx(&k_full[s], np * C::kPanelBytesN);
#pragma unroll
          for (int p = 0; p < C::kPanels; ++p) {
            if (p >= np) continue;
            if (args.k_ragged)
              tma_load_5d(sK + s * C::kKVBytes + p * C::kPanelBytesN, &args.tm_k, &k_full[s],
                          p * 64, si.k_row + n * kBN, h_kv, si.mb, si.k_ext);
            else
              tma_load_4d(sK + s * C::kKVBytes + p * C::kPanelBytesN, &args.tm_k, &k_full[s],
                          p * 64, n * kBN, h_kv, tc.b);
          }
          if (it == 0) wait_o_empty();  // O over V: the previous tile's O is out of the ring
          mbar_wait(&v_empty[s], ph ^ 1);
          mbar_arrive_expect_tx(&v_full[s], np * C::kPanelBytesN);
#pragma unroll
          for (int p = 0; p < C::kPanels; ++p) {
            if (p >= np) continue;
            if (args.k_ragged)
              tma_load_5d(sV + s * C::kKVBytes + p * C::kPanelBytesN, &args.tm_v, &v_full[s],
                          p * 64, si.k_row + n * kBN, h_kv, si.mb, si.k_ext);
            else
              tma_load_4d(sV + s * C::kKVBytes + p * C::kPanelBytesN, &args.tm_v, &v_full[s],
                          p * 64, n * kBN, h_kv, tc.b);
          }
        }
        ++o_iter;
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  setmaxnreg_inc<C::kConsumerRegs>();
  const int cw = wg - 1;                  // consumer index 0..kConsumers-1
  const int wthr = tid - 128 * wg;        // thread within the warpgroup
  const int warp_in_wg = wthr / 32;
  const int quad = lane % 4;
  const int row_local0 = 16 * warp_in_wg + lane / 4;  // within this consumer's 64 rows (+8 for h=1)
  const int row_tile0 = cw * 64 + row_local0;          // within the kBlockM-row tile
  const float c_log2 = args.scale_log2;

  const uint32_t k_base = smem_u32(sK);
  const uint32_t v_base = smem_u32(sV);
  uint8_t* sO_mine = sO + cw * 64 * 128;
  const uint32_t scratch_u32 = smem_u32(smem + C::kOffScratch) + tid * 4;

  float o[kNO];
  float s_acc[kNS];
  uint32_t p_frag[kBN / 16][4];
  uint32_t q_frag[C::kQInRegs ? kD / 16 : 1][4];
  float m_ref[2];
  float l_row[2];  // row sums (kRowSumsLate: this thread's part, reduced over the quad in the epilogue)

  // Issue turns rotate 0 -> 1 -> ... -> kConsumers-1 -> 0: consumer c waits
  // on its token barrier (its 128 threads + the 128 of the passer) and passes
  // to the next. The last consumer pre-arrives so consumer 0 starts; every
  // consumer takes the same number of turns, and consumer 0 absorbs the
  // last consumer's final pass at the end.
  const int next_cw = cw + 1 == C::kConsumers ? 0 : cw + 1;
  auto sched_wait = [&]() {
    if constexpr (C::kPingPong) named_bar_sync(kBarSched0 + cw, 256);
  };
  auto sched_pass = [&]() {
    if constexpr (C::kPingPong) named_bar_arrive(kBarSched0 + next_cw, 256);
  };
  if constexpr (C::kPingPong) {
    if (cw == C::kConsumers - 1) named_bar_arrive(kBarSched0, 256);
  }

  // Descriptors are rebuilt from a fenced base address at every issue, so the
  // compiler cannot hoist 16+ loop-invariant 64-bit descriptors into registers.
  const uint32_t q_base = smem_u32(sQ) + cw * 64 * 128;
  auto issue_qk = [&](int stage) {
    uint32_t qa = q_base;
    uint32_t ka = k_base + stage * C::kKVBytes;
    reg_fence(qa);
    reg_fence(ka);
    const uint64_t q_desc = make_sw128_desc(qa, 16, 1024);
    const uint64_t k_desc = make_sw128_desc(ka, 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off_q = (kk / 4) * C::kPanelBytesM + (kk % 4) * 32;
      const uint32_t off_k = (kk / 4) * C::kPanelBytesN + (kk % 4) * 32;
      if constexpr (C::kQInRegs)
        wgmma_rs_kb<T, kBN>(s_acc, q_frag[kk], desc_advance(k_desc, off_k), kk > 0);
      else
        wgmma_ss<T, kBN>(s_acc, desc_advance(q_desc, off_q), desc_advance(k_desc, off_k), kk > 0);
    }
    wgmma_commit_group();
  };
  auto issue_pv_n = [&](int stage, auto steps) {
    constexpr int kSteps = decltype(steps)::value;
    uint32_t va = v_base + stage * C::kKVBytes;
    reg_fence(va);
    const uint64_t v_desc = make_sw128_desc(va, C::kPanelBytesN, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      if constexpr (kD == 256)
        wgmma_rs_m64n256k16_tb<T>(o, p_frag[kk], desc_advance(v_desc, kk * 16 * 128), 1);
      else
        wgmma_rs_tb<T, kD>(o, p_frag[kk], desc_advance(v_desc, kk * 16 * 128), 1);
    }
    wgmma_commit_group();
  };
  // The first processed block's P.V may skip its all-zero second half (see
  // first_steps below). Causal head dims 64 and 128 only: there the diagonal
  // splits a 128-key block at a consumer's 64-row edge; non-causal shapes with
  // a key tail and head dim 256 (80-key blocks) gain little and measured up to
  // 1.5-2.5% slower from the second issue sequence in the loop (docs/perf.md).
  constexpr bool kSkipFirstPV = C::kCausal && kD <= 128;
  auto issue_pv = [&](int stage, int k_steps) {
    constexpr int kHalf = (kBN / 16 + 1) / 2;
    if (kSkipFirstPV && k_steps <= kHalf) issue_pv_n(stage, std::integral_constant<int, kHalf>{});
    else issue_pv_n(stage, std::integral_constant<int, kBN / 16>{});
  };
  auto release = [&](uint64_t* bar) {
    if (lane == 0) mbar_arrive(bar);
  };
  // Q is released after the tile's last Q K^T; with O over Q (kAliasO) only
  // after the epilogue's O store has read the buffer (end of the tile loop).
  auto release_q_after_qk = [&]() {
    if constexpr (!C::kAliasO && !C::kQInRegs) release(q_empty);
  };
  // Q fragments (A layout) of this warp's 16 rows, by ldmatrix from the
  // 128B-swizzled Q panels (sm90/fragments.hpp).
  auto load_q_frags = [&]() {
#pragma unroll
    for (int kk = 0; kk < (C::kQInRegs ? kD / 16 : 0); ++kk)
      ldmatrix_x4(q_frag[kk], q_base + ldmatrix_a_offset(warp_in_wg, lane, kk, C::kPanelBytesM));
    __syncwarp();
    release(q_empty);
  };

  // Online softmax on s_acc (in place: scores -> unnormalised probabilities).
  // Returns whether O must be rescaled, and the per-row factors.
  auto softmax_step = [&](float (&scale)[2]) -> bool {
    float mx[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float v = m_ref[hh];
#pragma unroll
      for (int c = 0; c < kNS / 4; ++c)
        v = fmaxf(v, fmaxf(s_acc[4 * c + 2 * hh], s_acc[4 * c + 2 * hh + 1]));
      if constexpr (!C::kVoteFirst) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
      }
      mx[hh] = v;  // >= m_ref (kVoteFirst: this thread's part of the row max)
    }
    // kVoteFirst: the vote on the threads' partial maxima equals the vote on the row
    // maxima (a row's quad is inside the warp, and x -> (x - m) c is
    // monotone), so the max shuffles run only when the reference moves: the
    // path from S to the first exponential loses two dependent shuffles
    // (docs/notes/fa3-vs-flash4-fwd.md).
    bool mine;
    if constexpr (C::kRescaleThreshold > 0) {
      // (-inf) - (-inf) is NaN and compares false: a still-empty row never triggers.
      mine = (mx[0] - m_ref[0]) * c_log2 > static_cast<float>(C::kRescaleThreshold) ||
             (mx[1] - m_ref[1]) * c_log2 > static_cast<float>(C::kRescaleThreshold);
    } else {
      mine = mx[0] > m_ref[0] || mx[1] > m_ref[1];
    }
    const bool need = __any_sync(0xffffffffu, mine);
    scale[0] = scale[1] = 1.f;
    if (need) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        if constexpr (C::kVoteFirst) {
          mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
          mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
        }
        scale[hh] = (mx[hh] == -INFINITY) ? 1.f : ex2_approx((m_ref[hh] - mx[hh]) * c_log2);
        m_ref[hh] = mx[hh];
      }
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const float mc = (m_ref[hh] == -INFINITY) ? 0.f : m_ref[hh] * c_log2;
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < kNS / 4; ++c)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s_acc[4 * c + 2 * hh + e];
          const float arg = fmaf(x, c_log2, -mc);
          if constexpr (C::kExp2EmuEvery > 0) {
            x = (c % C::kExp2EmuEvery == C::kExp2EmuEvery - 1) ? ex2_poly3(arg) : ex2_approx(arg);
          } else {
            x = ex2_approx(arg);
          }
          sum += x;
        }
      // kRowSumsLate: this thread's part only, the quad reduces it once in the
      // epilogue (the scheduling pin after softmax_step keeps the
      // exponentials ahead of the P.V wait without these shuffles). Else the
      // row sum over the quad now: ptxas keeps warp-collective ops in order,
      // so the MUFU work stays ahead of the following wgmma.wait.
      if constexpr (!C::kRowSumsLate) {
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      }
      l_row[hh] = l_row[hh] * scale[hh] + sum;
    }
    return need;
  };
  auto rescale_o = [&](const float (&scale)[2]) {
#pragma unroll
    for (int i = 0; i < kNO; ++i) o[i] *= scale[(i >> 1) & 1];
  };
  auto convert_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        p_frag[kk][j] = pack2<T>(s_acc[acc_reg_for_a(kk, j, 0)], s_acc[acc_reg_for_a(kk, j, 1)]);
  };

  int g = 0;       // global K/V iteration (same sequence as the producer's)
  int q_iter = 0;  // tiles with work so far
  for (int round = 0; round * static_cast<int>(gridDim.x) < args.num_tiles; ++round) {
    const int t = tile_index(round);
    if (t >= args.num_tiles) continue;
    const TileCoord tc = tile_coord<C::kCausal>(args, t);
    const int m0 = tc.m_block * kBM;
    const SeqInfo si = seq_info(args, tc.b);
    if (m0 >= si.sq) continue;  // varlen: past this sequence (the producer skips it too)
    const BlockRange br = block_range<C::kCausal, kBM, kBN>(args, m0, si.sq, si.sk);
    const int n_blocks = max(br.n_hi - br.n_lo, 0);
    const int sk = si.sk;
    const int diag0 = m0 + row_tile0 + si.sk - si.sq;  // i + sk - sq of this thread's first row
    // 16-key steps of the first processed block (n_hi - 1) with a visible key for some row of
    // this consumer (its last row sees keys < row + 1 + sk - sq, and none past sk): the rest of
    // its P is zero, so their P.V steps are skipped. Warp-uniform through the reduction, which
    // keeps the issue branch on the uniform datapath.
    int first_steps = kBN / 16;
    if constexpr (kSkipFirstPV) {
      const int blk0 = (br.n_hi - 1) * kBN;
      int end = min(sk, m0 + 64 * cw + 64 + si.sk - si.sq) - blk0;
      end = max(0, min(end, kBN));
      first_steps = __reduce_max_sync(0xffffffffu, (end + 15) / 16);
    }

    // Scores of block n: softcap, then -inf outside the visible range (only
    // blocks that cross the sk tail or a window edge are masked).
    auto score_mod = [&](int n) {
      if constexpr (C::kSoftcap) {
        const float pre = args.softcap_pre;
#pragma unroll
        for (int i = 0; i < kNS; ++i) s_acc[i] = softcap_tanh(s_acc[i], pre);
      }
      if (n < br.mask_hi && n >= br.mask_lo) return;
      const int right = C::kCausal ? 0 : args.window_right;
      const int left = args.window_left;
      const int j0 = n * kBN + 2 * quad;  // key of element (c = 0, e = 0)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        // visible columns (relative to j0): [lo, hi)
        int hi = sk - j0;
        if (right >= 0) hi = min(hi, diag0 + 8 * hh + right + 1 - j0);
        const int lo = left >= 0 ? diag0 + 8 * hh - left - j0 : -kBN;
#pragma unroll
        for (int c = 0; c < kNS / 4; ++c)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (8 * c + e >= hi || 8 * c + e < lo) s_acc[4 * c + 2 * hh + e] = -INFINITY;
      }
    };

    // The epilogue's first part, which does not read O: LSE, 1/l, the wait for
    // the previous tile's O store and the staging barrier. With the overlapped
    // K/V loop it runs while the tile's last P.V is in flight (between its
    // issue and its wait), not after it.
    TileCoord te;
    SeqInfo se;
    int m0e;
    float inv[2];
    auto epilogue_prelude = [&]() {
      // Tile coordinates are recomputed here (from a fenced copy of t) rather
      // than kept live across the main loop: it frees registers there.
      int t_epi = t;
      asm volatile("" : "+r"(t_epi));
      te = tile_coord<C::kCausal>(args, t_epi);
      m0e = te.m_block * kBM;
      se = seq_info(args, te.b);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float l = l_row[hh];
        if constexpr (C::kRowSumsLate) {
          l += __shfl_xor_sync(0xffffffffu, l, 1);
          l += __shfl_xor_sync(0xffffffffu, l, 2);
        }
        inv[hh] = l > 0.f ? 1.f / l : 0.f;
        if (args.lse != nullptr && quad == 0) {
          const int row = m0e + row_tile0 + 8 * hh;
          if (row < se.sq) {
            const float lse =
                l > 0.f ? (m_ref[hh] * c_log2 + __log2f(l)) * 0.69314718055994531f : -INFINITY;
            args.lse[static_cast<int64_t>(te.b) * args.lse_batch_stride +
                     static_cast<int64_t>(te.h) * args.lse_head_stride + se.q_start + row] = lse;
          }
        }
      }
      // The previous tile's TMA store must have finished reading the buffer
      // before any thread of this consumer writes it.
      if (wthr == 0) tma_store_wait_read_all();
      if constexpr (!C::kOverV) named_bar_sync(kBarEpi0 + cw, 128);
    };

#pragma unroll
    for (int i = 0; i < kNO; ++i) o[i] = 0.f;
    m_ref[0] = m_ref[1] = -INFINITY;
    l_row[0] = l_row[1] = 0.f;

    if constexpr (C::kAliasO) {
      // O over Q: every tile takes a Q turn (the producer's, without a load
      // when there is no work), so that no Q load is in flight while this
      // tile's O is staged in the Q buffer.
      mbar_wait(q_full, q_iter & 1);
      ++q_iter;
    }
    if (n_blocks > 0) {
      if constexpr (!C::kAliasO) {
        mbar_wait(q_full, q_iter & 1);
        ++q_iter;
        if constexpr (C::kQInRegs) load_q_frags();
      }
      if constexpr (C::kOverlap) {
        // Prologue: block n_blocks-1.
        {
          const int s = g % kS;
          const uint32_t ph = (g / kS) & 1;
          mbar_wait(&k_full[s], ph);
          sched_wait();
          issue_qk(s);
          sched_pass();
          wgmma_wait_group<0>();
          reg_fence_array(s_acc);
          release(&k_empty[s]);
          if (n_blocks == 1) release_q_after_qk();
          score_mod(br.n_hi - 1);
          float scale[2];
          softmax_step(scale);  // O is zero: no rescale needed
          convert_p();
        }
        bool pend_need = false;  // rescale of O owed before the next P.V
        float pend_scale[2] = {1.f, 1.f};
        // Stage and parity of the previous block, carried (no division per block).
        int s_prev = static_cast<int>(static_cast<uint32_t>(g) % kS);
        uint32_t ph_prev = (static_cast<uint32_t>(g) / kS) & 1;
        for (int it = 1; it < n_blocks; ++it) {
          const int n = br.n_hi - 1 - it;
          const int sp = s_prev;
          const uint32_t php = ph_prev;
          const int s = sp + 1 == kS ? 0 : sp + 1;
          const uint32_t ph = sp + 1 == kS ? (php ^ 1u) : php;
          s_prev = s;
          ph_prev = ph;
          mbar_wait(&k_full[s], ph);
          if constexpr (!C::kVWaitLate) mbar_wait(&v_full[sp], php);
          sched_wait();
          issue_qk(s);
          if constexpr (C::kVWaitLate) mbar_wait(&v_full[sp], php);  // V(it-1): after the Q K^T issue (FA3's place)
          // Inside the turn, while Q K^T executes (after P.V(j-1) retires, FA3's
          // place, measured 3-4% slower at long sequences, docs/perf.md).
          if (pend_need) rescale_o(pend_scale);
          issue_pv(sp, it == 1 ? first_steps : kBN / 16);
          sched_pass();
          wgmma_wait_group<1>();  // S(it) ready, P.V(it-1) may be in flight
          reg_fence_array(s_acc);
          release(&k_empty[s]);
          if (it == n_blocks - 1) release_q_after_qk();
          score_mod(n);
          pend_need = softmax_step(pend_scale);
          // Scheduling pin: ptxas otherwise sinks the exponentials below the
          // wait (serialising softmax and P.V within the warpgroup). A
          // volatile shared store of a value that depends on every one of
          // them is kept ahead of the wait, and so are they.
          st_shared_volatile_f32(scratch_u32, l_row[0] + l_row[1]);
          wgmma_wait_group<0>();  // P.V(it-1) done: O and P registers free
          reg_fence_array(o);
          reg_fence_array(s_acc);
          release(&v_empty[sp]);
          convert_p();
        }
        const int gl = g + n_blocks - 1;
        const int sl = gl % kS;
        const uint32_t phl = (gl / kS) & 1;
        mbar_wait(&v_full[sl], phl);
        sched_wait();
        if (pend_need) rescale_o(pend_scale);
        issue_pv(sl, n_blocks == 1 ? first_steps : kBN / 16);
        sched_pass();
        epilogue_prelude();  // overlaps the last P.V
        wgmma_wait_group<0>();
        reg_fence_array(o);
        release(&v_empty[sl]);
      } else {
        for (int it = 0; it < n_blocks; ++it) {
          const int n = br.n_hi - 1 - it;
          const int gc = g + it;
          const int s = gc % kS;
          const uint32_t ph = (gc / kS) & 1;
          mbar_wait(&k_full[s], ph);
          sched_wait();
          issue_qk(s);
          sched_pass();
          wgmma_wait_group<0>();
          reg_fence_array(s_acc);
          release(&k_empty[s]);
          if (it == n_blocks - 1) release_q_after_qk();
          score_mod(n);
          float scale[2];
          if (softmax_step(scale)) rescale_o(scale);
          convert_p();
          mbar_wait(&v_full[s], ph);
          sched_wait();
          issue_pv(s, kBN / 16);
          sched_pass();
          wgmma_wait_group<0>();
          reg_fence_array(o);
          release(&v_empty[s]);
        }
        epilogue_prelude();
      }
      g += n_blocks;
    } else {
      epilogue_prelude();  // no work: O = 0, l = 0
    }

    // ----------------------------------------------------------- epilogue
    // (Its first part, which does not read O, ran in epilogue_prelude.)
    if constexpr (C::kOverV) {
      // O over V: every consumer's P.V of this tile has retired (each
      // consumer's O spans both V stages); no V load is in flight (the
      // producer waits for o_empty first).
      named_bar_sync(kBarVIdle, 128 * C::kConsumers);
    }
    {
      // stmatrix.x4: per 64-column panel, 4 instructions of 4 accumulator pairs
      // each (chunks c0, c0 + 1, rows +0 / +8), swizzled as TMA expects
      // (sm90/fragments.hpp, host-tested); 4x fewer shared stores than one
      // 32-bit store per pair.
      const uint32_t st0 = smem_u32(sO_mine) + stmatrix_c_offset(warp_in_wg, lane, 0);
#pragma unroll
      for (int p = 0; p < C::kPanels; ++p)
#pragma unroll
        for (int c0 = 0; c0 < 8; c0 += 2) {
          uint32_t r[4];
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const int i = stmatrix_c_reg(8 * p + c0, m);
            const float s = inv[m & 1];
            r[m] = pack2<T>(o[i] * s, o[i + 1] * s);
          }
          stmatrix_x4((st0 ^ (static_cast<uint32_t>(c0) << 4)) + p * C::kPanelBytesM, r);
        }
    }
    fence_proxy_async_smem();
    named_bar_sync(kBarEpi0 + cw, 128);
    if (wthr == 0) {
#pragma unroll
      for (int p = 0; p < C::kPanels; ++p) {
        if (p >= np) continue;
        if (args.q_ragged)
          tma_store_5d(&args.tm_o, sO_mine + p * C::kPanelBytesM, p * 64,
                       se.q_row + m0e + cw * 64, te.h, se.mb, se.q_ext);
        else
          tma_store_4d(&args.tm_o, sO_mine + p * C::kPanelBytesM, p * 64, m0e + cw * 64, te.h,
                       te.b);
      }
      tma_store_commit();
      if constexpr (C::kOverV) {
        tma_store_wait_read_all();  // O is out of the V ring: the producer may refill it
        mbar_arrive(o_empty);
      }
    }
    if constexpr (C::kAliasO) {
      // O over Q: this consumer's Q rows are free for the next tile's load
      // once the store has read them.
      if (wthr == 0) tma_store_wait_read_all();
      named_bar_sync(kBarEpi0 + cw, 128);
      release(q_empty);
    }
  }
  if constexpr (C::kPingPong) {
    if (cw == 0) named_bar_sync(kBarSched0, 256);  // absorb the last consumer's final pass
  }
  if (wthr == 0) tma_store_wait_read_all();
}

}  // namespace sm90
}  // namespace flash4
