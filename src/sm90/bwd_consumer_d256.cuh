// Hopper backward, head dim 256: the consumer warpgroups. The CTA, its
// producer, the masks and the workspace are those of bwd_kernel.cuh (which
// includes this file).
//
// 64 keys x 256 columns of dK and dV take 256 fp32 registers per thread of a
// warpgroup: more than it has. So both consumers work on the same 64 keys
// (kBlockN = 64, kBlockM = 64 queries per iteration) and split the head dim:
// consumer w owns columns [128 w, 128 w + 128) of dK and dV (128 registers).
// The two score-side GEMMs are divided between them, not duplicated:
//   consumer 0: S^T  = K Q^T    (64 keys x 64 queries, k = 256)
//               P^T  = exp2(c2 S^T - lse_log2), masked   -> sP (fp32)
//   consumer 1: dP^T = V dO^T
//               dS^T = P^T (dP^T - D) with P^T from sP    -> sDS (16-bit)
//   both:       P^T and dS^T as A fragments (consumer 0 reads dS^T back),
//               dV[:, w] += P^T dO[:, w], dK[:, w] += dS^T Q[:, w]
//                                             RS wgmma, N = 128
//               dQ[:, w] = dS K[:, w] as two 64 x 64 pieces (SS, both
//               operands MN-major). Default mode: staged over this
//               consumer's own Q / dO panels of the finished stage and
//               bulk-added (cp.reduce.async.bulk, as at d64 / d128); the
//               stage is released in the next iteration. Deterministic mode
//               and head dims 136..192 (zero-filled tail panels): added from
//               registers (red.global.add.v4.f32).
// Exchange and order: two 256-thread named barriers per iteration, reached
// by the two consumers through different instructions, hence the non-.aligned
// barrier.sync (bar.sync there: synccheck reports divergence). Both sides
// sync (bar.arrive on the writer's side drew racecheck hazards); the writer
// seldom waits, the reader gets there first.
//   kBwdBarP  after consumer 0 wrote P^T of iteration it into sP; consumer 0
//             then issues its dV GEMM, which runs while consumer 1 computes dS^T.
//   kBwdBarDS after consumer 1 wrote dS^T of it into its sDS buffer (and read
//             sP, sPb: consumer 0 rewrites them in it + 1 only after this barrier).
// dS^T buffers: one would be enough for correctness (consumer 1 rewrites it
// in it + 1 after kBwdBarP of it + 1, which consumer 0 reaches only after
// its dQ wgmma and its fragment loads of it), but alternating two measured
// ~4% faster (cause not investigated), so the kernels without softcap
// alternate. With softcap, buffer 0 only: the second 8 KB holds P^T packed
// to 16 bits (fragment order) for consumer 1, as sP then carries
// P^T (1 - t^2) instead of P^T (t = tanh(scale s / cap): the softcap's
// derivative, which only consumer 0 has).
// Deterministic mode (kDeterministic): nothing is staged, so the consumers
// add their pieces of (h, m) themselves, in the order of bwd_kernel.cuh
// ("Deterministic mode"), and a turn keeper per consumer (threads 32 and 64
// of the producer warpgroup, in bwd_kernel.cuh) does the semaphore work: it
// waits until the piece pair's semaphore (dq_sem at row_offset(h, m) / 32 +
// w) equals the adds that come first, grants consumer w its turn (mbarrier
// dq_empty[w]), waits for the 128 arrivals on dq_full[w] that follow the
// consumer's adds, fences and increments the semaphore. The consumer's path
// holds only the grant's shared-memory wait; the keeper's global round trips
// run under its GEMMs. (Each consumer doing this itself measured 0.58-0.71
// of the default, one keeper for both 0.68-0.78: docs/perf.md.)
//
// dq_accum chunk of (b, h, m) (64 rows x 256 floats): four 64 x 64 pieces,
// piece j = head-dim columns [64 j, 64 j + 64); element (register i, thread t)
// of a piece's wgmma fragment at dq_piece_offset(i, t), so that each
// thread adds 16 contiguous bytes per instruction and a warp 512.
#pragma once
#include "sm90/bwd_kernel.cuh"

