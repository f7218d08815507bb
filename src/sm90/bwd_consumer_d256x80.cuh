// Hopper backward, head dim 256 (every mode): the consumer warpgroups of the
// 80-key kernel (BwdConfig::kKeys80). The CTA, its producer, the masks and
// the workspace are those of bwd_kernel.cuh (which includes this file).
//
// Why 80 keys: with 64-key blocks (the consumers splitting the head dim of
// dK / dV) the head-dim-256 backward was bound by L2 (ncu: 79% of its peak),
// on the dQ reductions and the Q / dO loads that every key block repeats per
// query block. A block of 80 keys does the same L2 work for 25% more FLOPs
// (FlashAttention-3's 64 x 80 tile).
// 80 keys x 256 columns of dK and dV do not fit in registers as 64-row
// accumulators (M = keys would have to be a multiple of 64), so the
// gradients are computed transposed, with the head dim as M:
//   consumer w, keys [40 w, 40 w + 40) of the block, per iteration
//   (64 queries from q0):
//     S    = Q K_w^T,  dP = dO V_w^T      SS wgmma m64n40, k = 256
//     P    = exp2(c2 S - lse_log2[query]), masked; dS = P (dP - D[query])
//              (softcap: S -> t = tanh(scale s / cap) in P, dS times 1 - t^2)
//     P, dS -> shared memory as [80 key rows][64 queries] (16-bit, 128B
//              swizzle; two buffers each, alternating by iteration)
//     one 256-thread barrier: both consumers' keys are in P and dS
//   consumer w, head-dim columns [128 w, 128 w + 128) as two m64 tiles:
//     dV^T += dO^T P,  dK^T += Q^T dS      SS wgmma m64n80, A MN-major
//     dQ^T  = K^T dS^T                     SS wgmma m64n64, both MN-major,
//              two 64 x 64 pieces: piece 0 added from registers
//              (red.global.add.v4.f32, as FlashAttention-3 does at 256)
//              while dK^T runs, piece 1 staged over this consumer's own Q
//              panels of the finished stage and bulk-added (the stage is
//              released after the next barrier; causal kernels commit the
//              staged piece late, under the next S / dP). Register adds for
//              piece 1 too in deterministic mode and with the zero-filled
//              tail panels of head dims 136..192.
//   registers: dK^T and dV^T 4 x 40, S and dP 2 x 20, one dQ^T piece 32
//   (S and dP are dead by then; the two pieces one after the other).
// Shared memory: K and V 80 KB, Q two stages (64 KB), dO one stage (32 KB,
// its own full / empty barriers), P and dS 2 x 2 x 10 KB.
// Buffers: consumer w writes P / dS buffer it & 1 in iteration it only after
// the barrier of it - 1, which the other consumer reaches after waiting for
// every GEMM of it - 2, the last reader of that buffer.
// Deterministic mode: nothing is staged; the consumer adds both pieces of
// (h, m) in its turn, in the key-block order of bwd_kernel.cuh
// ("Deterministic mode"): its turn keeper (thread 32 or 64 of the producer
// warpgroup) waits for the piece pair's semaphore and grants the turn
// (dq_empty[w]); the consumer's 128 arrivals on dq_full[w] after its adds
// let the keeper fence and hand the turn on.
// dq_accum chunk of (b, h, m): four 64 x 64 pieces, piece j = head-dim
// columns [64 j, 64 j + 64); register i of thread t of the piece's dQ^T
// fragment at dq_piece_offset(i, t) (the postprocess reads it transposed:
// dq_post_source / dq_post_dest at head dim 256).
#pragma once
#include "sm90/bwd_kernel.cuh"

