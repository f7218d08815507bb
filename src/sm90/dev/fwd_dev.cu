// Development driver for the Hopper forward (not part of the library build).
//   correctness: fresh random inputs, poisoned outputs, float64 CPU reference
//     and a same-precision reference (fp32 scores, P rounded to the input
//     dtype before P.V); pass iff err <= 2 * err_lowp + atol (FlashAttention rule).
//   timing: B*S = 16k tokens, H = 2048/d, CUDA events, median.
// Build (from the repo root):
//   nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Iinclude -Isrc \
//     -gencode=arch=compute_90a,code=sm_90a src/sm90/dev/fwd_dev.cu src/sm90/fwd_sm90.cu \
//     src/sm90/fwd_sm90_hdim64.cu src/sm90/fwd_sm90_hdim128.cu src/sm90/fwd_sm90_hdim256.cu -o fwd_dev
// Usage: fwd_dev [check|bench|all|small] [quick]  (all = check + bench; small = memcheck set)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/host_dtype.hpp"
#include "common/kernels.hpp"
#include "sm90/fwd_launch.cuh"

using namespace flash4;

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, \
                   __LINE__, cudaGetErrorString(e_));                                      \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

// ---------------------------------------------------------------- variants
// Variant 0 is the library path (sm90_fwd_run); the others are launched here.
// (Earlier variant sets, e.g. the FA4 threshold-8 rescale and 3 consumer
// warpgroups, are in this file's git history before the K/V block sweep.)
struct VariantInfo {
  const char* name;
};
static const VariantInfo kVariants[] = {
    {"lib"},        // 0: library path (sm90_fwd_run)
    {"P:n128"},     // 1: persistent, pp, overlap, threshold 0: kBlockN 128 (shipped d128)
    {"-"},          // 2 (was kBlockN 144: no gain)
    {"P:n160"},     // 3
    {"P:n176,aO"},  // 4 (aO: O staged over Q, a separate buffer does not fit)
    {"-"},          // 5 (was kBlockN 192: spills 40 B)
    {"P:n128,s3,aO"},  // 6: 3 K/V stages (O over Q)
    {"P:n128,qR"},  // 7: Q in registers (RS Q K^T), threshold 0
    {"P:n160,qR"},  // 8
    {"P:3wg"},      // 9: head dim 64, 3 consumer warpgroups (shipped d64)
    {"P:3wg,qR"},   // 10
    {"P:2wg,qR"},   // 11 (head dim 64)
    {"d256"},       // 12: head dim 256 as shipped (one CTA per tile, no ping-pong)
    {"d256,pp"},    // 13: with ping-pong
    {"P:d256"},     // 14: persistent
    {"P:d256,pp"},  // 15
    {"-"},          // 16 (was: O rescale after P.V retires, FA3's place: 3-4% slower)
    {"P:2wg"},      // 17: head dim 64, 2 consumer warpgroups (128-row tiles)
    {"-"},          // 18 (was: 4 partial row max / sum chains: 2-3.5% slower)
    {"-"},          // 19 (was: 2 chains: ~1% slower)
    {"-"},          // 20 (was: contiguous tile order per CTA: 10-45% slower)
    {"-"},          // 21 (was: head dim 128, 3 consumers without intra-WG overlap: 0.83-0.88x)
    {"-"},          // 22 (the same, one CTA per tile)
    {"-"},          // 23 (was: head dim 64, row sums by a P.V wgmma with N = 72: 0.91-0.95x)
    {"-"},          // 24 (the same with threshold 8: 0.96-0.98x)
    {"P:3wg,t8"},   // 25: head dim 64, 3 consumers, 3 K/V stages, rescale threshold 8
    {"P:3wg,t0"},   // 26: the same, threshold 0 (shipped before 2026-12-02 23:40)
    {"P:qR,t8"},    // 27: head dim 128, Q in registers, rescale threshold 8
    {"P:qR,t1"},    // 28: threshold 1
    {"P:3wg,t2"},   // 29: head dim 64 as 26, threshold 2
    {"P:3wg,t1"},   // 30: threshold 1
    {"P:qR,t2"},    // 31: head dim 128, threshold 2
    {"L:d256,t8"},  // 32: head dim 256 as shipped (persistence by the library's rule), threshold 8
    {"L:d256,t2"},  // 33: threshold 2
    {"P:3wg,t8,e4"},  // 34: head dim 64 as 25 (threshold 8), 1/4 of the exp2 by polynomial
    {"P:3wg,t8,e8"},  // 35: 1/8
    {"P:3wg,t8,e2"},  // 36: 1/2
    {"P:qR,t8,e4"},   // 37: head dim 128 as 27 (threshold 8), 1/4 by polynomial
    {"P:qR,t8,e8"},   // 38: 1/8
    {"L:d256,t8,pp"}, // 39: head dim 256 as 32 (threshold 8) with ping-pong
};
static bool variant_persistent(int v) { return v != 12 && v != 13; }
// "L:" variants follow the library's per-call persistence choice.
static bool variant_follows_library(int v) { return v == 32 || v == 33 || v == 39; }

