// Portable forward kernel, FlashAttention-2 style (sm80-class instructions).
//
// One CTA per (query block, head, batch). Each warp owns kMTiles 16-row
// slices of the query block. Per key block n (walked from the last to the
// first):
//   wait K(n); sync; issue V(n)           (V(n) lands while S is computed)
//   S = Q K(n)^T                          (mma.sync, Q from smem or registers)
//   [softcap / sign transform] [mask]     (mask only on boundary blocks)
//   wait V(n); sync; issue K(n-1)         (K(n-1) lands during softmax + P.V)
//   online softmax in the exp2 domain (O rescaled only when a max moved),
//   O = O * corr + P V(n)
// P stays in registers: the fp32 C fragment of S, packed in pairs, is the A
// fragment of P.V. Row max/sum use quad shuffles; row sums stay per-thread
// partial until the end. Only the blocks that a boundary cuts (sk tail,
// causal/window edges) run the mask code; the others take the mask-free copy
// of the step.
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>
#include "sm80/fwd_config.cuh"
#include "sm80/ptx.cuh"

namespace flash4 {
namespace sm80 {

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <class C>
__device__ __forceinline__ uint32_t tile_off(int r, int c) {
  const int pc = C::kSwizzle ? (c ^ (r & 7)) : c;
  return static_cast<uint32_t>(r * C::kRowBytes + pc * 16);
}

// cp.async tile loads. Thread mapping: kTPR threads per row (8: 128
// contiguous bytes), each taking chunks c0, c0 + kTPR, ...; rows advance by
// kRPP = kNThreads / kTPR per pass. A thread keeps one shared offset and one
// global pointer (its first element); the rest are immediates.
template <class C>
struct LoadMap {
  static constexpr int kTPR = (C::kChunks % 8 == 0) ? 8 : 4;
  static constexpr int kCPT = C::kChunks / kTPR;  // chunks per thread per row
  static constexpr int kRPP = C::kNThreads / kTPR;  // rows per pass
  static_assert(C::kChunks % kTPR == 0 && kRPP % 8 == 0, "load mapping");
  __device__ static int r0(int tid) { return tid / kTPR; }
  __device__ static int c0(int tid) { return tid % kTPR; }
};

// Copy a kRows x kHeadDim tile. s_thr: tile base + tile_off(r0, c0);
// g_thr: the tile's first row + r0 * row_stride + c0 * 8. Rows with
// r0 + row >= rows_valid (checked only when kCheckRows) and chunks with
// c0 + chunk >= chunks_valid are zero-filled; nothing is read for them.
template <class C, int kRows, bool kCheckRows>
__device__ __forceinline__ void load_tile(uint32_t s_thr, const typename C::T* g_thr,
                                          int64_t row_stride, int rows_left, int chunks_left) {
  using M = LoadMap<C>;
  static_assert(kRows % M::kRPP == 0, "rows per pass");
#pragma unroll
  for (int pass = 0; pass < kRows / M::kRPP; ++pass) {
    const bool row_ok = !kCheckRows || pass * M::kRPP < rows_left;
#pragma unroll
    for (int i = 0; i < M::kCPT; ++i) {
      const bool valid = row_ok && i * M::kTPR < chunks_left;
      // swizzle: (c0 + 8i) ^ s == (c0 ^ s) + 8i since c0, s < 8; rows advance
      // by multiples of 8, so the row term of the swizzle is unchanged.
      cp_async_16_zfill(s_thr + pass * M::kRPP * C::kRowBytes + i * M::kTPR * 16,
                        g_thr + pass * M::kRPP * row_stride + i * M::kTPR * 8, valid);
    }
  }
}

template <class C>
__global__ void __launch_bounds__(C::kNThreads, 1) fwd_kernel(const __grid_constant__ FwdParams p) {
  using T = typename C::T;
  constexpr int kBM = C::kBlockM, kBN = C::kBlockN;
  constexpr int kMT = C::kMTiles, kNT = C::kNTiles, kDT = C::kDTiles;
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2 = 0.6931471805599453f;
  constexpr float kNegInf = -INFINITY;
  constexpr float kRescaleLog2 = 0.f;  // rescale threshold (log2 units), see below

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;  // row within an 8-row group of a fragment
  const int t = lane & 3;   // column pair within a fragment

  // ---- which block: m fastest (CTAs of one head run together and share K/V
  // in L2), then head, then batch. With a right bound (causal), later query
  // rows see more keys: launch those blocks first.
  const int num_m = static_cast<int>(fwd_num_m_blocks(p.seqlen_q, kBM));
  const int bid = blockIdx.x;
  const int m_idx = bid % num_m;
  const int hb = bid / num_m;
  const int h = hb % p.heads_q;
  const int b = hb / p.heads_q;
  const int m_block = p.window_right >= 0 ? num_m - 1 - m_idx : m_idx;

  // ---- sequence lengths and starts
  int sq = p.seqlen_q, sk = p.seqlen_k;
  int64_t q_start = 0, k_start = 0;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[b];
    sq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  }
  if (p.cu_seqlens_k != nullptr) {
    k_start = p.cu_seqlens_k[b];
    sk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  }
  if (p.seqused_k != nullptr) sk = max(0, min(sk, p.seqused_k[b]));
  const int m0 = m_block * kBM;
  if (m0 >= sq) return;  // varlen: this block lies past the sequence