namespace flash4 {
namespace sm90 {

// S = Q K_w^T or dP = dO V_w^T: A = the 64 query rows at a_addr (a Q / dO
// tile), B = 40 key rows at b_addr (inside a K / V tile of kBlockN rows),
// both K-major, 128B swizzle, 16 k-steps over the head dim, one commit group.
template <class C>
__device__ __forceinline__ void bwd80_issue_qk(float (&acc)[20], uint32_t a_addr,
                                               uint32_t b_addr) {
  reg_fence(a_addr);
  reg_fence(b_addr);
  const uint64_t a_desc = make_sw128_desc(a_addr, 16, 1024);
  const uint64_t b_desc = make_sw128_desc(b_addr, 16, 1024);
  // The first k-step overwrites (scale-d 0), but the asm reads its "+f"
  // operands: defining them here ends the previous iteration's live range.
#pragma unroll
  for (int i = 0; i < 20; ++i) acc[i] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::kHeadDim / 16; ++kk) {
    const uint32_t off_a = (kk / 4) * C::kPanelBytesM + (kk % 4) * 32;
    const uint32_t off_b = (kk / 4) * C::kPanelBytesN + (kk % 4) * 32;
    wgmma_ss_m64n40k16<typename C::Elem>(acc, desc_advance(a_desc, off_a),
                                         desc_advance(b_desc, off_b), kk > 0);
  }
  wgmma_commit_group();
}

// A consumer's 64 x 40 S-shaped fragment (P or dS, fp32) in 16 bits into a
// [key rows][64 queries] buffer, transposed: stmatrix.x4.trans for key
// chunks 0..3, .x2 for chunk 4 (sm90/fragments.hpp: stmatrix_t_offset, with
// addr = this thread's stmatrix_t_offset(warp, lane, 0) from the consumer's
// first key row; the chunk pair c0 adds 2048 c0 / 2 bytes: 16 rows).
template <typename T>
__device__ __forceinline__ void bwd80_store_t(uint32_t addr, const float (&f)[20]) {
#pragma unroll
  for (int c0 = 0; c0 < 4; c0 += 2) {
    uint32_t r[4];
#pragma unroll
    for (int mm = 0; mm < 4; ++mm) {
      const int i = stmatrix_t_reg(c0, mm);
      r[mm] = pack2<T>(f[i], f[i + 1]);
    }
    stmatrix_x4_trans(addr + c0 * 8 * 128, r);
  }
  stmatrix_x2_trans(addr + 4 * 8 * 128, pack2<T>(f[16], f[17]), pack2<T>(f[18], f[19]));
}

template <class C, class IterHm, class RowOffset>
__device__ __forceinline__ void bwd_consumers_keys80(const BwdKernelArgs& args, uint8_t* smem,
                                                     const BwdCta& cta, IterHm iter_hm,
                                                     RowOffset row_offset) {
  using T = typename C::Elem;
  constexpr int kD = C::kHeadDim;
  constexpr int kBM = C::kBlockM;
  constexpr int kBN = C::kBlockN;
  constexpr int kS = C::kStages;
  constexpr int kKW = kBN / 2;   // keys per consumer (S / dP columns)
  constexpr int kNS = kKW / 2;   // S / dP accumulators per thread
  constexpr int kNKV = kBN / 2;  // accumulators of one m64 x n80 dK^T / dV^T tile
  static_assert(kD == 256 && kBM == 64 && kBN == 80 && C::kStagesDO == 1,
                "the 64 x 80 head-dim-256 tiling");
  const BwdSmem<C> sm(smem);
  const SeqCoords& sqi = cta.sqi;
  const int n_block = cta.n_block;
  const int left = cta.left, right = cta.right;

  const int tid = threadIdx.x;
  // consumer: keys [40 cw, +40); head-dim columns [128 cw, +128). Through a
  // shuffle: warp-uniform for the compiler, so descriptors stay uniform.
  const int cw = __shfl_sync(0xffffffffu, tid / 128, 0) - 1;
  const int wthr = tid % 128;
  const int lane = tid % 32;
  const int quad = lane % 4;
  const int row0 = 16 * (wthr / 32) + lane / 4;  // fragment row (+8 for hh = 1)
  const int kw0 = kKW * cw;
  const int64_t j_first = static_cast<int64_t>(n_block) * kBN;
  const int shift = sqi.sk - sqi.sq;  // key j visible to query i iff j - (i + shift) in [-left, right]
  const float c2 = args.scale_log2;

  const uint32_t k_base = smem_u32(sm.k);
  const uint32_t v_base = smem_u32(sm.v);
  const uint32_t q_base = smem_u32(sm.q);
  const uint32_t do_base = smem_u32(sm.dout);
  const uint32_t ds_base = smem_u32(sm.ds);
  const uint32_t p_base = smem_u32(sm.p);
  // This thread's stmatrix.trans address in a P / dS buffer (its consumer's
  // 40 key rows start at row kw0, a multiple of 8).
  const uint32_t st_off = kw0 * 128 + stmatrix_t_offset(wthr / 32, lane, 0);
  const uint32_t p_st = p_base + st_off;
  const uint32_t ds_st = ds_base + st_off;

  float dv[2][kNKV];  // dV^T: head-dim rows [128 cw + 64 t, + 64) x 80 keys
  float dk[2][kNKV];
  float s_acc[kNS];   // S, then P
  float dp_acc[kNS];  // dP, then dS
  float dq[32];        // one dQ^T piece
  float g[C::kSoftcap ? kNS : 1];  // softcap: 1 - t^2 of the S fragment
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int i = 0; i < kNKV; ++i) dv[t][i] = dk[t][i] = 0.f;