// Builds the kernel arguments for configuration C the library's way (fwd_prepare).
template <class C>
static cudaError_t run_cfg(const FwdParams& p, bool persistent, cudaStream_t st) {
  sm90::FwdKernelArgs a;
  sm90::FwdLaunch l;
  const cudaError_t e = sm90::fwd_prepare(p, C::kBlockM, C::kBlockN, persistent, &a, &l);
  if (e != cudaSuccess) return e;
  return sm90::launch_fwd<C>(a, l, st);
}

template <int D, typename T, bool Causal>
cudaError_t launch_variant(int v, const FwdParams& p, cudaStream_t st) {
  using namespace sm90;
  const bool P = variant_follows_library(v) ? sm90::choose_fwd(D, Causal, p.seqlen_k).persistent
                                            : variant_persistent(v);
  if constexpr (D == 256) {
    switch (v) {
      case 12: case 14: return run_cfg<FwdConfig<256, T, Causal, 2, true, false, 0, 0, 2>>(p, P, st);
      case 13: case 15: return run_cfg<FwdConfig<256, T, Causal, 2, true, true, 0, 0, 2>>(p, P, st);
      case 32: return run_cfg<FwdConfig<256, T, Causal, 2, true, false, 8, 0, 2>>(p, P, st);
      case 33: return run_cfg<FwdConfig<256, T, Causal, 2, true, false, 2, 0, 2>>(p, P, st);
      case 39: return run_cfg<FwdConfig<256, T, Causal, 2, true, true, 8, 0, 2>>(p, P, st);
      default: return cudaErrorNotSupported;
    }
  } else if constexpr (D == 64) {
    switch (v) {
      case 9: return run_cfg<FwdConfig<64, T, Causal, 2, true, true, 0, 0, 3, false, 128>>(p, P, st);
      case 10: return run_cfg<FwdConfig<64, T, Causal, 2, true, true, 0, 0, 3, false, 128, true>>(p, P, st);
      case 11: return run_cfg<FwdConfig<64, T, Causal, 2, true, true, 0, 0, 2, false, 128, true>>(p, P, st);
      case 17: return run_cfg<FwdConfig<64, T, Causal, 2, true, true, 0, 0, 2, false, 128>>(p, P, st);
      case 29: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 2, 0, 3, false, 128>>(p, P, st);
      case 30: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 1, 0, 3, false, 128>>(p, P, st);
      case 26: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 0, 0, 3, false, 128>>(p, P, st);
      case 25: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 8, 0, 3, false, 128>>(p, P, st);
      case 34: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 8, 4, 3, false, 128>>(p, P, st);
      case 35: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 8, 8, 3, false, 128>>(p, P, st);
      case 36: return run_cfg<FwdConfig<64, T, Causal, 3, true, true, 8, 2, 3, false, 128>>(p, P, st);

      default: return cudaErrorNotSupported;
    }
  } else {
  // FwdConfig<D, T, causal, stages, overlap, pingpong, threshold, emu, consumers, softcap, block_n>
  switch (v) {
    case 1: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 0, 0, 2, false, 128>>(p, P, st);
    case 3: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 0, 0, 2, false, 160>>(p, P, st);
    case 4: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 0, 0, 2, false, 176>>(p, P, st);
    case 6: return run_cfg<FwdConfig<D, T, Causal, 3, true, true, 0, 0, 2, false, 128>>(p, P, st);
    case 7: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 0, 0, 2, false, 128, true>>(p, P, st);
    case 8: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 0, 0, 2, false, 160, true>>(p, P, st);
    case 27: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 8, 0, 2, false, 128, true>>(p, P, st);
    case 28: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 1, 0, 2, false, 128, true>>(p, P, st);
    case 31: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 2, 0, 2, false, 128, true>>(p, P, st);
    case 37: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 8, 4, 2, false, 128, true>>(p, P, st);
    case 38: return run_cfg<FwdConfig<D, T, Causal, 2, true, true, 8, 8, 2, false, 128, true>>(p, P, st);

    default: return cudaErrorInvalidValue;
  }
  }
}