  const int hk = h / (p.heads_q / p.heads_kv);
  const T* gq = static_cast<const T*>(p.q) + b * p.q_batch_stride +
                (q_start + m0) * p.q_row_stride + h * p.q_head_stride;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_batch_stride + k_start * p.k_row_stride +
                hk * p.k_head_stride;
  const T* gv = static_cast<const T*>(p.v) + b * p.v_batch_stride + k_start * p.v_row_stride +
                hk * p.v_head_stride;
  T* go = static_cast<T*>(p.out) + b * p.o_batch_stride + (q_start + m0) * p.o_row_stride +
          h * p.o_head_stride;

  // ---- key-block range. Query i sees keys [i + off - left, i + off + right].
  const int64_t off = static_cast<int64_t>(sk) - sq;
  const int64_t row_last = static_cast<int64_t>(min(m0 + kBM, sq)) - 1;
  const bool has_left = p.window_left >= 0, has_right = p.window_right >= 0;
  int64_t key_end = sk, key_begin = 0;
  if (has_right) key_end = min64(key_end, row_last + off + p.window_right + 1);
  if (has_left) key_begin = max64(0, m0 + off - p.window_left);
  const int n_block_min = static_cast<int>(key_begin / kBN);
  const int n_block_max = key_end <= key_begin ? n_block_min
                                               : static_cast<int>((key_end + kBN - 1) / kBN);
  // Blocks [lo_mask_end, hi_mask_start) need no mask for any row of the block.
  int64_t nomask_key_end = sk;
  if (has_right) nomask_key_end = min64(nomask_key_end, m0 + off + p.window_right + 1);
  int hi_mask_start = static_cast<int>(max64(0, nomask_key_end) / kBN);
  hi_mask_start = min(max(hi_mask_start, n_block_min), n_block_max);
  int lo_mask_end = n_block_min;
  if (has_left) {
    const int64_t need = max64(0, row_last + off - p.window_left);
    lo_mask_end = static_cast<int>(min64((need + kBN - 1) / kBN, n_block_max));
  }
  lo_mask_end = min(max(lo_mask_end, n_block_min), hi_mask_start);

  // ---- score transform: with softcap, s <- tanh(s * scale / cap) and the
  // exp2 multiplier is cap * log2(e); a negative scale flips the sign of s
  // so that the multiplier is positive and the row max stays a max.
  const bool softcap = p.softcap > 0.f;
  const bool negscale = !softcap && p.softmax_scale_log2 < 0.f;
  const bool transform = softcap || negscale;
  const float sl2 = softcap ? p.softcap * kLog2e : (negscale ? -p.softmax_scale_log2
                                                              : p.softmax_scale_log2);
  const float cap_pre2 = softcap ? 2.f * kLog2e * p.softmax_scale / p.softcap : 0.f;

  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + C::kSmemQ;
  const uint32_t sV = sK + C::kSmemKV;
  const int dchunks = p.headdim / 8;
  const int row0 = warp * 16 * kMT;  // first row of this warp in the block
  // i + sk - sq of this thread's first row (others add 16 mt + 8 hh): in
  // (-sq, sk) for rows < sq; saturated for the unused rows past sq.
  const int diag = static_cast<int>(min64(off + m0 + row0 + g, 0x7fffffff - kBM));