namespace flash4 {
namespace sm90 {

// The mask of one tile (kBM queries from q0 x a consumer's key rows) as one
// thread sees it: element (c, hh, e) of its S^T fragment is key
// key0 + 8 hh and query q0 + 8 c + 2 quad + e. any: some element of the tile
// may be masked (the tile crosses the key tail or a window edge); only then
// are elements tested.
struct BwdTileMask {
  int key0, q0, quad, sk, shift, left, right;
  bool any;
  __device__ __forceinline__ bool masked(int c, int hh, int e) const {
    const int key = key0 + 8 * hh;
    const int d = key - (q0 + 8 * c + 2 * quad + e) - shift;  // |d| < 2^31: Sq + Sk < 2^30
    bool m = key >= sk;
    if (right >= 0) m = m || d > right;
    if (left >= 0) m = m || d < -left;
    return m;
  }
};
// Key j is visible to query i iff j < sk and j - (i + shift) in [-left, right]
// (shift = sk - sq; -1: unbounded); the block holds keys [j_first, j_first + kBN).
template <int kBM, int kBN>
__device__ __forceinline__ BwdTileMask bwd_tile_mask(int64_t j_first, int q0, int key0, int quad,
                                                     int sk, int shift, int left, int right) {
  bool any = j_first + kBN > sk;
  const int64_t d_max = j_first + kBN - 1 - q0 - shift;    // largest j - (i + shift)
  const int64_t d_min = j_first - (q0 + kBM - 1) - shift;  // smallest
  if (right >= 0) any = any || d_max > right;
  if (left >= 0) any = any || d_min < -left;
  return BwdTileMask{key0, q0, quad, sk, shift, left, right, any};
}

// P^T = exp2(c2 S^T - lse_log2[query]) of one thread's S^T fragment (kBM
// queries; p may alias s), masked elements -> 0 (exp2(-inf)).
template <int kBM>
__device__ __forceinline__ void bwd_p_from_s(float (&p)[kBM / 2], const float (&s)[kBM / 2],
                                             const float* lse_s, float c2, int quad,
                                             const BwdTileMask& mask) {
#pragma unroll
  for (int c = 0; c < kBM / 8; ++c) {
    const float2 l = *reinterpret_cast<const float2*>(lse_s + 8 * c + 2 * quad);
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 4 * c + 2 * hh + e;
        float x = fmaf(s[i], c2, -(e ? l.y : l.x));
        if (mask.any && mask.masked(c, hh, e)) x = -INFINITY;
        p[i] = ex2_approx(x);
      }
  }
}

// dS^T = P^T (dP^T - D[query]), in place over dP^T.
template <int kBM>
__device__ __forceinline__ void bwd_ds_from_dp(float (&dp)[kBM / 2], const float (&p)[kBM / 2],
                                               const float* dsum_s, int quad) {
#pragma unroll
  for (int c = 0; c < kBM / 8; ++c) {
    const float2 dd = *reinterpret_cast<const float2*>(dsum_s + 8 * c + 2 * quad);
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      dp[4 * c + 2 * hh] = p[4 * c + 2 * hh] * (dp[4 * c + 2 * hh] - dd.x);
      dp[4 * c + 2 * hh + 1] = p[4 * c + 2 * hh + 1] * (dp[4 * c + 2 * hh + 1] - dd.y);
    }
  }
}

// S^T = K Q^T or dP^T = V dO^T for 64 key rows at a_addr (a K / V tile of
// kBlockN rows) and the kBlockM query rows at b_addr: both operands K-major,
// 128B swizzle, one commit group.
template <class C>
__device__ __forceinline__ void bwd_issue_kt(float (&acc)[C::kBlockM / 2], uint32_t a_addr,
                                             uint32_t b_addr) {
  reg_fence(a_addr);
  reg_fence(b_addr);
  const uint64_t a_desc = make_sw128_desc(a_addr, 16, 1024);
  const uint64_t b_desc = make_sw128_desc(b_addr, 16, 1024);
  // The first k-step overwrites (scale-d 0), but the asm reads its "+f"
  // operands: defining them here ends the previous iteration's live range.
#pragma unroll
  for (int i = 0; i < C::kBlockM / 2; ++i) acc[i] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::kHeadDim / 16; ++kk) {
    const uint32_t off_a = (kk / 4) * C::kPanelBytesN + (kk % 4) * 32;
    const uint32_t off_b = (kk / 4) * C::kPanelBytesM + (kk % 4) * 32;
    wgmma_ss<typename C::Elem, C::kBlockM>(acc, desc_advance(a_desc, off_a),
                                           desc_advance(b_desc, off_b), kk > 0);
  }
  wgmma_commit_group();
}