static cudaError_t run_variant(int v, const FwdParams& p, cudaStream_t st) {
  if (v == 0) return sm90_fwd_run(p, st);
  // Only bf16 variants are instantiated here (fp16 goes through the library).
  if (p.dtype != DType::kBf16) return cudaErrorNotSupported;
  if (p.headdim == 256)
    return p.is_causal ? launch_variant<256, __nv_bfloat16, true>(v, p, st)
                       : launch_variant<256, __nv_bfloat16, false>(v, p, st);
  if (p.headdim == 64)
    return p.is_causal ? launch_variant<64, __nv_bfloat16, true>(v, p, st)
                       : launch_variant<64, __nv_bfloat16, false>(v, p, st);
  if (p.headdim != 128 || (v >= 9 && v < 21)) return cudaErrorNotSupported;
  return p.is_causal ? launch_variant<128, __nv_bfloat16, true>(v, p, st)
                     : launch_variant<128, __nv_bfloat16, false>(v, p, st);
}

// ---------------------------------------------------------------- problem
struct Case {
  int B, Sq, Sk, Hq, Hkv, D;
  bool causal, bf16;
  int layout;  // 0: (B,S,H,D) packed; 1: (B,H,S,D) physical; 2: (B,S,H,D+8) padded rows
  int init;    // 0: randn; 1: "ramp" (keys grow toward index 0, q x2: exercises rescaling)
  int sms = 0; // > 0: persistent grid limited to this many CTAs (many tiles per CTA)
};

struct Layout {
  int64_t rs, hs, bs, total;
};
static Layout make_layout(int layout, int B, int S, int H, int D) {
  Layout L;
  if (layout == 1) {
    L.rs = D; L.hs = (int64_t)S * D; L.bs = (int64_t)H * S * D;
  } else {
    int64_t Dp = layout == 2 ? D + 8 : D;
    L.rs = (int64_t)H * Dp; L.hs = Dp; L.bs = (int64_t)S * H * Dp;
  }
  L.total = L.bs * B;
  return L;
}

static inline float to_f(uint16_t x, bool bf16) { return bf16 ? bf16_to_float(x) : fp16_to_float(x); }
static inline uint16_t from_f(float x, bool bf16) { return bf16 ? float_to_bf16(x) : float_to_fp16(x); }
static inline float round_dt(float x, bool bf16) { return bf16 ? round_to_bf16(x) : round_to_fp16(x); }

struct RefOut {
  std::vector<double> o64;   // (B, Sq, Hq, D) packed
  std::vector<double> lse64; // (B, Hq, Sq)
  std::vector<float> olp;    // low precision reference output (rounded)
};