  float acc_o[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < kDT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][j][e] = 0.f;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      row_max[mt][hh] = kNegInf;
      row_sum[mt][hh] = 0.f;
    }
  }

  if (n_block_max > n_block_min) {
    using M = LoadMap<C>;
    const int lr0 = M::r0(tid), lc0 = M::c0(tid);
    const uint32_t ld_soff = tile_off<C>(lr0, lc0);
    const int chunks_left = dchunks - lc0;
    // thread pointers: first row of the sequence + this thread's row/chunk
    const T* gk_thr = gk + lr0 * p.k_row_stride + lc0 * 8;
    const T* gv_thr = gv + lr0 * p.v_row_stride + lc0 * 8;
    load_tile<C, kBM, true>(sQ + ld_soff, gq + lr0 * p.q_row_stride + lc0 * 8, p.q_row_stride,
                            min(kBM, sq - m0) - lr0, chunks_left);
    {
      const int n = n_block_max - 1;
      load_tile<C, kBN, true>(sK + ld_soff, gk_thr + static_cast<int64_t>(n) * kBN * p.k_row_stride,
                              p.k_row_stride, sk - n * kBN - lr0, chunks_left);
    }
    cp_async_commit();

    uint32_t qf[C::kQInRegs ? kMT : 1][C::kQInRegs ? C::kKSteps : 1][4];
    if constexpr (C::kQInRegs) {
      cp_async_wait<0>();
      __syncthreads();
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int ks = 0; ks < C::kKSteps; ++ks)
          ldmatrix_x4(qf[mt][ks], sQ + tile_off<C>(row0 + mt * 16 + (lane & 15), 2 * ks + (lane >> 4)));
    }

    auto step = [&](int n, auto mask_tag) {
      constexpr bool kMask = decltype(mask_tag)::value;
      float s[kMT][kNT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;

      cp_async_wait<0>();
      __syncthreads();  // K(n) visible to all; every warp is done with V(n+1)
      // Only block n_block_max - 1 can be partial (it holds key sk - 1 if
      // any block does), and partial blocks are masked.
      load_tile<C, kBN, kMask>(sV + ld_soff, gv_thr + static_cast<int64_t>(n) * kBN * p.v_row_stride,
                               p.v_row_stride, sk - n * kBN - lr0, chunks_left);
      cp_async_commit();

      // S = Q K^T
#pragma unroll
      for (int ks = 0; ks < C::kKSteps; ++ks) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (C::kQInRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[mt][e] = qf[mt][ks][e];
          } else {
            ldmatrix_x4(a[mt], sQ + tile_off<C>(row0 + mt * 16 + (lane & 15), 2 * ks + (lane >> 4)));
          }
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t bk[4];
          ldmatrix_x4(bk, sK + tile_off<C>(16 * np + (lane & 7) + ((lane >> 4) << 3),
                                           2 * ks + ((lane >> 3) & 1)));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_m16n8k16<T>(s[mt][2 * np], a[mt], bk[0], bk[1]);
            mma_m16n8k16<T>(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
          }
        }
      }

      if (transform) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kNT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float x = s[mt][j][e];
              // tanh(y) = 1 - 2 / (exp(2y) + 1): absolute error ~1e-7.
              s[mt][j][e] = softcap ? fmaf(-2.f, rcp_approx(ex2_approx(x * cap_pre2) + 1.f), 1.f)
                                    : -x;
            }
      }

      if constexpr (kMask) {
        // Element (row r = 16 mt + 8 hh + g, column c = 8 j + e + 2 t of the
        // block) is key j0 + c for query i0 + r, visible iff
        //   c < sk - j0,  c - r >= -left - u,  c - r <= right - u,
        // with j0 the thread's first key, i0 its first row, u = j0 - (i0 + sk - sq).
        // c - r is a compile-time constant, so three values per thread do;
        // clamping them to +-4096 changes no comparison.
        int d = diag;  // opaque copy: keeps the bounds out of the hot loop
        asm volatile("" : "+r"(d));
        const int64_t j0 = static_cast<int64_t>(n) * kBN + 2 * t;
        const int64_t u = j0 - d;
        auto clampi = [](int64_t x) { return static_cast<int>(min64(max64(x, -4096), 4096)); };
        const int kl = clampi(sk - j0);
        const int lb = has_left ? clampi(-static_cast<int64_t>(p.window_left) - u) : -4096;
        const int rb = has_right ? clampi(static_cast<int64_t>(p.window_right) - u) : 4096;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int j = 0; j < kNT; ++j)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int c = 8 * j + e, cr = c - (16 * mt + 8 * hh);
                if (c >= kl || cr < lb || cr > rb) s[mt][j][2 * hh + e] = kNegInf;
              }
      }

      cp_async_wait<0>();
      __syncthreads();  // V(n) visible; every warp is done with K(n)
      if (n > n_block_min) {
        load_tile<C, kBN, false>(sK + ld_soff,
                                 gk_thr + static_cast<int64_t>(n - 1) * kBN * p.k_row_stride,
                                 p.k_row_stride, 0, chunks_left);
        cp_async_commit();
      }

      // Online softmax (exp2 domain) with conditional rescaling: O and l are
      // rescaled only when the max of some row of the warp grew by more than
      // kRescaleLog2 (log2 units); then every row of the warp moves to its
      // exact new max (corr == 1 exactly for rows whose max did not move).
      // A row that keeps a stale max m has P <= 2^kRescaleLog2; O = sum P V /
      // sum P and the LSE use one consistent m per row, so the function is
      // the same for any threshold. FlashAttention-4 uses 8; with 0 the
      // rounding of P is exactly that of a rescale-every-block kernel, which
      // tracks the same-precision reference much more closely (with 8 the
      // error ratio to it rose from ~1.0 to up to ~2 on random inputs, for
      // 1-2% speed), so we take 0 and skip only rescales that change nothing.
      float mx[kMT][2];
      bool need = false;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          float m = row_max[mt][hh];
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            m = fmaxf(m, s[mt][j][2 * hh]);
            m = fmaxf(m, s[mt][j][2 * hh + 1]);
          }
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          mx[mt][hh] = m;
          // -inf + c stays -inf; a row with no key so far and none now: no need
          need |= m * sl2 > fmaf(row_max[mt][hh], sl2, kRescaleLog2);
        }
      if (__any_sync(0xffffffffu, need)) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const float m = mx[mt][hh];
            const float ms = m == kNegInf ? 0.f : m * sl2;
            const float corr = ex2_approx(fmaf(row_max[mt][hh], sl2, -ms));
            row_max[mt][hh] = m;
            row_sum[mt][hh] *= corr;