  mbar_wait(sm.kv_full, 0);  // also before the epilogue reuses sK / sV when n_iters == 0
  // dQ^T piece 1 is staged over this consumer's own two Q panels of the
  // finished stage and bulk-added: not in deterministic mode, nor with
  // zero-filled tail panels (head dims 136..192), which add from registers.
  const bool stage_dq = C::keys80_stages_dq(args.data_panels);
  // Causal: the staged piece is committed late, under the next S / dP (A/B on
  // the H200: causal +1.4-3.3%, non-causal -3..-6%, so non-causal commits
  // right after its stores).
  constexpr bool kCommitLate = C::kCausal;
  // Staging buffer of iteration it's piece 1: this consumer's Q panels of its stage.
  auto dq_stage = [&](int it) {
    return reinterpret_cast<float*>(sm.q + (it % kS) * C::kQBytes + 2 * cw * C::kPanelBytesM);
  };
  // Fence, warpgroup barrier and bulk add of iteration it's staged piece.
  auto dq_commit = [&](int it) {
    fence_proxy_async_smem();
    named_bar_sync(kBwdBarWG0 + cw, 128);
    if (wthr == 0) {
      const int2 hm = iter_hm(it);
      bulk_reduce_add_f32(
          args.dq_accum + row_offset(hm.x, hm.y) * kD + (2 * cw + 1) * C::kDQPieceFloats,
          dq_stage(it), C::kDQPieceBytes);
      tma_store_commit();
    }
  };

  for (int it = 0; it < cta.n_iters; ++it) {
    const int2 hm = iter_hm(it);
    const int h = hm.x;
    const int m = hm.y;
    const int s = it % kS;
    const uint32_t ph = (it / kS) & 1;
    const int q0 = m * kBM;
    const uint32_t buf = static_cast<uint32_t>(it & 1) * C::kDSBytes;

    mbar_wait(&sm.full[s], ph);
    bwd80_issue_qk<C>(s_acc, q_base + s * C::kQBytes, k_base + kw0 * 128);
    mbar_wait(sm.do_full, it & 1);
    bwd80_issue_qk<C>(dp_acc, do_base, v_base + kw0 * 128);
    // The previous iteration's staged piece goes out here, under S and dP:
    // its fence finds the stores done (right after them it waited, 4.6% of
    // the stall samples), and its bulk read has the exponential and dS
    // phases to finish before the stage is released after the barrier.
    if (kCommitLate && stage_dq && it > 0) dq_commit(it - 1);

    // ---- P = exp2(c2 S - lse_log2[query]), masked arguments -> -inf
    const bool need_mask =
        bwd_tile_needs_mask<kBM, kBN>(j_first, q0, sqi.sk, shift, left, right);
    const float* lse_s = sm.lse + s * kBM;
    const float* dsum_s = sm.dsum + s * kBM;
    const float lse2[2] = {lse_s[row0], lse_s[row0 + 8]};
    wgmma_wait_group<1>();
    reg_fence_array(s_acc);
#pragma unroll
    for (int c = 0; c < kKW / 8; ++c)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int i = 4 * c + 2 * hh + e;
          float x;
          if constexpr (C::kSoftcap) {
            // P = exp2(cap log2(e) t - lse), t = tanh(scale s / cap); dS
            // takes the derivative 1 - t^2 (kept in g until P is stored).
            const float t = softcap_tanh(s_acc[i], args.softcap_pre);
            g[i] = fmaf(-t, t, 1.0f);
            x = fmaf(t, c2, -lse2[hh]);
          } else {
            x = fmaf(s_acc[i], c2, -lse2[hh]);
          }
          if (need_mask) {
            const int key = static_cast<int>(j_first) + kw0 + 8 * c + 2 * quad + e;
            const int d = key - (q0 + row0 + 8 * hh) - shift;
            bool masked = key >= sqi.sk;
            if (right >= 0) masked = masked || d > right;
            if (left >= 0) masked = masked || d < -left;
            if (masked) x = -INFINITY;
          }
          s_acc[i] = ex2_approx(x);
        }
    // P -> its buffer, transposed (key rows of 64 queries), by stmatrix.trans.
    bwd80_store_t<T>(p_st + buf, s_acc);
    if constexpr (C::kSoftcap) {
#pragma unroll
      for (int i = 0; i < kNS; ++i) s_acc[i] *= g[i];  // P (1 - t^2) for dS
    }