static void reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                      const std::vector<float>& v, const Layout& Lq, const Layout& Lk, double scale,
                      RefOut* out) {
  const int D = c.D;
  out->o64.assign((size_t)c.B * c.Sq * c.Hq * D, 0.0);
  out->lse64.assign((size_t)c.B * c.Hq * c.Sq, 0.0);
  out->olp.assign((size_t)c.B * c.Sq * c.Hq * D, 0.f);
  const int group = c.Hq / c.Hkv;
  const int nthr = std::max(1u, std::thread::hardware_concurrency());
  const int64_t rows_total = (int64_t)c.B * c.Hq * c.Sq;
  auto work = [&](int t) {
    std::vector<double> s64(c.Sk);
    std::vector<float> s32(c.Sk);
    std::vector<double> acc64(D);
    std::vector<float> acc32(D);
    for (int64_t r = t; r < rows_total; r += nthr) {
      const int i = (int)(r % c.Sq);
      const int h = (int)((r / c.Sq) % c.Hq);
      const int b = (int)(r / ((int64_t)c.Sq * c.Hq));
      const int hk = h / group;
      const float* qi = &q[b * Lq.bs + h * Lq.hs + (int64_t)i * Lq.rs];
      int hi = c.Sk;  // visible keys [0, hi)
      if (c.causal) hi = std::min(c.Sk, std::max(0, i + c.Sk - c.Sq + 1));
      double m64 = -INFINITY;
      float m32 = -INFINITY;
      for (int j = 0; j < hi; ++j) {
        const float* kj = &k[b * Lk.bs + hk * Lk.hs + (int64_t)j * Lk.rs];
        double a = 0.0;
        float a32 = 0.f;
        for (int d = 0; d < D; ++d) {
          a += (double)qi[d] * (double)kj[d];
          a32 += qi[d] * kj[d];
        }
        s64[j] = a * scale;
        s32[j] = a32 * (float)scale;
        m64 = std::max(m64, s64[j]);
        m32 = std::max(m32, s32[j]);
      }
      std::fill(acc64.begin(), acc64.end(), 0.0);
      std::fill(acc32.begin(), acc32.end(), 0.f);
      double l64 = 0.0;
      float l32 = 0.f;
      for (int j = 0; j < hi; ++j) {
        const float* vj = &v[b * Lk.bs + hk * Lk.hs + (int64_t)j * Lk.rs];
        const double p64 = std::exp(s64[j] - m64);
        const float p32 = std::exp(s32[j] - m32);
        const float p32r = round_dt(p32, c.bf16);
        l64 += p64;
        l32 += p32;
        for (int d = 0; d < D; ++d) {
          acc64[d] += p64 * vj[d];
          acc32[d] += p32r * vj[d];
        }
      }
      const size_t obase = (((size_t)b * c.Sq + i) * c.Hq + h) * D;
      for (int d = 0; d < D; ++d) {
        out->o64[obase + d] = hi > 0 ? acc64[d] / l64 : 0.0;
        out->olp[obase + d] = hi > 0 ? round_dt(acc32[d] / l32, c.bf16) : 0.f;
      }
      out->lse64[((size_t)b * c.Hq + h) * c.Sq + i] = hi > 0 ? m64 + std::log(l64) : -INFINITY;
    }
  };
  std::vector<std::thread> th;
  for (int t = 0; t < nthr; ++t) th.emplace_back(work, t);
  for (auto& x : th) x.join();
}

static uint64_t g_seed = 12345;
static int g_num_sms = 0;

struct DevBuffers {
  uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  float* lse = nullptr;
  void free_all() {
    cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(lse);
  }
};

static FwdParams make_params(const Case& c, const DevBuffers& db, const Layout& Lq, const Layout& Lk) {
  FwdParams p;
  p.q = db.q; p.k = db.k; p.v = db.v; p.out = db.o; p.lse = db.lse;
  p.q_batch_stride = Lq.bs; p.q_row_stride = Lq.rs; p.q_head_stride = Lq.hs;
  p.k_batch_stride = Lk.bs; p.k_row_stride = Lk.rs; p.k_head_stride = Lk.hs;
  p.v_batch_stride = Lk.bs; p.v_row_stride = Lk.rs; p.v_head_stride = Lk.hs;
  p.o_batch_stride = Lq.bs; p.o_row_stride = Lq.rs; p.o_head_stride = Lq.hs;
  p.lse_batch_stride = (int64_t)c.Hq * c.Sq; p.lse_head_stride = c.Sq;
  p.batch = c.B; p.seqlen_q = c.Sq; p.seqlen_k = c.Sk; p.heads_q = c.Hq; p.heads_kv = c.Hkv;
  p.headdim = c.D;
  p.softmax_scale = 1.f / std::sqrt((float)c.D);
  p.softmax_scale_log2 = p.softmax_scale * 1.4426950408889634f;
  p.is_causal = c.causal;
  if (c.causal) p.window_right = 0;
  p.dtype = c.bf16 ? DType::kBf16 : DType::kFp16;
  p.num_sms = g_num_sms;
  return p;
}