// Byte offset, in a dS^T buffer (rows = keys, 128-byte swizzled rows of 64
// queries, kBlockM / 64 panels), of the packed pair that fragment (key row r,
// query chunk c of 8) holds: register ds_frag[c / 2][2 (c % 2) + hh] of the
// thread with quad q sits at key row r + 8 hh.
template <class C>
__device__ __forceinline__ uint32_t bwd_ds_offset(uint32_t r, int c, int quad) {
  return (c / 8) * C::kPanelBytesN + r * 128 + (((static_cast<uint32_t>(c % 8)) ^ (r & 7u)) << 4) +
         quad * 4;
}

template <class C, class IterHm, class RowOffset>
__device__ __forceinline__ void bwd_consumers_shared_keys(const BwdKernelArgs& args,
                                                          uint8_t* smem, const BwdCta& cta,
                                                          IterHm iter_hm, RowOffset row_offset) {
  using T = typename C::Elem;
  constexpr int kD = C::kHeadDim;
  constexpr int kBM = C::kBlockM;
  constexpr int kBN = C::kBlockN;
  constexpr int kS = C::kStages;
  constexpr int kNS = kBM / 2;    // S^T, dP^T, P^T per thread (64 keys x 64 queries)
  constexpr int kHalf = kD / 2;   // head-dim columns of dK / dV per consumer
  constexpr int kNK = kHalf / 2;  // dK / dV accumulators per thread
  static_assert(kD == 256 && kBM == 64 && kBN == 64, "the head-dim-256 tiling");
  const BwdSmem<C> sm(smem);
  uint8_t* sK = sm.k;
  uint8_t* sV = sm.v;
  float* sP = sm.p;
  uint8_t* sPb = sm.ds + C::kDSBytes;  // softcap: P^T packed, fragment order (file comment)
  const SeqCoords& sqi = cta.sqi;
  const int n_block = cta.n_block;
  const int left = cta.left, right = cta.right;

  const int tid = threadIdx.x;
  const int cw = tid / 128 - 1;  // consumer 0 / 1: head-dim columns [128 cw, 128 cw + 128)
  const int wthr = tid % 128;
  const int lane = tid % 32;
  const int quad = lane % 4;
  const int row0 = 16 * (wthr / 32) + lane / 4;  // key row of the block (+8 for hh = 1)
  const int key0 = n_block * kBN + row0;
  const int shift = sqi.sk - sqi.sq;  // key j visible to query i iff j - (i + shift) in [-left, right]
  const float c2 = args.scale_log2;

  const uint32_t k_base = smem_u32(sK);
  const uint32_t ds_base = smem_u32(sm.ds);
  // Consumer 0 computes S^T from K and Q, consumer 1 dP^T from V and dO.
  const uint32_t kt_a = cw == 0 ? k_base : smem_u32(sV);
  const uint32_t kt_b = smem_u32(cw == 0 ? sm.q : sm.dout);
  // B operands of dV / dK: this consumer's 128 columns (two panels) of dO / Q.
  const uint32_t do_half = smem_u32(sm.dout) + 2 * cw * C::kPanelBytesM;
  const uint32_t q_half = smem_u32(sm.q) + 2 * cw * C::kPanelBytesM;

  float dv[kNK];
  float dk[kNK];
  float acc[kNS];  // S^T (consumer 0) or dP^T, then dS^T (consumer 1)
  float pf[kNS];   // P^T
  float dq0[32];
  float dq1[32];
  uint32_t p_frag[kBM / 16][4];
  uint32_t ds_frag[kBM / 16][4];
#pragma unroll
  for (int i = 0; i < kNK; ++i) dv[i] = dk[i] = 0.f;

  mbar_wait(sm.kv_full, 0);  // also before the epilogue reuses sK / sV when n_iters == 0
  // Default mode: whether dQ is staged (see the end of the loop body): not
  // with zero-filled tail panels (head dims 136..192; the staging would
  // overwrite their zeros), which add from registers.
  const bool stage_dq = args.data_panels == C::kPanels;

  for (int it = 0; it < cta.n_iters; ++it) {
    const int2 hm = iter_hm(it);
    const int h = hm.x;
    const int m = hm.y;
    const int s = it % kS;
    const uint32_t ph = (it / kS) & 1;
    const int q0 = m * kBM;
    // dS^T buffer: alternating without softcap, buffer 0 with softcap (file comment).
    const uint32_t ds_off = C::kSoftcap ? 0u : static_cast<uint32_t>(it & 1) * C::kDSBytes;
    uint8_t* ds_buf = sm.ds + ds_off;
    mbar_wait(&sm.full[s], ph);

    bwd_issue_kt<C>(acc, kt_a, kt_b + s * C::kQBytes);

    uint32_t doa = do_half + s * C::kQBytes;
    uint32_t qa = q_half + s * C::kQBytes;
    uint32_t da = ds_base + ds_off;
    uint32_t ka = k_base + 2 * cw * C::kPanelBytesN;
    reg_fence(doa);
    reg_fence(qa);
    reg_fence(da);
    reg_fence(ka);
    const uint64_t do_desc = make_sw128_desc(doa, C::kPanelBytesM, 1024);
    const uint64_t q_desc = make_sw128_desc(qa, C::kPanelBytesM, 1024);
    const uint64_t a_desc = make_sw128_desc(da, C::kPanelBytesN, 1024);
    const uint64_t b_desc = make_sw128_desc(ka, C::kPanelBytesN, 1024);
    // dV += P^T dO (this consumer's columns; B MN-major). Consumer 0 issues
    // it as soon as P^T is in registers: it runs while consumer 1 computes dS^T.
    auto issue_dv = [&]() {
      if constexpr (!C::kSoftcap) {
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            p_frag[kk][j] = pack2<T>(pf[8 * kk + 2 * j], pf[8 * kk + 2 * j + 1]);
      }  // softcap: packed by consumer 0 with the exponentials, loaded from sPb by consumer 1
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs_tb<T, kHalf>(dv, p_frag[kk], desc_advance(do_desc, kk * 16 * 128), 1);
      wgmma_commit_group();
    };

    if (cw == 0) {
      // ---- P^T = exp2(c2 S^T - lse_log2[query]), masked arguments -> -inf.
      const BwdTileMask mask = bwd_tile_mask<kBM, kBN>(static_cast<int64_t>(n_block) * kBN, q0,
                                                       key0, quad, sqi.sk, shift, left, right);
      const float* lse_s = sm.lse + s * kBM;
      wgmma_wait_group<0>();
      reg_fence_array(acc);
      if constexpr (C::kSoftcap) {
        // P = exp2(cap log2(e) t - lse) with t = tanh(scale s / cap); sP gets
        // P (1 - t^2), sPb the packed P for consumer 1's dV.
        const float pre = args.softcap_pre;
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c) {
          const float2 l = *reinterpret_cast<const float2*>(lse_s + 8 * c + 2 * quad);
          float g[4];
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            float pv[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float t = softcap_tanh(acc[4 * c + 2 * hh + e], pre);
              float x = fmaf(t, c2, -(e ? l.y : l.x));
              if (mask.any && mask.masked(c, hh, e)) x = -INFINITY;
              pv[e] = ex2_approx(x);
              g[2 * hh + e] = pv[e] * fmaf(-t, t, 1.0f);
            }
            p_frag[c / 2][2 * (c % 2) + hh] = pack2<T>(pv[0], pv[1]);
          }
          *reinterpret_cast<float4*>(sP + c * 512 + 4 * wthr) = make_float4(g[0], g[1], g[2], g[3]);
        }
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
          *reinterpret_cast<uint4*>(sPb + (kk * 128 + wthr) * 16) =
              make_uint4(p_frag[kk][0], p_frag[kk][1], p_frag[kk][2], p_frag[kk][3]);
      } else {
        bwd_p_from_s<kBM>(pf, acc, lse_s, c2, quad, mask);
#pragma unroll
        for (int g = 0; g < kNS / 4; ++g)
          *reinterpret_cast<float4*>(sP + g * 512 + 4 * wthr) =
              make_float4(pf[4 * g], pf[4 * g + 1], pf[4 * g + 2], pf[4 * g + 3]);
      }
      named_bar_sync_unaligned(kBwdBarP, 256);
    } else {
      named_bar_sync_unaligned(kBwdBarP, 256);
#pragma unroll
      for (int g = 0; g < kNS / 4; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(sP + g * 512 + 4 * wthr);
        pf[4 * g] = v.x;
        pf[4 * g + 1] = v.y;
        pf[4 * g + 2] = v.z;
        pf[4 * g + 3] = v.w;
      }
      // ---- dS^T = P^T (dP^T - D[query]); softcap: pf is P^T (1 - t^2)
      const float* dsum_s = sm.dsum + s * kBM;
      wgmma_wait_group<0>();
      reg_fence_array(acc);
      bwd_ds_from_dp<kBM>(acc, pf, dsum_s, quad);
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          ds_frag[kk][j] = pack2<T>(acc[8 * kk + 2 * j], acc[8 * kk + 2 * j + 1]);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c)
          *reinterpret_cast<uint32_t*>(
              ds_buf + bwd_ds_offset<C>(static_cast<uint32_t>(row0 + 8 * hh), c, quad)) =
              ds_frag[c / 2][2 * (c % 2) + hh];
      if constexpr (C::kSoftcap) {
        // After dS^T (registers: P^T, dP^T are dead now), before kBwdBarDS
        // (consumer 0 rewrites sPb after it).
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk) {
          const uint4 v = *reinterpret_cast<const uint4*>(sPb + (kk * 128 + wthr) * 16);
          p_frag[kk][0] = v.x;
          p_frag[kk][1] = v.y;
          p_frag[kk][2] = v.z;
          p_frag[kk][3] = v.w;
        }
      }
      fence_proxy_async_smem();  // the dQ wgmma of both consumers reads it
      named_bar_sync_unaligned(kBwdBarDS, 256);
    }
    // One call site: issued from two places, ptxas serialized every wgmma.
    if (!C::kDeterministic && it > 0) {
      // Default mode releases the previous iteration's stage here. Both
      // consumers passed this iteration's P^T barrier, so every read of it
      // is over; the staged dQ's bulk reads have had the
      // whole S^T / dP^T / exponential phase to finish (waiting at the end
      // of the previous iteration measured 12-15% slower: the warpgroup's
      // next wgmma waited on this thread; so did waiting right after the next
      // S^T / dP^T issue, 8%: the bulk reads finish late, behind the stage's
      // TMA loads, and here the warpgroup has its dV GEMM to hide the wait).
      if (wthr == 0) {
        if (stage_dq) tma_store_wait_read_all();
        mbar_arrive(&sm.empty[static_cast<unsigned>(it - 1) % kS]);
      }
    }
    issue_dv();
    if (cw == 0) {
      named_bar_sync_unaligned(kBwdBarDS, 256);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
#pragma unroll
        for (int c = 0; c < kBM / 8; ++c)
          ds_frag[c / 2][2 * (c % 2) + hh] = *reinterpret_cast<const uint32_t*>(
              ds_buf + bwd_ds_offset<C>(static_cast<uint32_t>(row0 + 8 * hh), c, quad));
    }

    // ---- dK += dS^T Q (this consumer's columns), then dQ piece 0 =
    //      dS K[:, 128 cw .. + 64) (A = the dS^T buffer, MN-major)
    {
#pragma unroll
      for (int i = 0; i < 32; ++i) dq0[i] = 0.f;  // see bwd_issue_kt
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs_tb<T, kHalf>(dk, ds_frag[kk], desc_advance(q_desc, kk * 16 * 128), 1);
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wgmma_ss_tatb_m64n64k16<T>(dq0, desc_advance(a_desc, kk * 16 * 128),
                                   desc_advance(b_desc, kk * 16 * 128), kk > 0);
      wgmma_commit_group();
      wgmma_wait_group<0>();  // dV, dK, dQ 0: Q / dO / row arrays of stage s no longer read
      reg_fence_array(dq0);
      reg_fence_array(dv);
      reg_fence_array(dk);
      if constexpr (C::kDeterministic) {  // default mode: released after the dQ staging below
        __syncwarp();
        if (lane == 0) mbar_arrive(&sm.empty[s]);
      }
      // dQ piece 1 (columns 128 cw + 64 ..), overlapping the adds of piece 0.
#pragma unroll
      for (int i = 0; i < 32; ++i) dq1[i] = 0.f;  // after the wait: p_frag / ds_frag are dead
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wgmma_ss_tatb_m64n64k16<T>(dq1, desc_advance(a_desc, kk * 16 * 128),
                                   desc_advance(b_desc, C::kPanelBytesN + kk * 16 * 128), kk > 0);
      wgmma_commit_group();
    }
    float* dst = args.dq_accum + row_offset(h, m) * kD + 2 * cw * C::kDQPieceFloats;
    if (C::kDeterministic || !stage_dq) {
      if constexpr (C::kDeterministic) mbar_wait(&sm.dq_empty[cw], it & 1);  // the keeper's grant
#pragma unroll
      for (int g = 0; g < 8; ++g)
        red_add_v4_f32(dst + dq_piece_offset(4 * g, wthr), dq0[4 * g], dq0[4 * g + 1],
                       dq0[4 * g + 2], dq0[4 * g + 3]);
      wgmma_wait_group<0>();
      reg_fence_array(dq1);
#pragma unroll
      for (int g = 0; g < 8; ++g)
        red_add_v4_f32(dst + C::kDQPieceFloats + dq_piece_offset(4 * g, wthr), dq1[4 * g],
                       dq1[4 * g + 1], dq1[4 * g + 2], dq1[4 * g + 3]);
      if constexpr (C::kDeterministic) mbar_arrive(&sm.dq_full[cw]);  // this thread's adds issued
    } else {
      // Default mode: both pieces staged in this consumer's own panels of
      // stage s (dQ piece 0 over its two Q panels, piece 1 over its two dO
      // panels, 16 KB each, dq_piece_offset layout) and bulk-added, as at
      // head dims 64 / 128. Those panels are free: this consumer's dV / dK
      // GEMMs are done, and the other consumer's full-width S^T / dP^T reads
      // ended before the P^T / dS^T barriers it passed; the other consumer's
      // dV / dK read only its own panels. The stage is released once both
      // copies have read it, in the next iteration. (Against 16-byte vector
      // reductions from registers: +1.6-3.2% non-causal, +1.6-6.3% causal on
      // the H200; a probe that dropped half of those reductions read +15-17%,
      // docs/perf.md.)
      // One piece: staged, then one bulk reduce-add by thread 0 of the consumer.
      auto stage_and_add = [&](float* st, const float(&dq)[32], float* gdst) {
        bwd_store_dq_piece(st, dq, wthr);
        fence_proxy_async_smem();
        named_bar_sync(kBwdBarWG0 + cw, 128);
        if (wthr == 0) {
          bulk_reduce_add_f32(gdst, st, C::kDQPieceBytes);
          tma_store_commit();
        }
      };
      const int own = s * C::kQBytes + 2 * cw * C::kPanelBytesM;  // this consumer's panels
      stage_and_add(reinterpret_cast<float*>(sm.q + own), dq0, dst);
      wgmma_wait_group<0>();
      reg_fence_array(dq1);
      stage_and_add(reinterpret_cast<float*>(sm.dout + own), dq1, dst + C::kDQPieceFloats);
    }
  }

  // ------------------------------------------------------------- epilogue
  // Every wgmma of both consumers (dQ reads sK) is complete: sK / sV become
  // the staging tiles of dK / dV; this consumer's two panels.
  named_bar_sync(kBwdBarEpi, 256);
  bwd_stage_dkdv<T, 2>(sK, sV, dk, dv, static_cast<uint32_t>(row0), quad, C::kPanelBytesN, 2 * cw,
                       args.softmax_scale);
  fence_proxy_async_smem();
  named_bar_sync(kBwdBarWG0 + cw, 128);
  if (wthr == 0) {
    const int key_start = n_block * kBN;
    if (key_start < sqi.sk_rows)  // keys in [sk, sk_rows) get their zero gradients
      bwd_store_dkdv(args, sqi, sK, sV, C::kPanelBytesN, 2 * cw, 2, key_start, cta.h_kv, cta.b,
                     args.data_panels);
    bulk_wait_all();
  }
}

}  // namespace sm90
}  // namespace flash4