    // ---- dS = P (dP - D[query]) -> its buffer, transposed
    const float dsum2[2] = {dsum_s[row0], dsum_s[row0 + 8]};
    wgmma_wait_group<0>();
    reg_fence_array(dp_acc);
#pragma unroll
    for (int i = 0; i < kNS; ++i) dp_acc[i] = s_acc[i] * (dp_acc[i] - dsum2[(i >> 1) & 1]);
    bwd80_store_t<T>(ds_st + buf, dp_acc);
    fence_proxy_async_smem();  // the wgmmas of both consumers read P and dS
    named_bar_sync(kBwdBarDS, 256);
    // Staged dQ: the previous stage is released once its bulk add has read
    // it (one thread per consumer; the empty barrier counts 2 then).
    if (stage_dq && it > 0 && wthr == 0) {
      tma_store_wait_read_all();
      mbar_arrive(&sm.empty[(it - 1) % kS]);
    }

    // ---- dV^T += dO^T P, dK^T += Q^T dS (this consumer's two head-dim
    //      tiles), dQ^T pieces = K^T dS^T
    {
      const uint32_t p_addr = p_base + buf;
      const uint32_t ds_addr = ds_base + buf;
      const uint32_t do_addr = do_base + 2 * cw * C::kPanelBytesM;
      const uint32_t q_addr = q_base + s * C::kQBytes + 2 * cw * C::kPanelBytesM;
      const uint32_t k_addr = k_base + 2 * cw * C::kPanelBytesN;
      uint32_t pa = p_addr, da = ds_addr, doa = do_addr, qa = q_addr, ka = k_addr;
      reg_fence(pa);
      reg_fence(da);
      reg_fence(doa);
      reg_fence(qa);
      reg_fence(ka);
      const uint64_t p_desc = make_sw128_desc(pa, 16, 1024);     // B, K-major
      const uint64_t ds_desc = make_sw128_desc(da, 16, 1024);    // B, K-major
      const uint64_t dst_desc = make_sw128_desc(da, C::kDSBytes, 1024);  // B, MN-major (dS^T)
      const uint64_t do_desc = make_sw128_desc(doa, C::kPanelBytesM, 1024);  // A, MN-major
      const uint64_t q_desc = make_sw128_desc(qa, C::kPanelBytesM, 1024);    // A, MN-major
      const uint64_t k_desc = make_sw128_desc(ka, C::kPanelBytesN, 1024);    // A, MN-major
      // Order: dV^T, dQ^T piece 0, dK^T, then piece 1 once piece 0's adds
      // are issued, so the adds run under dK^T; dV^T first frees dO early.
      auto issue_dq = [&](int piece) {
        if (piece == 0) {
#pragma unroll
          for (int i = 0; i < 32; ++i) dq[i] = 0.f;  // see bwd80_issue_qk
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk)
          wgmma_ss_tatb_m64n64k16<T>(
              dq, desc_advance(k_desc, piece * C::kPanelBytesN + kk * 16 * 128),
              desc_advance(dst_desc, kk * 16 * 128), kk > 0);
        wgmma_commit_group();
      };
      float* dst = args.dq_accum + row_offset(h, m) * kD + 2 * cw * C::kDQPieceFloats;
      auto add_dq = [&](int piece) {
#pragma unroll
        for (int g = 0; g < 8; ++g)
          red_add_v4_f32(dst + piece * C::kDQPieceFloats + dq_piece_offset(4 * g, wthr),
                         dq[4 * g], dq[4 * g + 1], dq[4 * g + 2], dq[4 * g + 3]);
      };
      wgmma_fence();
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
          wgmma_ss_ta_m64n80k16<T>(dv[t],
                                   desc_advance(do_desc, t * C::kPanelBytesM + kk * 16 * 128),
                                   desc_advance(p_desc, kk * 32), 1);
      wgmma_commit_group();
      issue_dq(0);
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
          wgmma_ss_ta_m64n80k16<T>(dk[t], desc_advance(q_desc, t * C::kPanelBytesM + kk * 16 * 128),
                                   desc_advance(ds_desc, kk * 32), 1);
      wgmma_commit_group();
      wgmma_wait_group<2>();  // dV^T: the dO buffer is read (dP long before)
      reg_fence_array(dv[0]);
      reg_fence_array(dv[1]);
      __syncwarp();
      if (lane == 0) mbar_arrive(sm.do_empty);
      wgmma_wait_group<1>();  // piece 0
      reg_fence_array(dq);
      // Deterministic: this consumer's turn on (h, m), granted by its turn
      // keeper (bwd_kernel.cuh) once the earlier key blocks' adds are in.
      if constexpr (C::kDeterministic) mbar_wait(&sm.dq_empty[cw], it & 1);
      add_dq(0);
      issue_dq(1);  // the same registers (two sets spilled: dK^T and dV^T hold 160)
      wgmma_wait_group<1>();  // dK^T: the Q stage and its row arrays are read
      reg_fence_array(dk[0]);
      reg_fence_array(dk[1]);
      if (!stage_dq) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&sm.empty[s]);
      }
      wgmma_wait_group<0>();
      reg_fence_array(dq);
      if (stage_dq) {
        // This consumer's Q panels of stage s: its own dK^T was their last
        // reader (the other consumer's S read them before the barrier).
        if constexpr (kCommitLate) {
          bwd_store_dq_piece(dq_stage(it), dq, wthr);
          if (it + 1 == cta.n_iters) dq_commit(it);  // else under the next S / dP
        } else {
          // dq_commit(it) written out with dst at hand: recomputing (h, m)
          // there made ptxas spill 4 B in the non-causal kernels.
          float* st = dq_stage(it);
          bwd_store_dq_piece(st, dq, wthr);
          fence_proxy_async_smem();
          named_bar_sync(kBwdBarWG0 + cw, 128);
          if (wthr == 0) {
            bulk_reduce_add_f32(dst + C::kDQPieceFloats, st, C::kDQPieceBytes);
            tma_store_commit();
          }
        }
      } else {
        add_dq(1);
        if constexpr (C::kDeterministic) mbar_arrive(&sm.dq_full[cw]);  // this thread's adds issued
      }
    }
  }

  // ------------------------------------------------------------- epilogue
  // Every wgmma of both consumers is complete (S / dP read K_w / V_w rows of
  // every panel): sK / sV become the staging tiles of dK / dV, key rows x
  // head-dim panels; this consumer writes its panels 2 cw, 2 cw + 1.
  named_bar_sync(kBwdBarEpi, 256);
  const float sc = args.softmax_scale;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const uint32_t panel = (2 * cw + t) * C::kPanelBytesN;
#pragma unroll
    for (int c0 = 0; c0 < kBN / 8; c0 += 2) {
      const uint32_t off = panel + stmatrix_t_offset(wthr / 32, lane, c0);
      uint32_t kr[4], vr[4];
#pragma unroll
      for (int mm = 0; mm < 4; ++mm) {
        const int i = stmatrix_t_reg(c0, mm);
        kr[mm] = pack2<T>(dk[t][i] * sc, dk[t][i + 1] * sc);
        vr[mm] = pack2<T>(dv[t][i], dv[t][i + 1]);
      }
      stmatrix_x4_trans(k_base + off, kr);
      stmatrix_x4_trans(v_base + off, vr);
    }
  }
  fence_proxy_async_smem();
  named_bar_sync(kBwdBarWG0 + cw, 128);
  if (wthr == 0) {
    const int key_start = n_block * kBN;
    if (key_start < sqi.sk_rows)  // keys in [sk, sk_rows) get their zero gradients
      bwd_store_dkdv(args, sqi, sm.k, sm.v, C::kPanelBytesN, 2 * cw, 2, key_start, cta.h_kv,
                     cta.b, args.data_panels);
    bulk_wait_all();
  }
}

}  // namespace sm90
}  // namespace flash4