// Returns true on pass.
static bool check_case(const Case& c, const std::vector<int>& variants) {
  const Layout Lq = make_layout(c.layout, c.B, c.Sq, c.Hq, c.D);
  const Layout Lk = make_layout(c.layout, c.B, c.Sk, c.Hkv, c.D);
  std::mt19937_64 rng(g_seed++);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> hq(Lq.total, 0), hk(Lk.total, 0), hv(Lk.total, 0);
  std::vector<float> fq(Lq.total, 0.f), fk(Lk.total, 0.f), fv(Lk.total, 0.f);
  auto fill = [&](std::vector<uint16_t>& h, std::vector<float>& f, const Layout& L, int S, int H,
                  int which) {
    for (int b = 0; b < c.B; ++b)
      for (int s = 0; s < S; ++s)
        for (int hh = 0; hh < H; ++hh)
          for (int d = 0; d < c.D; ++d) {
            float x = nd(rng);
            if (c.init == 1) {
              if (which == 0) x *= 2.f;
              if (which == 1) x *= 1.f + 4.f * (1.f - (float)s / std::max(1, S));
            }
            const int64_t idx = b * L.bs + hh * L.hs + (int64_t)s * L.rs + d;
            h[idx] = from_f(x, c.bf16);
            f[idx] = to_f(h[idx], c.bf16);
          }
  };
  fill(hq, fq, Lq, c.Sq, c.Hq, 0);
  fill(hk, fk, Lk, c.Sk, c.Hkv, 1);
  fill(hv, fv, Lk, c.Sk, c.Hkv, 2);
  const double scale = 1.0 / std::sqrt((double)c.D);
  RefOut ref;
  reference(c, fq, fk, fv, Lq, Lk, (double)(float)(1.f / std::sqrt((float)c.D)), &ref);
  (void)scale;

  DevBuffers db;
  CK(cudaMalloc(&db.q, Lq.total * 2));
  CK(cudaMalloc(&db.k, Lk.total * 2));
  CK(cudaMalloc(&db.v, Lk.total * 2));
  CK(cudaMalloc(&db.o, Lq.total * 2));
  CK(cudaMalloc(&db.lse, (size_t)c.B * c.Hq * c.Sq * 4 + 4));
  CK(cudaMemcpy(db.q, hq.data(), Lq.total * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(db.k, hk.data(), Lk.total * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(db.v, hv.data(), Lk.total * 2, cudaMemcpyHostToDevice));
  FwdParams p = make_params(c, db, Lq, Lk);
  if (c.sms > 0) p.num_sms = c.sms;
  std::string why;
  if (!sm90_fwd_supported(p, 9, 0, &why)) {
    std::printf("UNSUPPORTED %s\n", why.c_str());
    db.free_all();
    return false;
  }
  // Low-precision reference error vs fp64.
  double err_lp = 0.0, maxref = 0.0;
  for (size_t i = 0; i < ref.o64.size(); ++i) {
    err_lp = std::max(err_lp, std::fabs((double)ref.olp[i] - ref.o64[i]));
    maxref = std::max(maxref, std::fabs(ref.o64[i]));
  }
  const double atol = maxref * (c.bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11));
  bool all_ok = true;
  std::vector<uint16_t> ho(Lq.total);
  std::vector<float> hl((size_t)c.B * c.Hq * c.Sq);
  for (int v : variants) {
    if (v != 0 && !c.bf16) continue;
    CK(cudaMemset(db.o, 0xFF, Lq.total * 2));  // NaN in fp16 and bf16
    CK(cudaMemset(db.lse, 0xFF, (size_t)c.B * c.Hq * c.Sq * 4));
    cudaError_t e = run_variant(v, p, 0);
    if (e != cudaSuccess) {
      std::printf("FAIL launch variant %d: %s\n", v, cudaGetErrorString(e));
      all_ok = false;
      continue;
    }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(ho.data(), db.o, Lq.total * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hl.data(), db.lse, hl.size() * 4, cudaMemcpyDeviceToHost));
    double err = 0.0, err_lse = 0.0;
    int64_t bad_nan = 0, pad_touched = 0, lse_bad = 0;
    for (int b = 0; b < c.B; ++b)
      for (int i = 0; i < c.Sq; ++i)
        for (int h = 0; h < c.Hq; ++h) {
          const int64_t base = b * Lq.bs + h * Lq.hs + (int64_t)i * Lq.rs;
          for (int d = 0; d < c.D; ++d) {
            const float x = to_f(ho[base + d], c.bf16);
            const double r = ref.o64[(((size_t)b * c.Sq + i) * c.Hq + h) * c.D + d];
            if (!std::isfinite(x)) { ++bad_nan; continue; }
            err = std::max(err, std::fabs((double)x - r));
          }
          if (c.layout == 2)
            for (int d = c.D; d < c.D + 8; ++d)
              if (ho[base + d] != 0xFFFF) ++pad_touched;
          const size_t li = ((size_t)b * c.Hq + h) * c.Sq + i;
          const double lr = ref.lse64[li];
          const float lk = hl[li];
          if (std::isinf(lr)) {
            if (!(std::isinf(lk) && lk < 0)) ++lse_bad;
          } else if (!std::isfinite(lk)) {
            ++lse_bad;
          } else {
            const double el = std::fabs((double)lk - lr);
            err_lse = std::max(err_lse, el);
            if (el > 1e-3 + 1e-5 * std::fabs(lr)) ++lse_bad;
          }
        }
    const bool ok = bad_nan == 0 && pad_touched == 0 && lse_bad == 0 && err <= 2 * err_lp + atol;
    all_ok &= ok;
    std::printf("%s v%d %-18s B%d Sq%d Sk%d H%d/%d d%d %s %s L%d I%d | err %.3e lowp %.3e ratio %.2f "
                "lse_err %.2e nan %lld pad %lld lse_bad %lld\n",
                ok ? "PASS" : "FAIL", v, kVariants[v].name, c.B, c.Sq, c.Sk, c.Hq, c.Hkv, c.D,
                c.causal ? "causal" : "full", c.bf16 ? "bf16" : "fp16", c.layout, c.init, err, err_lp,
                err_lp > 0 ? err / err_lp : 0.0, err_lse, (long long)bad_nan, (long long)pad_touched,
                (long long)lse_bad);
  }
  db.free_all();
  return all_ok;
}