#pragma unroll
            for (int j = 0; j < kDT; ++j) {
              acc_o[mt][j][2 * hh] *= corr;
              acc_o[mt][j][2 * hh + 1] *= corr;
            }
          }
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const float m = row_max[mt][hh];
          const float ms = m == kNegInf ? 0.f : m * sl2;
          float sum = row_sum[mt][hh];
#pragma unroll
          for (int j = 0; j < kNT; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pe = ex2_approx(fmaf(s[mt][j][2 * hh + e], sl2, -ms));
              s[mt][j][2 * hh + e] = pe;
              sum += pe;
            }
          row_sum[mt][hh] = sum;
        }

      // O += P V
#pragma unroll
      for (int kk = 0; kk < C::kPSteps; ++kk) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kDT / 2; ++dp) {
          uint32_t bv[4];
          ldmatrix_x4_trans(bv, sV + tile_off<C>(16 * kk + (lane & 15), 2 * dp + (lane >> 4)));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_m16n8k16<T>(acc_o[mt][2 * dp], a[mt], bv[0], bv[1]);
            mma_m16n8k16<T>(acc_o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
          }
        }
      }
    };

    for (int n = n_block_max - 1; n >= n_block_min; --n) {
      if (n >= hi_mask_start || n < lo_mask_end) {
        step(n, std::true_type{});
      } else {
        step(n, std::false_type{});
      }
    }
  }

  // ---- epilogue: O / l through this warp's rows of sQ (only this warp ever
  // read them), then 16-byte stores of the valid rows and columns; LSE.
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = row_sum[mt][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = row0 + mt * 16 + g + 8 * hh;
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        *reinterpret_cast<uint32_t*>(smem + tile_off<C>(r, j) + 4 * t) =
            pack2<T>(acc_o[mt][j][2 * hh] * inv, acc_o[mt][j][2 * hh + 1] * inv);
      }
      if (p.lse != nullptr && t == 0 && m0 + r < sq) {
        const float lse = l > 0.f ? (__log2f(l) + row_max[mt][hh] * sl2) * kLn2 : kNegInf;
        p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + q_start + m0 + r] = lse;
      }
    }
  __syncwarp();
  constexpr int kWarpChunks = 16 * kMT * C::kChunks;
  static_assert(kWarpChunks % 32 == 0, "epilogue chunks per lane");
#pragma unroll
  for (int it = 0; it < kWarpChunks / 32; ++it) {
    const int idx = lane + 32 * it;
    const int r = row0 + idx / C::kChunks;
    const int c = idx % C::kChunks;
    if (m0 + r < sq && c < dchunks) {
      const uint4 val = *reinterpret_cast<const uint4*>(smem + tile_off<C>(r, c));
      *reinterpret_cast<uint4*>(go + r * p.o_row_stride + c * 8) = val;
    }
  }
}

template <class C>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream) {
  const long long num_m = fwd_num_m_blocks(p.seqlen_q, C::kBlockM);
  const long long grid = num_m * p.heads_q * p.batch;
  if (grid <= 0) return cudaSuccess;  // no query rows: nothing to write
  if (grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  // The dynamic shared-memory opt-in is per device: set it once for each.
  static std::atomic<unsigned long long> attr_done{0};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const unsigned long long bit = dev < 64 ? (1ull << dev) : 0ull;
  if (bit == 0 || (attr_done.load(std::memory_order_acquire) & bit) == 0) {
    err = cudaFuncSetAttribute(fwd_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               C::kSmemBytes);
    if (err != cudaSuccess) return err;
    attr_done.fetch_or(bit, std::memory_order_acq_rel);
  }
  fwd_kernel<C><<<static_cast<unsigned>(grid), C::kNThreads, C::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sm80
}  // namespace flash4