static int run_checks(bool quick) {
  std::vector<int> lib_only = {0};
  std::vector<int> d128 = {0, 27, 37, 38}, d64 = {0, 25, 34, 35, 36}, d256 = {0, 32, 39};
  int fails = 0, total = 0;
  for (int D : {64, 128, 256})
    for (int causal : {0, 1}) {
      std::vector<std::pair<Case, bool>> cases = {
          {{1, 1, 1, 1, 1, D, (bool)causal, true, 0, 0}, false},
          {{2, 113, 203, 4, 2, D, (bool)causal, true, 0, 0}, true},
          {{1, 203, 113, 2, 1, D, (bool)causal, true, 0, 0}, true},
          {{1, 1023, 1024, 2, 2, D, (bool)causal, true, 1, 0}, true},
          {{3, 256, 384, 6, 3, D, (bool)causal, true, 2, 0}, false},
          {{1, 129, 1, 1, 1, D, (bool)causal, true, 0, 0}, false},
          {{1, 64, 4096, 2, 1, D, (bool)causal, true, 0, 1}, true},
          {{1, 2048, 2048, 2, 2, D, (bool)causal, true, 0, 1}, true},
          {{2, 113, 203, 4, 2, D, (bool)causal, false, 0, 0}, false},
          {{1, 1023, 1024, 2, 1, D, (bool)causal, false, 2, 1}, false},
          {{3, 1000, 300, 12, 4, D, (bool)causal, true, 0, 0}, true},
          {{2, 777, 1500, 16, 16, D, (bool)causal, true, 1, 0, 7}, true},
          {{2, 300, 1000, 4, 2, D, (bool)causal, true, 0, 1, 3}, true},
      };
      if (!quick) cases.push_back({{1, 4224, 4224, 2, 1, D, (bool)causal, true, 2, 0}, false});
      for (auto& cc : cases) {
        ++total;
        if (!check_case(cc.first, !cc.second ? lib_only : D == 128 ? d128 : D == 256 ? d256 : d64)) ++fails;
      }
    }
  std::printf("CHECK SUMMARY: %d/%d cases passed\n", total - fails, total);
  return fails;
}

// Approximately normal bf16 values (sum of 4 hashed uniforms), on the device.
__global__ void fill_random_bf16(uint16_t* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
    float acc = 0.f;
    for (int r = 0; r < 4; ++r) {
      x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
      acc += (float)(x >> 40) * (1.0f / 16777216.0f);
    }
    const float v = (acc - 2.f) * 1.7320508f;  // mean 0, variance 1
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    p[i] = *reinterpret_cast<uint16_t*>(&b);
  }
}

static void run_bench(const std::vector<int>& variants, const std::vector<int>& dims,
                      const std::vector<int>& causals, const std::vector<int>& seqlens) {
  std::printf("\nBENCH (bf16, B*S=16k, H=2048/d, median of 9 interleaved rounds x 10 launches, TFLOP/s)\n");
  std::printf("%-5s %-6s %-6s", "d", "causal", "S");
  for (int v : variants) std::printf(" %10.10s", kVariants[v].name);
  std::printf("\n");
  for (int D : dims)
    for (int causal : causals)
      for (int S : seqlens) {
        Case c{16384 / S, S, S, 2048 / D, 2048 / D, D, (bool)causal, true, 0, 0};
        const Layout L = make_layout(0, c.B, S, c.Hq, D);
        DevBuffers db;
        CK(cudaMalloc(&db.q, L.total * 2));
        CK(cudaMalloc(&db.k, L.total * 2));
        CK(cudaMalloc(&db.v, L.total * 2));
        CK(cudaMalloc(&db.o, L.total * 2));
        CK(cudaMalloc(&db.lse, (size_t)c.B * c.Hq * S * 4));
        for (auto* ptr : {db.q, db.k, db.v}) {
          fill_random_bf16<<<1024, 256>>>(ptr, L.total, g_seed++);
          CK(cudaGetLastError());
        }
        CK(cudaDeviceSynchronize());
        FwdParams p = make_params(c, db, L, L);
        const double flops = 4.0 * c.B * c.Hq * (double)S * S * D * (causal ? 0.5 : 1.0);
        std::printf("%-5d %-6d %-6d", D, causal, S);
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        // Interleaved rounds: every variant is timed once per round, so clock
        // and thermal drift spread evenly over the variants.
        std::vector<std::vector<float>> ms(variants.size());
        for (size_t vi = 0; vi < variants.size(); ++vi)
          for (int w = 0; w < 2; ++w) CK(run_variant(variants[vi], p, 0));
        CK(cudaDeviceSynchronize());
        constexpr int kReps = 10;
        for (int r = 0; r < 9; ++r)
          for (size_t vi = 0; vi < variants.size(); ++vi) {
            const int v = variants[vi];
            CK(run_variant(v, p, 0));  // keeps the GPU busy while the timed launches are queued
            CK(cudaEventRecord(e0));
            for (int i = 0; i < kReps; ++i) CK(run_variant(v, p, 0));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float t;
            CK(cudaEventElapsedTime(&t, e0, e1));
            ms[vi].push_back(t / kReps);
          }
        CK(cudaGetLastError());
        for (size_t vi = 0; vi < variants.size(); ++vi) {
          std::sort(ms[vi].begin(), ms[vi].end());
          const double med = ms[vi][ms[vi].size() / 2];
          std::printf(" %10.1f", flops / (med * 1e-3) / 1e12);
        }
        std::fflush(stdout);
        std::printf("\n");
        CK(cudaEventDestroy(e0));
        CK(cudaEventDestroy(e1));
        db.free_all();
      }
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  const bool quick = argc > 2 && std::string(argv[2]) == "quick";
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device %s cc %d.%d SMs %d\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  g_num_sms = prop.multiProcessorCount;
  int fails = 0;
  if (mode == "check" || mode == "all") fails = run_checks(quick);
  if (mode == "small") {  // a few small cases through the library (for compute-sanitizer)
    std::vector<int> lib_only = {0};
    for (int D : {64, 128})
      for (int causal : {0, 1}) {
        Case a{2, 113, 203, 4, 2, D, (bool)causal, true, 0, 0};
        Case b{1, 300, 1500, 2, 1, D, (bool)causal, false, 2, 0, 3};
        fails += !check_case(a, lib_only);
        fails += !check_case(b, lib_only);
      }
    std::printf("SMALL: %d failures\n", fails);
  }
  if (mode == "bench" || mode == "all") {
    // K/V block sweep at head dim 128 (lib = shipped).
    // Variant sweeps (docs/perf.md, 2026-11-24 10:00-11:00): K/V block and
    // Q in registers at head dim 128, head dim 256 ping-pong / persistence,
    // head dim 64 with 2 consumer warpgroups.
    run_bench({0, 1, 7, 3, 4}, {128}, {0}, {1024, 4096, 16384});
    run_bench({0, 12, 13, 14, 15}, {256}, {0, 1}, {512, 2048, 16384});
    run_bench({0, 9, 17, 11}, {64}, {0, 1}, {512, 1024, 4096});
  }
  if (mode == "benchthr") {  // FA4's rescale threshold: 0 (shipped), 1, 2, 8
    run_bench({0, 26, 30, 29, 25}, {64}, {0, 1}, {512, 1024, 4096, 16384});
    run_bench({0, 7, 28, 31, 27}, {128}, {0, 1}, {1024, 4096, 16384});
    run_bench({0, 26, 30, 29, 25}, {64}, {0}, {1024, 4096, 16384});
    run_bench({0, 7, 28, 31, 27}, {128}, {0}, {1024, 4096, 16384});
  }
  if (mode == "benchemu") {  // FA4's software exp2 on top of threshold 8
    run_bench({0, 25, 36, 34, 35}, {64}, {0}, {1024, 4096, 16384});
    run_bench({0, 25, 36, 34, 35}, {64}, {1}, {2048, 4096, 16384});
    run_bench({0, 27, 37, 38}, {128}, {0, 1}, {1024, 4096, 16384});
    run_bench({0, 25, 36, 34, 35}, {64}, {0}, {1024, 4096, 16384});
  }
  if (mode == "benchshort") {  // short lengths with threshold 8: d64 causal 3 consumers, d256 ping-pong
    run_bench({0, 25}, {64}, {1}, {512, 1024, 2048});
    run_bench({0, 32, 39}, {256}, {0, 1}, {512, 1024, 2048});
    run_bench({0, 25}, {64}, {1}, {512, 1024, 2048});
    run_bench({0, 32, 39}, {256}, {0, 1}, {512, 1024, 2048});
  }
  if (mode == "benchthr256") {  // the same at head dim 256 (shipped: threshold 0)
    run_bench({0, 33, 32}, {256}, {0, 1}, {512, 1024, 2048, 4096, 8192, 16384});
    run_bench({0, 33, 32}, {256}, {0, 1}, {1024, 4096, 16384});
  }
  return fails ? 1 : 0;
}
