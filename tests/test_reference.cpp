// Tests of the CPU reference (flash4_reference_fwd / flash4_reference_bwd),
// host only. The reference is checked against
//   * a direct formula written here: the full masked score matrix of every
//     (batch, head), softmax, matmul, all in double, naive and obviously
//     correct (forward and the explicit backward formulas);
//   * central finite differences of L = sum(out * dout) computed with the
//     FP64 forward (backward), which does not rely on any gradient formula;
//   * properties of the mask semantics (fully masked rows, window (0, 0)
//     copying V, keys nobody sees);
//   * the LOWP (same-precision) mode against FP64;
//   * bitwise equality across thread counts, and untouched outputs on
//     validation failure.
// Inputs are seeded random values (never all zero); storage outside every
// tensor view is NaN, so a read of padding poisons the result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/host_dtype.hpp"
#include "flash4/flash4.h"

namespace {

using i64 = int64_t;
constexpr double kInf = std::numeric_limits<double>::infinity();

uint64_t base_seed() {
  const char* s = std::getenv("FLASH4_TEST_SEED");
  return s ? std::strtoull(s, nullptr, 10) : 20240611ull;
}

i64 elem_size(flash4_dtype t) {
  switch (t) {
    case FLASH4_DTYPE_FP16:
    case FLASH4_DTYPE_BF16: return 2;
    case FLASH4_DTYPE_FP32:
    case FLASH4_DTYPE_INT32: return 4;
    case FLASH4_DTYPE_FP64: return 8;
  }
  return 1;
}

const char* dtype_str(flash4_dtype t) {
  switch (t) {
    case FLASH4_DTYPE_FP16: return "fp16";
    case FLASH4_DTYPE_BF16: return "bf16";
    case FLASH4_DTYPE_FP32: return "fp32";
    case FLASH4_DTYPE_FP64: return "fp64";
    case FLASH4_DTYPE_INT32: return "int32";
  }
  return "?";
}

// Nearest value of the dtype (inputs are generated representable).
double quantize(double x, flash4_dtype t) {
  switch (t) {
    case FLASH4_DTYPE_FP16: return flash4::round_to_fp16(float(x));
    case FLASH4_DTYPE_BF16: return flash4::round_to_bf16(float(x));
    case FLASH4_DTYPE_FP32: return float(x);
    default: return x;
  }
}

// ---------------------------------------------------------------------------
// Host tensors: a view (shape, strides, element offset) into shared storage.
// ---------------------------------------------------------------------------
struct Tensor {
  flash4_dtype dtype = FLASH4_DTYPE_FP32;
  std::vector<i64> shape, stride;
  i64 base = 0;  // element offset of the view in the storage
  std::shared_ptr<std::vector<uint8_t>> storage;

  int ndim() const { return int(shape.size()); }
  i64 numel() const {
    i64 n = 1;
    for (i64 s : shape) n *= s;
    return n;
  }
  uint8_t* ptr(i64 off) const { return storage->data() + (base + off) * elem_size(dtype); }
  i64 offset(const std::vector<i64>& idx) const {
    i64 o = 0;
    for (size_t i = 0; i < idx.size(); ++i) o += idx[i] * stride[i];
    return o;
  }
  double get_off(i64 off) const {
    const uint8_t* p = ptr(off);
    switch (dtype) {
      case FLASH4_DTYPE_FP16: { uint16_t h; std::memcpy(&h, p, 2); return flash4::fp16_to_float(h); }
      case FLASH4_DTYPE_BF16: { uint16_t h; std::memcpy(&h, p, 2); return flash4::bf16_to_float(h); }
      case FLASH4_DTYPE_FP32: { float f; std::memcpy(&f, p, 4); return f; }
      case FLASH4_DTYPE_FP64: { double d; std::memcpy(&d, p, 8); return d; }
      case FLASH4_DTYPE_INT32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    }
    return 0;
  }
  // Stores x (which must be representable for 16-bit/fp32 dtypes).
  void set_off(i64 off, double x) const {
    uint8_t* p = ptr(off);
    switch (dtype) {
      case FLASH4_DTYPE_FP16: { uint16_t h = flash4::float_to_fp16(float(x)); std::memcpy(p, &h, 2); break; }
      case FLASH4_DTYPE_BF16: { uint16_t h = flash4::float_to_bf16(float(x)); std::memcpy(p, &h, 2); break; }
      case FLASH4_DTYPE_FP32: { float f = float(x); std::memcpy(p, &f, 4); break; }
      case FLASH4_DTYPE_FP64: { std::memcpy(p, &x, 8); break; }
      case FLASH4_DTYPE_INT32: { int32_t v = int32_t(x); std::memcpy(p, &v, 4); break; }
    }
  }
  double get(const std::vector<i64>& idx) const { return get_off(offset(idx)); }
  void set(const std::vector<i64>& idx, double x) const { set_off(offset(idx), x); }

  flash4_tensor view() const {
    flash4_tensor t{};
    t.data = storage ? static_cast<void*>(ptr(0)) : nullptr;
    t.dtype = dtype;
    t.ndim = ndim();
    for (int i = 0; i < ndim(); ++i) {
      t.shape[i] = shape[i];
      t.stride[i] = stride[i];
    }
    return t;
  }
  // Every logical index, in row-major order.
  template <class F>
  void for_each(F&& f) const {
    std::vector<i64> idx(shape.size(), 0);
    if (numel() == 0) return;
    for (;;) {
      f(idx);
      int d = ndim() - 1;
      while (d >= 0 && ++idx[d] == shape[d]) idx[d--] = 0;
      if (d < 0) return;
    }
  }
};

std::vector<i64> contiguous_strides(const std::vector<i64>& shape) {
  std::vector<i64> st(shape.size(), 1);
  for (int i = int(shape.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * std::max<i64>(shape[i + 1], 1);
  return st;
}

// Storage of `elems` elements, every byte NaN-patterned (0xFF: NaN for the
// float types, -1 for int32).
std::shared_ptr<std::vector<uint8_t>> make_storage(i64 elems, flash4_dtype t) {
  return std::make_shared<std::vector<uint8_t>>(size_t(std::max<i64>(elems, 1) * elem_size(t)), 0xFF);
}

// `slack` extra elements after the last one (room for trailing padding).
Tensor make_tensor(flash4_dtype t, std::vector<i64> shape, std::vector<i64> stride = {}, i64 slack = 0) {
  Tensor x;
  x.dtype = t;
  x.shape = shape;
  x.stride = stride.empty() ? contiguous_strides(shape) : stride;
  i64 last = 0;
  for (size_t i = 0; i < shape.size(); ++i) last += (shape[i] > 0 ? shape[i] - 1 : 0) * x.stride[i];
  x.storage = make_storage(last + 1 + slack, t);
  return x;
}

Tensor view_of(const Tensor& owner, i64 base, std::vector<i64> shape, std::vector<i64> stride) {
  Tensor x = owner;
  x.base = owner.base + base;
  x.shape = std::move(shape);
  x.stride = std::move(stride);
  return x;
}

// Random values of the dtype: N(0, sigma^2) rounded to the dtype, or, with
// grid > 0, multiples of 2^-grid (exact in fp32 also after +- 2^-(grid-4)).
void fill_random(const Tensor& t, std::mt19937_64& rng, double sigma = 1.0, int grid = 0) {
  std::normal_distribution<double> nd(0.0, sigma);
  t.for_each([&](const std::vector<i64>& idx) {
    double x = std::max(-3.0 * sigma, std::min(3.0 * sigma, nd(rng)));
    if (grid > 0) x = std::ldexp(std::nearbyint(std::ldexp(x, grid)), -grid);
    t.set(idx, quantize(x, t.dtype));
  });
}

// ---------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------
struct Opts {
  bool causal = false;
  int left = -1, right = -1;
  double scale = 0.0;  // 0: 1/sqrt(D)
  double softcap = 0.0;
};

struct Problem {
  i64 B = 1, Sq = 1, Sk = 1, Hq = 1, Hkv = 1, D = 8;
  bool varlen = false;
  std::vector<int32_t> lq, lk;  // varlen: per-sequence lengths
  std::vector<int32_t> used_k;  // optional seqused_k
  i64 pad_q = 0, pad_k = 0;     // varlen: extra rows after the last sequence
  flash4_dtype dtype = FLASH4_DTYPE_FP32;
  Opts o;

  std::string str() const {
    std::ostringstream os;
    os << dtype_str(dtype) << (varlen ? " varlen" : "") << " B=" << B << " Sq=" << Sq << " Sk=" << Sk
       << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " causal=" << o.causal << " win=(" << o.left << ","
       << o.right << ") scale=" << o.scale << " softcap=" << o.softcap << " used_k=" << !used_k.empty();
    return os.str();
  }
};

// A problem made concrete: inputs, int32 arrays, and the index maps.
struct Case {
  Problem p;
  std::vector<int32_t> cu_q, cu_k;
  i64 total_q = 0, total_k = 0;
  Tensor q, k, v, dout;
  Tensor cu_q_t, cu_k_t, used_t;

  i64 sq(i64 b) const { return p.varlen ? cu_q[b + 1] - cu_q[b] : p.Sq; }
  i64 sk_rows(i64 b) const { return p.varlen ? cu_k[b + 1] - cu_k[b] : p.Sk; }
  i64 sk(i64 b) const { return p.used_k.empty() ? sk_rows(b) : p.used_k[b]; }
  std::vector<i64> qi(i64 b, i64 i, i64 h, i64 d) const {
    return p.varlen ? std::vector<i64>{cu_q[b] + i, h, d} : std::vector<i64>{b, i, h, d};
  }
  std::vector<i64> ki(i64 b, i64 j, i64 h, i64 d) const {
    return p.varlen ? std::vector<i64>{cu_k[b] + j, h, d} : std::vector<i64>{b, j, h, d};
  }
  std::vector<i64> li(i64 b, i64 h, i64 i) const {
    return p.varlen ? std::vector<i64>{h, cu_q[b] + i} : std::vector<i64>{b, h, i};
  }
  std::vector<i64> q_shape() const {
    return p.varlen ? std::vector<i64>{total_q, p.Hq, p.D} : std::vector<i64>{p.B, p.Sq, p.Hq, p.D};
  }
  std::vector<i64> k_shape() const {
    return p.varlen ? std::vector<i64>{total_k, p.Hkv, p.D} : std::vector<i64>{p.B, p.Sk, p.Hkv, p.D};
  }
  std::vector<i64> lse_shape() const {
    return p.varlen ? std::vector<i64>{p.Hq, total_q} : std::vector<i64>{p.B, p.Hq, p.Sq};
  }
  double scale() const { return p.o.scale != 0.0 ? p.o.scale : 1.0 / std::sqrt(double(p.D)); }
  int right() const { return p.o.causal ? 0 : p.o.right; }
  // The mask rule, straight from the definition.
  bool visible(i64 b, i64 i, i64 j) const {
    const i64 n = sk(b), m = sq(b);
    if (j < 0 || j >= n) return false;
    if (right() >= 0 && j > i + n - m + right()) return false;
    if (p.o.left >= 0 && j < i + n - m - p.o.left) return false;
    return true;
  }

  flash4_attn_options options() const {
    flash4_attn_options o{};
    o.softmax_scale = p.o.scale;
    o.causal = p.o.causal ? 1 : 0;
    o.use_window = 1;
    o.window_left = p.o.left;
    o.window_right = p.o.right;
    o.softcap = p.o.softcap;
    if (p.varlen) {
      o.cu_seqlens_q = cu_q_t.view();
      o.cu_seqlens_k = cu_k_t.view();
      o.max_seqlen_q = *std::max_element(p.lq.begin(), p.lq.end());
      o.max_seqlen_k = *std::max_element(p.lk.begin(), p.lk.end());
    }
    if (!p.used_k.empty()) o.seqused_k = used_t.view();
    o.path = FLASH4_PATH_AUTO;
    return o;
  }
  flash4_fwd_args fwd_args(const Tensor& out, const Tensor* lse) const {
    flash4_fwd_args a{};
    a.q = q.view();
    a.k = k.view();
    a.v = v.view();
    a.out = out.view();
    if (lse) a.lse = lse->view();
    a.opt = options();
    return a;
  }
  flash4_bwd_args bwd_args(const Tensor& out, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                           const Tensor& dv) const {
    flash4_bwd_args a{};
    a.dout = dout.view();
    a.q = q.view();
    a.k = k.view();
    a.v = v.view();
    a.out = out.view();
    a.lse = lse.view();
    a.dq = dq.view();
    a.dk = dk.view();
    a.dv = dv.view();
    a.opt = options();
    return a;
  }
};

// Contiguous q/k/v/dout (fresh random inputs) for a problem.
Case make_case(const Problem& p, uint64_t seed, int grid = 0) {
  Case c;
  c.p = p;
  if (p.varlen) {
    c.p.B = i64(p.lq.size());
    c.cu_q.assign(1, 0);
    c.cu_k.assign(1, 0);
    for (size_t b = 0; b < p.lq.size(); ++b) {
      c.cu_q.push_back(c.cu_q.back() + p.lq[b]);
      c.cu_k.push_back(c.cu_k.back() + p.lk[b]);
    }
    c.total_q = c.cu_q.back() + p.pad_q;
    c.total_k = c.cu_k.back() + p.pad_k;
    c.cu_q_t = make_tensor(FLASH4_DTYPE_INT32, {c.p.B + 1});
    c.cu_k_t = make_tensor(FLASH4_DTYPE_INT32, {c.p.B + 1});
    for (i64 b = 0; b <= c.p.B; ++b) {
      c.cu_q_t.set({b}, c.cu_q[b]);
      c.cu_k_t.set({b}, c.cu_k[b]);
    }
  }
  if (!p.used_k.empty()) {
    c.used_t = make_tensor(FLASH4_DTYPE_INT32, {c.p.B});
    for (i64 b = 0; b < c.p.B; ++b) c.used_t.set({b}, p.used_k[b]);
  }
  std::mt19937_64 rng(seed);
  c.q = make_tensor(p.dtype, c.q_shape());
  c.k = make_tensor(p.dtype, c.k_shape());
  c.v = make_tensor(p.dtype, c.k_shape());
  c.dout = make_tensor(p.dtype, c.q_shape());
  fill_random(c.q, rng, 1.0, grid);
  fill_random(c.k, rng, 1.0, grid);
  fill_random(c.v, rng, 1.0, grid);
  fill_random(c.dout, rng, 1.0, grid);
  return c;
}

// ---------------------------------------------------------------------------
// The direct formula (double): full score matrix per (batch, head).
// ---------------------------------------------------------------------------
struct Direct {
  Tensor out, lse;     // FP64, q-shaped / lse-shaped
  Tensor dq, dk, dv;   // FP64 (backward only)
};

// P (sq x sk, zero where masked) of (b, h); returns false for rows with no
// visible key in `empty`. Also the raw scaled scores (for tanh').
void direct_probs(const Case& c, i64 b, i64 h, std::vector<double>* P, std::vector<double>* raw,
                  std::vector<double>* lse) {
  const i64 m = c.sq(b), n = c.sk(b), hk = h / (c.p.Hq / c.p.Hkv), D = c.p.D;
  P->assign(size_t(m * n), 0.0);
  raw->assign(size_t(m * n), 0.0);
  lse->assign(size_t(m), -kInf);
  std::vector<double> S(size_t(m * n), -kInf);
  for (i64 i = 0; i < m; ++i)
    for (i64 j = 0; j < n; ++j) {
      if (!c.visible(b, i, j)) continue;
      double dot = 0;
      for (i64 d = 0; d < D; ++d) dot += c.q.get(c.qi(b, i, h, d)) * c.k.get(c.ki(b, j, hk, d));
      double s = c.scale() * dot;
      (*raw)[size_t(i * n + j)] = s;
      if (c.p.o.softcap > 0) s = c.p.o.softcap * std::tanh(s / c.p.o.softcap);
      S[size_t(i * n + j)] = s;
    }
  for (i64 i = 0; i < m; ++i) {
    double mx = -kInf;
    for (i64 j = 0; j < n; ++j) mx = std::max(mx, S[size_t(i * n + j)]);
    if (mx == -kInf) continue;  // no visible key: P row 0, lse -inf
    double l = 0;
    for (i64 j = 0; j < n; ++j) l += std::exp(S[size_t(i * n + j)] - mx);
    for (i64 j = 0; j < n; ++j) (*P)[size_t(i * n + j)] = std::exp(S[size_t(i * n + j)] - mx) / l;
    (*lse)[size_t(i)] = mx + std::log(l);
  }
}

Direct direct(const Case& c, bool backward) {
  Direct r;
  r.out = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  r.lse = make_tensor(FLASH4_DTYPE_FP64, c.lse_shape());
  if (backward) {
    r.dq = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
    r.dk = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());
    r.dv = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());
    for (const Tensor* t : {&r.dk, &r.dv})
      for (i64 b = 0; b < c.p.B; ++b)
        for (i64 j = 0; j < c.sk_rows(b); ++j)
          for (i64 h = 0; h < c.p.Hkv; ++h)
            for (i64 d = 0; d < c.p.D; ++d) t->set(c.ki(b, j, h, d), 0.0);
  }
  const i64 D = c.p.D;
  std::vector<double> P, raw, lse;
  for (i64 b = 0; b < c.p.B; ++b) {
    const i64 m = c.sq(b), n = c.sk(b);
    for (i64 h = 0; h < c.p.Hq; ++h) {
      const i64 hk = h / (c.p.Hq / c.p.Hkv);
      direct_probs(c, b, h, &P, &raw, &lse);
      std::vector<double> O(size_t(m * D), 0.0);
      for (i64 i = 0; i < m; ++i) {
        for (i64 d = 0; d < D; ++d) {
          double acc = 0;
          for (i64 j = 0; j < n; ++j) acc += P[size_t(i * n + j)] * c.v.get(c.ki(b, j, hk, d));
          O[size_t(i * D + d)] = acc;
          r.out.set(c.qi(b, i, h, d), acc);
        }
        r.lse.set(c.li(b, h, i), lse[size_t(i)]);
      }
      if (!backward) continue;
      for (i64 i = 0; i < m; ++i) {
        double Di = 0;
        for (i64 d = 0; d < D; ++d) Di += c.dout.get(c.qi(b, i, h, d)) * O[size_t(i * D + d)];
        std::vector<double> dS(size_t(n), 0.0);
        for (i64 j = 0; j < n; ++j) {
          double dP = 0;
          for (i64 d = 0; d < D; ++d) dP += c.dout.get(c.qi(b, i, h, d)) * c.v.get(c.ki(b, j, hk, d));
          double ds = P[size_t(i * n + j)] * (dP - Di);
          if (c.p.o.softcap > 0) {
            const double t = std::tanh(raw[size_t(i * n + j)] / c.p.o.softcap);
            ds *= 1.0 - t * t;
          }
          dS[size_t(j)] = ds;
        }
        for (i64 d = 0; d < D; ++d) {
          double acc = 0;
          for (i64 j = 0; j < n; ++j) acc += dS[size_t(j)] * c.k.get(c.ki(b, j, hk, d));
          r.dq.set(c.qi(b, i, h, d), c.scale() * acc);
        }
        for (i64 j = 0; j < n; ++j)
          for (i64 d = 0; d < D; ++d) {
            const auto kidx = c.ki(b, j, hk, d);
            r.dk.set(kidx, r.dk.get(kidx) + c.scale() * dS[size_t(j)] * c.q.get(c.qi(b, i, h, d)));
            r.dv.set(kidx, r.dv.get(kidx) + P[size_t(i * n + j)] * c.dout.get(c.qi(b, i, h, d)));
          }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------
// Running the reference and comparing.
// ---------------------------------------------------------------------------
struct FwdOut {
  Tensor out, lse;
};

FwdOut run_fwd(const Case& c, flash4_ref_precision prec, flash4_dtype out_dt = FLASH4_DTYPE_FP64,
               flash4_dtype lse_dt = FLASH4_DTYPE_FP64, int threads = 2) {
  FwdOut r;
  r.out = make_tensor(out_dt, c.q_shape());
  r.lse = make_tensor(lse_dt, c.lse_shape());
  flash4_fwd_args a = c.fwd_args(r.out, &r.lse);
  const flash4_status st = flash4_reference_fwd(&a, prec, threads);
  EXPECT_EQ(st, FLASH4_OK) << flash4_last_error();
  return r;
}

struct BwdOut {
  Tensor dq, dk, dv;
};

BwdOut run_bwd(const Case& c, flash4_ref_precision prec, flash4_dtype grad_dt = FLASH4_DTYPE_FP64,
               int threads = 2) {
  const FwdOut f = run_fwd(c, FLASH4_REF_FP64, FLASH4_DTYPE_FP64, FLASH4_DTYPE_FP32, threads);
  BwdOut r;
  r.dq = make_tensor(grad_dt, c.q_shape());
  r.dk = make_tensor(grad_dt, c.k_shape());
  r.dv = make_tensor(grad_dt, c.k_shape());
  flash4_bwd_args a = c.bwd_args(f.out, f.lse, r.dq, r.dk, r.dv);
  const flash4_status st = flash4_reference_bwd(&a, prec, threads);
  EXPECT_EQ(st, FLASH4_OK) << flash4_last_error();
  return r;
}

// Visits the logical elements of the sequences: q-like (rows of queries) or
// k-like (every stored key row of a sequence, used or not).
template <class F>
void for_q_rows(const Case& c, F&& f) {
  for (i64 b = 0; b < c.p.B; ++b)
    for (i64 i = 0; i < c.sq(b); ++i)
      for (i64 h = 0; h < c.p.Hq; ++h)
        for (i64 d = 0; d < c.p.D; ++d) f(c.qi(b, i, h, d), b, i, h, d);
}
template <class F>
void for_k_rows(const Case& c, F&& f) {
  for (i64 b = 0; b < c.p.B; ++b)
    for (i64 j = 0; j < c.sk_rows(b); ++j)
      for (i64 h = 0; h < c.p.Hkv; ++h)
        for (i64 d = 0; d < c.p.D; ++d) f(c.ki(b, j, h, d), b, j, h, d);
}

// max |a - b| over the q-like / k-like elements; NaN anywhere counts as inf.
double max_diff_q(const Case& c, const Tensor& a, const Tensor& b) {
  double e = 0;
  for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    const double x = a.get(idx), y = b.get(idx);
    const double d = std::isnan(x) || std::isnan(y) ? kInf : std::fabs(x - y);
    e = std::max(e, d);
  });
  return e;
}
double max_diff_k(const Case& c, const Tensor& a, const Tensor& b) {
  double e = 0;
  for_k_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    const double x = a.get(idx), y = b.get(idx);
    const double d = std::isnan(x) || std::isnan(y) ? kInf : std::fabs(x - y);
    e = std::max(e, d);
  });
  return e;
}
double max_abs_q(const Case& c, const Tensor& a) {
  double e = 0;
  for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) { e = std::max(e, std::fabs(a.get(idx))); });
  return e;
}
double max_abs_k(const Case& c, const Tensor& a) {
  double e = 0;
  for_k_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) { e = std::max(e, std::fabs(a.get(idx))); });
  return e;
}

// LSE: equal infinities, else close.
void expect_lse_near(const Case& c, const Tensor& got, const Tensor& want, double tol) {
  for (i64 b = 0; b < c.p.B; ++b)
    for (i64 h = 0; h < c.p.Hq; ++h)
      for (i64 i = 0; i < c.sq(b); ++i) {
        const double g = got.get(c.li(b, h, i)), w = want.get(c.li(b, h, i));
        if (std::isinf(w)) {
          EXPECT_EQ(g, w) << "lse b=" << b << " h=" << h << " i=" << i;
        } else {
          EXPECT_NEAR(g, w, tol * (1 + std::fabs(w))) << "lse b=" << b << " h=" << h << " i=" << i;
        }
      }
}

// Checks out/lse of the FP64 reference against the direct formula.
void check_fwd_against_direct(const Case& c) {
  SCOPED_TRACE(c.p.str());
  const Direct want = direct(c, false);
  const FwdOut got = run_fwd(c, FLASH4_REF_FP64);
  EXPECT_LE(max_diff_q(c, got.out, want.out), 1e-12 * std::max(1.0, max_abs_q(c, want.out)));
  expect_lse_near(c, got.lse, want.lse, 1e-12);
  // Rows with no visible key: exactly 0 and -inf.
  for (i64 b = 0; b < c.p.B; ++b)
    for (i64 i = 0; i < c.sq(b); ++i) {
      bool any = false;
      for (i64 j = 0; j < c.sk(b); ++j) any = any || c.visible(b, i, j);
      if (any) continue;
      for (i64 h = 0; h < c.p.Hq; ++h) {
        EXPECT_EQ(got.lse.get(c.li(b, h, i)), -kInf);
        for (i64 d = 0; d < c.p.D; ++d) EXPECT_EQ(got.out.get(c.qi(b, i, h, d)), 0.0);
      }
    }
}

void check_bwd_against_direct(const Case& c, flash4_dtype grad_dt = FLASH4_DTYPE_FP64) {
  SCOPED_TRACE(c.p.str());
  const Direct want = direct(c, true);
  const BwdOut got = run_bwd(c, FLASH4_REF_FP64, grad_dt);
  const double tol = grad_dt == FLASH4_DTYPE_FP64 ? 1e-11 : 1e-6;
  EXPECT_LE(max_diff_q(c, got.dq, want.dq), tol * std::max(1.0, max_abs_q(c, want.dq))) << "dq";
  EXPECT_LE(max_diff_k(c, got.dk, want.dk), tol * std::max(1.0, max_abs_k(c, want.dk))) << "dk";
  EXPECT_LE(max_diff_k(c, got.dv, want.dv), tol * std::max(1.0, max_abs_k(c, want.dv))) << "dv";
}

// ===========================================================================
// Forward against the direct formula: dtype x shape x options.
// ===========================================================================
struct ShapeCase {
  i64 B, Sq, Sk, Hq, Hkv, D;
};
const ShapeCase kShapes[] = {
    {1, 1, 1, 1, 1, 8},    {2, 7, 13, 2, 1, 16}, {1, 13, 7, 4, 4, 24},
    {2, 33, 33, 4, 1, 64}, {1, 33, 17, 2, 2, 40}, {3, 1, 33, 4, 2, 8},
};
const Opts kOpts[] = {
    Opts{},
    Opts{true, -1, -1, 0.0, 0.0},   // causal
    Opts{false, -1, -1, 0.37, 0.0}, // custom scale
    Opts{false, -1, -1, 1.0, 2.5},  // softcap (scores well into tanh's bend)
    Opts{false, 4, 2, 0.0, 0.0},    // window both sides
    Opts{true, 3, -1, 0.0, 1.5},    // causal + window_left + softcap
};
const flash4_dtype kDtypes[] = {FLASH4_DTYPE_FP32, FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16};

class ReferenceFwdDirect : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(ReferenceFwdDirect, MatchesDirectFormula) {
  const auto [di, si, oi] = GetParam();
  const ShapeCase& s = kShapes[si];
  Problem p;
  p.B = s.B; p.Sq = s.Sq; p.Sk = s.Sk; p.Hq = s.Hq; p.Hkv = s.Hkv; p.D = s.D;
  p.dtype = kDtypes[di];
  p.o = kOpts[oi];
  const Case c = make_case(p, base_seed() + 1000 * di + 100 * si + oi);
  check_fwd_against_direct(c);
}

INSTANTIATE_TEST_SUITE_P(Reference, ReferenceFwdDirect,
                         ::testing::Combine(::testing::Range(0, 3), ::testing::Range(0, 6),
                                            ::testing::Range(0, 6)));

// ===========================================================================
// Mask semantics.
// ===========================================================================
Problem small(i64 Sq, i64 Sk, Opts o, flash4_dtype dt = FLASH4_DTYPE_FP32, i64 Hq = 2, i64 Hkv = 1,
              i64 D = 16, i64 B = 2) {
  Problem p;
  p.B = B; p.Sq = Sq; p.Sk = Sk; p.Hq = Hq; p.Hkv = Hkv; p.D = D;
  p.dtype = dt;
  p.o = o;
  return p;
}

TEST(ReferenceMask, CausalMoreQueriesThanKeysMasksFirstRows) {
  Opts o;
  o.causal = true;
  const Case c = make_case(small(11, 4, o), base_seed() + 1);
  const FwdOut got = run_fwd(c, FLASH4_REF_FP64);
  // Bottom-right alignment: row i sees keys j <= i - 7, so rows 0..6 see none.
  for (i64 b = 0; b < c.p.B; ++b)
    for (i64 h = 0; h < c.p.Hq; ++h)
      for (i64 i = 0; i < 11; ++i) {
        const double l = got.lse.get(c.li(b, h, i));
        if (i < 7) {
          EXPECT_EQ(l, -kInf) << i;
          for (i64 d = 0; d < c.p.D; ++d) EXPECT_EQ(got.out.get(c.qi(b, i, h, d)), 0.0);
        } else {
          EXPECT_TRUE(std::isfinite(l)) << i;
        }
      }
  // Row 7 sees exactly key 0: its output is v[0] and its lse the only score.
  for (i64 d = 0; d < c.p.D; ++d)
    EXPECT_DOUBLE_EQ(got.out.get(c.qi(1, 7, 1, d)), c.v.get(c.ki(1, 0, 0, d)));
  check_fwd_against_direct(c);
}

TEST(ReferenceMask, CausalFewerQueriesThanKeys) {
  Opts o;
  o.causal = true;
  const Case c = make_case(small(4, 9, o), base_seed() + 2);
  check_fwd_against_direct(c);
  // Row 0 sees keys 0..5: changing key 6..8 must not change it, changing
  // key 5 must.
  Case c2 = c;
  c2.k = make_tensor(c.k.dtype, c.k.shape);
  c2.v = make_tensor(c.v.dtype, c.v.shape);
  c.k.for_each([&](const std::vector<i64>& idx) { c2.k.set(idx, c.k.get(idx)); });
  c.v.for_each([&](const std::vector<i64>& idx) { c2.v.set(idx, c.v.get(idx)); });
  for (i64 d = 0; d < c.p.D; ++d) c2.v.set({0, 7, 0, d}, c.v.get({0, 7, 0, d}) + 1.0);
  const FwdOut a = run_fwd(c, FLASH4_REF_FP64), b = run_fwd(c2, FLASH4_REF_FP64);
  for (i64 d = 0; d < c.p.D; ++d) {
    EXPECT_EQ(a.out.get({0, 0, 0, d}), b.out.get({0, 0, 0, d}));  // row 0 does not see key 7
    EXPECT_NE(a.out.get({0, 3, 0, d}), b.out.get({0, 3, 0, d}));  // row 3 sees keys 0..8
  }
}

TEST(ReferenceMask, DiagonalWindowCopiesV) {
  // causal with window_left 0: query i sees only key i + sk - sq, so out = v.
  Opts o;
  o.causal = true;
  o.left = 0;
  const Case c = make_case(small(5, 8, o, FLASH4_DTYPE_BF16, 4, 2), base_seed() + 3);
  const FwdOut got = run_fwd(c, FLASH4_REF_FP64);
  for_q_rows(c, [&](const std::vector<i64>& idx, i64 b, i64 i, i64 h, i64 d) {
    EXPECT_EQ(got.out.get(idx), c.v.get(c.ki(b, i + 3, h / 2, d)));
  });
  check_fwd_against_direct(c);
}

TEST(ReferenceMask, WindowLeftOnly) {
  Opts o;
  o.left = 2;
  check_fwd_against_direct(make_case(small(13, 7, o), base_seed() + 4));
  check_fwd_against_direct(make_case(small(7, 13, o, FLASH4_DTYPE_FP16), base_seed() + 5));
}

TEST(ReferenceMask, WindowRightOnly) {
  Opts o;
  o.right = 1;
  check_fwd_against_direct(make_case(small(13, 7, o), base_seed() + 6));  // rows 0..4 masked
  check_fwd_against_direct(make_case(small(7, 13, o, FLASH4_DTYPE_BF16), base_seed() + 7));
}

TEST(ReferenceMask, WindowBothSides) {
  Opts o;
  o.left = 3;
  o.right = 2;
  check_fwd_against_direct(make_case(small(33, 17, o), base_seed() + 8));
  o.left = 0;
  o.right = 0;
  check_fwd_against_direct(make_case(small(10, 3, o), base_seed() + 9));  // only rows 7..9 see a key
}

TEST(ReferenceMask, SeqUsedKZeroMasksWholeBatch) {
  Problem p = small(6, 9, Opts{});
  p.B = 3;
  p.used_k = {9, 0, 4};
  const Case c = make_case(p, base_seed() + 10);
  const FwdOut got = run_fwd(c, FLASH4_REF_FP64);
  for (i64 i = 0; i < 6; ++i)
    for (i64 h = 0; h < c.p.Hq; ++h) {
      EXPECT_EQ(got.lse.get({1, h, i}), -kInf);
      for (i64 d = 0; d < c.p.D; ++d) EXPECT_EQ(got.out.get({1, i, h, d}), 0.0);
    }
  check_fwd_against_direct(c);
  Opts o;
  o.causal = true;
  p.o = o;
  check_fwd_against_direct(make_case(p, base_seed() + 11));  // causal aligned to seqused_k
}

// ===========================================================================
// Varlen, LSE layout, strides, output dtypes.
// ===========================================================================
Problem varlen_problem(flash4_dtype dt, Opts o, bool used) {
  Problem p;
  p.varlen = true;
  p.lq = {3, 0, 7, 5, 1, 4};
  p.lk = {4, 6, 0, 9, 2, 13};
  if (used) p.used_k = {4, 2, 0, 5, 0, 13};
  p.pad_q = 2;
  p.pad_k = 3;
  p.Hq = 4;
  p.Hkv = 2;
  p.D = 24;
  p.dtype = dt;
  p.o = o;
  return p;
}

TEST(ReferenceVarlen, ZeroLengthSequencesAndSeqUsedK) {
  int n = 0;
  for (flash4_dtype dt : kDtypes)
    for (bool used : {false, true})
      for (int oi : {0, 1, 3, 4}) {
        const Case c = make_case(varlen_problem(dt, kOpts[oi], used), base_seed() + 20 + n++);
        check_fwd_against_direct(c);
      }
}

TEST(ReferenceVarlen, WritesNothingOutsideTheSequences) {
  const Case c = make_case(varlen_problem(FLASH4_DTYPE_BF16, Opts{}, true), base_seed() + 40);
  const FwdOut got = run_fwd(c, FLASH4_REF_FP64, FLASH4_DTYPE_FP32, FLASH4_DTYPE_FP32);
  // Rows after cu_seqlens_q[B] (padding) keep their NaN fill.
  for (i64 r = c.cu_q.back(); r < c.total_q; ++r)
    for (i64 h = 0; h < c.p.Hq; ++h) {
      EXPECT_TRUE(std::isnan(got.lse.get({h, r})));
      for (i64 d = 0; d < c.p.D; ++d) EXPECT_TRUE(std::isnan(got.out.get({r, h, d})));
    }
  // Sequence 2 has no keys and sequence 4 uses none: zeros and -inf.
  for (i64 i = 0; i < 7; ++i) EXPECT_EQ(got.lse.get({0, c.cu_q[2] + i}), -kInf);
  EXPECT_EQ(got.lse.get({3, c.cu_q[4]}), -kInf);
}

TEST(ReferenceStrides, PackedQkvAndPaddedOutputs) {
  // qkv packed (B, S, 3, H, D) with a padded head dim: head stride D + 8,
  // row stride 3 * H * (D + 8). out with padded heads, lse with padded rows.
  for (flash4_dtype dt : kDtypes)
    for (bool varlen : {false, true}) {
      Problem p = small(13, 13, Opts{true, -1, -1, 0.0, 0.0}, dt, 3, 3, 16, 2);
      if (varlen) {
        p.varlen = true;
        p.lq = {13, 5, 0};
        p.lk = {13, 5, 0};
      }
      Case c = make_case(p, base_seed() + 50 + (varlen ? 1 : 0) + 2 * int(dt));
      const i64 H = 3, D = 16, Dp = D + 8;
      const i64 rows = varlen ? c.total_q : c.p.B * 13;
      Tensor packed = make_tensor(dt, {rows, 3, H, Dp});
      std::vector<i64> st = varlen ? std::vector<i64>{3 * H * Dp, Dp, 1}
                                   : std::vector<i64>{13 * 3 * H * Dp, 3 * H * Dp, Dp, 1};
      Tensor q = view_of(packed, 0, c.q_shape(), st);
      Tensor k = view_of(packed, H * Dp, c.k_shape(), st);
      Tensor v = view_of(packed, 2 * H * Dp, c.k_shape(), st);
      c.q.for_each([&](const std::vector<i64>& idx) { q.set(idx, c.q.get(idx)); });
      c.k.for_each([&](const std::vector<i64>& idx) { k.set(idx, c.k.get(idx)); });
      c.v.for_each([&](const std::vector<i64>& idx) { v.set(idx, c.v.get(idx)); });
      const Direct want = direct(c, false);  // from the contiguous copies
      Case s = c;
      s.q = q;
      s.k = k;
      s.v = v;
      std::vector<i64> ost = varlen ? std::vector<i64>{H * Dp, Dp, 1} : std::vector<i64>{13 * H * Dp, H * Dp, Dp, 1};
      Tensor out = make_tensor(FLASH4_DTYPE_FP64, s.q_shape(), ost, Dp);
      std::vector<i64> lst = varlen ? std::vector<i64>{c.total_q + 5, 1} : std::vector<i64>{H * 20, 20, 1};
      Tensor lse = make_tensor(FLASH4_DTYPE_FP32, s.lse_shape(), lst);
      flash4_fwd_args a = s.fwd_args(out, &lse);
      ASSERT_EQ(flash4_reference_fwd(&a, FLASH4_REF_FP64, 3), FLASH4_OK) << flash4_last_error();
      SCOPED_TRACE(c.p.str());
      EXPECT_LE(max_diff_q(c, out, want.out), 1e-12);
      expect_lse_near(c, lse, want.lse, 1e-6);
      // The head padding of out is untouched.
      for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64 d) {
        if (d != 0) return;
        std::vector<i64> pad = idx;
        for (i64 e = D; e < Dp; ++e) {
          pad.back() = e;
          EXPECT_TRUE(std::isnan(out.get(pad)));
        }
      });
      // Backward through the same packed views, padded dq.
      Case g = s;
      Tensor dq = make_tensor(FLASH4_DTYPE_FP64, s.q_shape(), ost);
      Tensor dk = make_tensor(FLASH4_DTYPE_FP64, s.k_shape());
      Tensor dv = make_tensor(FLASH4_DTYPE_FP64, s.k_shape());
      flash4_bwd_args ba = g.bwd_args(out, lse, dq, dk, dv);
      ASSERT_EQ(flash4_reference_bwd(&ba, FLASH4_REF_FP64, 3), FLASH4_OK) << flash4_last_error();
      const Direct wb = direct(c, true);
      EXPECT_LE(max_diff_q(c, dq, wb.dq), 1e-11 * std::max(1.0, max_abs_q(c, wb.dq)));
      EXPECT_LE(max_diff_k(c, dk, wb.dk), 1e-11 * std::max(1.0, max_abs_k(c, wb.dk)));
      EXPECT_LE(max_diff_k(c, dv, wb.dv), 1e-11 * std::max(1.0, max_abs_k(c, wb.dv)));
    }
}

TEST(ReferenceLse, NullLseIsNotWrittenAndOutUnchanged) {
  const Case c = make_case(small(9, 12, Opts{}), base_seed() + 60);
  const FwdOut with = run_fwd(c, FLASH4_REF_FP64);
  Tensor out = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  flash4_fwd_args a = c.fwd_args(out, nullptr);
  ASSERT_EQ(flash4_reference_fwd(&a, FLASH4_REF_FP64, 1), FLASH4_OK) << flash4_last_error();
  EXPECT_EQ(max_diff_q(c, out, with.out), 0.0);
}

// Is `got` a nearest value of dtype `t` to x? (Checks the final rounding.)
bool is_nearest(double got, double x, flash4_dtype t) {
  if (std::isinf(x) || std::isnan(x)) return got == x || (std::isnan(got) && std::isnan(x));
  uint16_t h = t == FLASH4_DTYPE_BF16 ? flash4::float_to_bf16(float(got)) : flash4::float_to_fp16(float(got));
  auto val = [&](uint16_t bits) {
    return t == FLASH4_DTYPE_BF16 ? double(flash4::bf16_to_float(bits)) : double(flash4::fp16_to_float(bits));
  };
  if (val(h) != got) return false;  // not representable
  const double e = std::fabs(got - x);
  // neighbours in the encoding (same sign side; also cross 0 via -0/+0)
  for (int delta : {-1, 1}) {
    const uint16_t n = uint16_t(h + delta);
    const double nv = val(n);
    if (!std::isnan(nv) && std::fabs(nv - x) < e) return false;
  }
  return true;
}

TEST(ReferenceOutputDtypes, Fp64OracleRoundsCorrectlyToEveryOutputDtype) {
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16}) {
    Opts o;
    o.softcap = 3.0;
    const Case c = make_case(small(17, 21, o, dt, 4, 2, 32), base_seed() + 70 + int(dt));
    const FwdOut exact = run_fwd(c, FLASH4_REF_FP64);
    const FwdOut low = run_fwd(c, FLASH4_REF_FP64, dt, FLASH4_DTYPE_FP32);
    const FwdOut f32 = run_fwd(c, FLASH4_REF_FP64, FLASH4_DTYPE_FP32, FLASH4_DTYPE_FP32);
    int bad = 0;
    for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
      bad += !is_nearest(low.out.get(idx), exact.out.get(idx), dt);
      bad += f32.out.get(idx) != double(float(exact.out.get(idx)));
    });
    EXPECT_EQ(bad, 0) << dtype_str(dt);
    expect_lse_near(c, f32.lse, exact.lse, 1e-7);
  }
}

TEST(ReferenceOutputDtypes, RoundsOnceFromDouble) {
  // Four keys with equal scores give P = 1/4 exactly; v[:, 0] is chosen so
  // that out[0] = 1 + 2^-(m+1) + tiny (m = fraction bits of the dtype), just
  // above a tie of the 16-bit type. Rounding via float first would land on
  // the tie and round to even (1.0); the correct result is 1 + 2^-m.
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16}) {
    Case c = make_case(small(1, 4, Opts{}, dt, 1, 1, 8, 1), base_seed() + 75 + int(dt));
    for (i64 j = 1; j < 4; ++j)
      for (i64 d = 0; d < 8; ++d) c.k.set({0, j, 0, d}, c.k.get({0, 0, 0, d}));
    const int m = dt == FLASH4_DTYPE_BF16 ? 7 : 10;
    const double tiny = dt == FLASH4_DTYPE_BF16 ? std::ldexp(1.0, -28) : std::ldexp(1.0, -24);
    const double vals[4] = {4.0, std::ldexp(1.0, -(m - 1)), tiny, tiny};
    for (i64 j = 0; j < 4; ++j) c.v.set({0, j, 0, 0}, vals[j]);
    const FwdOut exact = run_fwd(c, FLASH4_REF_FP64);
    const FwdOut low = run_fwd(c, FLASH4_REF_FP64, dt, FLASH4_DTYPE_FP32);
    EXPECT_EQ(exact.out.get({0, 0, 0, 0}), 1.0 + std::ldexp(1.0, -(m + 1)) + tiny / 2);
    EXPECT_EQ(low.out.get({0, 0, 0, 0}), 1.0 + std::ldexp(1.0, -m)) << dtype_str(dt);
    for (i64 d = 0; d < 8; ++d) EXPECT_TRUE(is_nearest(low.out.get({0, 0, 0, d}), exact.out.get({0, 0, 0, d}), dt));
  }
}

// ===========================================================================
// Backward: finite differences of L = sum(out * dout).
// ===========================================================================
// Richardson-extrapolated central differences, h = 2^-8 and 2^-9, on fp32
// inputs on a 2^-12 grid (so x +- h is exact in fp32). Observed errors are
// around 1e-11 of the gradient scale; the bound is 1e-9.
void check_grad_fd(const Problem& p, uint64_t seed) {
  SCOPED_TRACE(p.str());
  ASSERT_EQ(p.dtype, FLASH4_DTYPE_FP32);
  Case c = make_case(p, seed, /*grid=*/12);
  const BwdOut got = run_bwd(c, FLASH4_REF_FP64, FLASH4_DTYPE_FP64, 1);
  Tensor out = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  auto loss = [&]() {
    flash4_fwd_args a = c.fwd_args(out, nullptr);
    EXPECT_EQ(flash4_reference_fwd(&a, FLASH4_REF_FP64, 1), FLASH4_OK) << flash4_last_error();
    double L = 0;
    for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) { L += out.get(idx) * c.dout.get(idx); });
    return L;
  };
  auto fd = [&](const Tensor& t, const std::vector<i64>& idx) {
    const double x = t.get(idx);
    auto central = [&](double h) {
      t.set(idx, x + h);
      const double lp = loss();
      t.set(idx, x - h);
      const double lm = loss();
      t.set(idx, x);
      return (lp - lm) / (2 * h);
    };
    const double h = std::ldexp(1.0, -8);
    return (4 * central(h / 2) - central(h)) / 3;
  };
  double err_q = 0, err_k = 0, err_v = 0, scale = 1;
  for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    const double g = got.dq.get(idx);
    err_q = std::max(err_q, std::fabs(fd(c.q, idx) - g));
    scale = std::max(scale, std::fabs(g));
  });
  for_k_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    const double gk = got.dk.get(idx), gv = got.dv.get(idx);
    err_k = std::max(err_k, std::fabs(fd(c.k, idx) - gk));
    err_v = std::max(err_v, std::fabs(fd(c.v, idx) - gv));
    scale = std::max({scale, std::fabs(gk), std::fabs(gv)});
  });
  EXPECT_LE(err_q, 1e-9 * scale) << "dq";
  EXPECT_LE(err_k, 1e-9 * scale) << "dk";
  EXPECT_LE(err_v, 1e-9 * scale) << "dv";
  // Exact zeros: rows that see no key, keys that no row sees.
  for (i64 b = 0; b < c.p.B; ++b) {
    for (i64 i = 0; i < c.sq(b); ++i) {
      bool any = false;
      for (i64 j = 0; j < c.sk(b); ++j) any = any || c.visible(b, i, j);
      if (!any)
        for (i64 h = 0; h < c.p.Hq; ++h)
          for (i64 d = 0; d < c.p.D; ++d) EXPECT_EQ(got.dq.get(c.qi(b, i, h, d)), 0.0);
    }
    for (i64 j = 0; j < c.sk_rows(b); ++j) {
      bool any = false;
      for (i64 i = 0; i < c.sq(b); ++i) any = any || c.visible(b, i, j);
      if (!any)
        for (i64 h = 0; h < c.p.Hkv; ++h)
          for (i64 d = 0; d < c.p.D; ++d) {
            EXPECT_EQ(got.dk.get(c.ki(b, j, h, d)), 0.0);
            EXPECT_EQ(got.dv.get(c.ki(b, j, h, d)), 0.0);
          }
    }
  }
  // And the backward agrees with the explicit formulas of the direct code.
  check_bwd_against_direct(c);
}

TEST(ReferenceBwdFiniteDiff, Plain) { check_grad_fd(small(5, 7, Opts{}, FLASH4_DTYPE_FP32, 2, 2, 8, 1), base_seed() + 80); }

TEST(ReferenceBwdFiniteDiff, CausalWithMaskedRowsAndGqa) {
  Opts o;
  o.causal = true;
  check_grad_fd(small(7, 4, o, FLASH4_DTYPE_FP32, 4, 2, 8, 2), base_seed() + 81);  // rows 0..2 masked
}

TEST(ReferenceBwdFiniteDiff, SoftcapAndScale) {
  Opts o;
  o.softcap = 1.5;
  o.scale = 0.8;
  check_grad_fd(small(6, 5, o, FLASH4_DTYPE_FP32, 2, 1, 8, 1), base_seed() + 82);
}

TEST(ReferenceBwdFiniteDiff, WindowWithUnseenKeys) {
  Opts o;
  o.left = 1;
  o.right = 0;
  check_grad_fd(small(3, 8, o, FLASH4_DTYPE_FP32, 2, 1, 8, 1), base_seed() + 83);  // keys 0..3 unseen
  o.left = 2;
  o.right = 1;
  check_grad_fd(small(6, 6, o, FLASH4_DTYPE_FP32, 4, 1, 8, 1), base_seed() + 84);
}

TEST(ReferenceBwdFiniteDiff, VarlenZeroLengthsAndSeqUsedK) {
  Problem p;
  p.varlen = true;
  p.lq = {2, 0, 3, 4};
  p.lk = {3, 2, 0, 5};
  p.used_k = {2, 2, 0, 4};
  p.Hq = 2;
  p.Hkv = 1;
  p.D = 8;
  p.o.causal = true;
  p.o.softcap = 2.0;
  check_grad_fd(p, base_seed() + 85);
}

// ===========================================================================
// Backward against the explicit formulas on wider shapes and dtypes.
// ===========================================================================
TEST(ReferenceBwdDirect, DtypesGqaWindowsVarlen) {
  int n = 0;
  for (flash4_dtype dt : kDtypes) {
    for (int oi = 0; oi < 6; ++oi) {
      check_bwd_against_direct(make_case(small(13, 33, kOpts[oi], dt, 4, 1, 24, 2), base_seed() + 100 + n++));
      check_bwd_against_direct(make_case(small(33, 7, kOpts[oi], dt, 2, 2, 16, 1), base_seed() + 100 + n++));
    }
    check_bwd_against_direct(make_case(varlen_problem(dt, kOpts[5], true), base_seed() + 100 + n++));
    check_bwd_against_direct(make_case(varlen_problem(dt, kOpts[3], false), base_seed() + 100 + n++),
                             FLASH4_DTYPE_FP32);
  }
}

TEST(ReferenceBwdDirect, KeysBeyondSeqUsedKGetZeroGradient) {
  Problem p = small(5, 9, Opts{}, FLASH4_DTYPE_BF16, 2, 1, 16, 2);
  p.used_k = {6, 9};
  const Case c = make_case(p, base_seed() + 130);
  const BwdOut g = run_bwd(c, FLASH4_REF_FP64);
  for (i64 j = 6; j < 9; ++j)
    for (i64 d = 0; d < 16; ++d) {
      EXPECT_EQ(g.dk.get({0, j, 0, d}), 0.0);
      EXPECT_EQ(g.dv.get({0, j, 0, d}), 0.0);
    }
  check_bwd_against_direct(c);
}

// ===========================================================================
// LOWP (same-precision reference) against FP64.
// ===========================================================================
double rel_err_q(const Case& c, const Tensor& a, const Tensor& ref) {
  return max_diff_q(c, a, ref) / max_abs_q(c, ref);
}
double rel_err_k(const Case& c, const Tensor& a, const Tensor& ref) {
  return max_diff_k(c, a, ref) / max_abs_k(c, ref);
}

// The same values as `c` with fp32 storage (exact): LOWP then has no P
// rounding, only fp32 arithmetic.
Case as_fp32(const Case& c) {
  Case f = c;
  f.p.dtype = FLASH4_DTYPE_FP32;
  for (Tensor* t : {&f.q, &f.k, &f.v, &f.dout}) {
    const Tensor src = *t;
    *t = make_tensor(FLASH4_DTYPE_FP32, src.shape);
    src.for_each([&](const std::vector<i64>& idx) { t->set(idx, src.get(idx)); });
  }
  return f;
}

TEST(ReferenceLowp, ForwardErrorIsInTheInputDtypeRange) {
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16}) {
    for (int oi : {0, 1, 3}) {
      Problem p = small(160, 192, kOpts[oi], dt, 4, 2, 64, 2);
      const Case c = make_case(p, base_seed() + 200 + 10 * int(dt) + oi);
      SCOPED_TRACE(c.p.str());
      const FwdOut exact = run_fwd(c, FLASH4_REF_FP64);
      const FwdOut low = run_fwd(c, FLASH4_REF_LOWP);
      const Case c32 = as_fp32(c);
      const FwdOut low32 = run_fwd(c32, FLASH4_REF_LOWP);
      const double e = rel_err_q(c, low.out, exact.out);
      const double e32 = rel_err_q(c, low32.out, exact.out);
      const double limit = dt == FLASH4_DTYPE_BF16 ? 2e-2 : 3e-3;
      EXPECT_LT(e, limit);
      EXPECT_GT(e, 0.0);
      // fp32 arithmetic alone: small and nonzero.
      EXPECT_LT(e32, 1e-5);
      EXPECT_GT(e32, 0.0);
      // P rounded to the input dtype: clearly above fp32 arithmetic noise.
      EXPECT_GT(e, 20 * e32);
      expect_lse_near(c, low.lse, exact.lse, 1e-5);
      // Output rounding: LOWP into the input dtype equals the LOWP float
      // result rounded once.
      const FwdOut lowd = run_fwd(c, FLASH4_REF_LOWP, dt, FLASH4_DTYPE_FP32);
      int bad = 0;
      for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
        bad += lowd.out.get(idx) != quantize(low.out.get(idx), dt);
      });
      EXPECT_EQ(bad, 0);
    }
  }
}

TEST(ReferenceLowp, BackwardErrorIsInTheInputDtypeRange) {
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16}) {
    for (int oi : {0, 1, 3}) {
      Problem p = small(96, 80, kOpts[oi], dt, 4, 2, 32, 2);
      const Case c = make_case(p, base_seed() + 300 + 10 * int(dt) + oi);
      SCOPED_TRACE(c.p.str());
      const BwdOut exact = run_bwd(c, FLASH4_REF_FP64);
      const BwdOut low = run_bwd(c, FLASH4_REF_LOWP);
      const BwdOut low32 = run_bwd(as_fp32(c), FLASH4_REF_LOWP);
      const double limit = dt == FLASH4_DTYPE_BF16 ? 2e-2 : 4e-3;
      const double eq = rel_err_q(c, low.dq, exact.dq), ek = rel_err_k(c, low.dk, exact.dk),
                   ev = rel_err_k(c, low.dv, exact.dv);
      const double eq32 = rel_err_q(c, low32.dq, exact.dq), ek32 = rel_err_k(c, low32.dk, exact.dk),
                   ev32 = rel_err_k(c, low32.dv, exact.dv);
      EXPECT_LT(eq, limit);
      EXPECT_LT(ek, limit);
      EXPECT_LT(ev, limit);
      for (double e32 : {eq32, ek32, ev32}) {
        EXPECT_LT(e32, 1e-4);
        EXPECT_GT(e32, 0.0);
      }
      EXPECT_GT(eq, 20 * eq32);
      EXPECT_GT(ek, 20 * ek32);
      EXPECT_GT(ev, 20 * ev32);
    }
  }
}

// The LOWP specification emulated here in plain float, in the naive order:
// scores, max, sums and accumulators in float; P rounded to the input dtype
// before P.V and dP.. dV; O rounded to the input dtype for D; dS rounded to
// the input dtype before dQ and dK. Float results differ from the
// reference's (other summation order) by ~1e-6 relative, which can flip a
// rounding to bf16 here and there; a missing rounding step changes nearly
// every element by ~1e-3 relative. So: the fraction of elements further
// apart than 5e-5 of the tensor's scale must stay small.
struct LowpEmu {
  Tensor out, dq, dk, dv;  // FP64 storage of float values
};

LowpEmu lowp_emulate(const Case& c) {
  LowpEmu r;
  r.out = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  r.dq = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  r.dk = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());
  r.dv = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());
  auto rnd = [&](float x) { return float(quantize(x, c.p.dtype)); };
  const float scale = float(c.scale()), cap = float(c.p.o.softcap);
  const i64 D = c.p.D;
  std::vector<float> dk_acc, dv_acc;
  for (i64 b = 0; b < c.p.B; ++b) {
    const i64 m = c.sq(b), n = c.sk(b), nr = c.sk_rows(b);
    for (i64 hk = 0; hk < c.p.Hkv; ++hk) {
      dk_acc.assign(size_t(nr * D), 0.f);
      dv_acc.assign(size_t(nr * D), 0.f);
      for (i64 h = hk * (c.p.Hq / c.p.Hkv); h < (hk + 1) * (c.p.Hq / c.p.Hkv); ++h) {
        for (i64 i = 0; i < m; ++i) {
          std::vector<float> s(size_t(n), 0.f), f(size_t(n), 1.f);
          std::vector<char> vis(size_t(n), 0);
          float mx = -std::numeric_limits<float>::infinity();
          for (i64 j = 0; j < n; ++j) {
            if (!c.visible(b, i, j)) continue;
            vis[size_t(j)] = 1;
            float dot = 0.f;
            for (i64 d = 0; d < D; ++d) dot += float(c.q.get(c.qi(b, i, h, d))) * float(c.k.get(c.ki(b, j, hk, d)));
            float x = scale * dot;
            if (cap > 0) {
              const float t = std::tanh(x / cap);
              x = cap * t;
              f[size_t(j)] = 1.f - t * t;
            }
            s[size_t(j)] = x;
            mx = std::max(mx, x);
          }
          std::vector<float> O(size_t(D), 0.f), Ob(size_t(D), 0.f), dq(size_t(D), 0.f);
          if (mx == -std::numeric_limits<float>::infinity()) {
            for (i64 d = 0; d < D; ++d) {
              r.out.set(c.qi(b, i, h, d), 0.0);
              r.dq.set(c.qi(b, i, h, d), 0.0);
            }
            continue;
          }
          float l = 0.f;
          for (i64 j = 0; j < n; ++j)
            if (vis[size_t(j)]) l += std::exp(s[size_t(j)] - mx);
          const float lse = mx + std::log(l);
          for (i64 j = 0; j < n; ++j) {
            if (!vis[size_t(j)]) continue;
            const float pf = rnd(std::exp(s[size_t(j)] - mx) / l);  // forward P
            const float pb = rnd(std::exp(s[size_t(j)] - lse));     // backward P
            for (i64 d = 0; d < D; ++d) {
              const float vv = float(c.v.get(c.ki(b, j, hk, d)));
              O[size_t(d)] += pf * vv;
              Ob[size_t(d)] += pb * vv;
            }
          }
          float Di = 0.f;
          for (i64 d = 0; d < D; ++d) {
            r.out.set(c.qi(b, i, h, d), O[size_t(d)]);
            Di += float(c.dout.get(c.qi(b, i, h, d))) * rnd(Ob[size_t(d)]);
          }
          for (i64 j = 0; j < n; ++j) {
            if (!vis[size_t(j)]) continue;
            const float p = std::exp(s[size_t(j)] - lse);
            float dp = 0.f;
            for (i64 d = 0; d < D; ++d) dp += float(c.dout.get(c.qi(b, i, h, d))) * float(c.v.get(c.ki(b, j, hk, d)));
            const float ds = rnd(p * (dp - Di) * f[size_t(j)]);
            const float pr = rnd(p);
            for (i64 d = 0; d < D; ++d) {
              dq[size_t(d)] += ds * float(c.k.get(c.ki(b, j, hk, d)));
              dk_acc[size_t(j * D + d)] += ds * float(c.q.get(c.qi(b, i, h, d)));
              dv_acc[size_t(j * D + d)] += pr * float(c.dout.get(c.qi(b, i, h, d)));
            }
          }
          for (i64 d = 0; d < D; ++d) r.dq.set(c.qi(b, i, h, d), scale * dq[size_t(d)]);
        }
      }
      for (i64 j = 0; j < nr; ++j)
        for (i64 d = 0; d < D; ++d) {
          r.dk.set(c.ki(b, j, hk, d), scale * dk_acc[size_t(j * D + d)]);
          r.dv.set(c.ki(b, j, hk, d), dv_acc[size_t(j * D + d)]);
        }
    }
  }
  return r;
}

// Fraction of q-like / k-like elements with |a - b| > tol * max|b|.
double frac_apart_q(const Case& c, const Tensor& a, const Tensor& b, double tol) {
  const double lim = tol * max_abs_q(c, b);
  i64 n = 0, bad = 0;
  for_q_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    ++n;
    bad += !(std::fabs(a.get(idx) - b.get(idx)) <= lim);
  });
  return n ? double(bad) / double(n) : 0.0;
}
double frac_apart_k(const Case& c, const Tensor& a, const Tensor& b, double tol) {
  const double lim = tol * max_abs_k(c, b);
  i64 n = 0, bad = 0;
  for_k_rows(c, [&](const std::vector<i64>& idx, i64, i64, i64, i64) {
    ++n;
    bad += !(std::fabs(a.get(idx) - b.get(idx)) <= lim);
  });
  return n ? double(bad) / double(n) : 0.0;
}

TEST(ReferenceLowp, FollowsTheSamePrecisionSpecification) {
  Opts o;
  o.causal = true;
  o.softcap = 5.0;
  for (bool varlen : {false, true}) {
    Problem p = small(72, 88, o, FLASH4_DTYPE_BF16, 4, 2, 32, 2);
    if (varlen) p = varlen_problem(FLASH4_DTYPE_BF16, o, true);
    const Case c = make_case(p, base_seed() + 350 + varlen);
    SCOPED_TRACE(c.p.str());
    const LowpEmu emu = lowp_emulate(c);
    const FwdOut f = run_fwd(c, FLASH4_REF_LOWP);
    const BwdOut g = run_bwd(c, FLASH4_REF_LOWP);
    const double tol = 5e-5;
    EXPECT_LT(frac_apart_q(c, f.out, emu.out, tol), 0.05) << "out";
    EXPECT_LT(frac_apart_q(c, g.dq, emu.dq, tol), 0.05) << "dq";
    EXPECT_LT(frac_apart_k(c, g.dk, emu.dk, tol), 0.05) << "dk";
    EXPECT_LT(frac_apart_k(c, g.dv, emu.dv, tol), 0.05) << "dv";
  }
}

// ===========================================================================
// Threads: bitwise identical results.
// ===========================================================================
bool same_bytes(const Tensor& a, const Tensor& b) { return *a.storage == *b.storage; }

TEST(ReferenceThreads, BitwiseIdenticalAcrossThreadCounts) {
  Opts o;
  o.causal = true;
  o.left = 40;
  o.softcap = 4.0;
  for (bool varlen : {false, true}) {
    Problem p = small(150, 170, o, FLASH4_DTYPE_BF16, 4, 2, 64, 2);
    if (varlen) {
      p = varlen_problem(FLASH4_DTYPE_BF16, o, true);
      p.lq = {70, 0, 129, 33};
      p.lk = {90, 12, 100, 33};
      p.used_k = {90, 0, 77, 33};
    }
    const Case c = make_case(p, base_seed() + 400 + varlen);
    SCOPED_TRACE(c.p.str());
    for (flash4_ref_precision prec : {FLASH4_REF_FP64, FLASH4_REF_LOWP}) {
      const FwdOut a = run_fwd(c, prec, FLASH4_DTYPE_FP64, FLASH4_DTYPE_FP64, 1);
      const FwdOut b = run_fwd(c, prec, FLASH4_DTYPE_FP64, FLASH4_DTYPE_FP64, 4);
      const FwdOut h = run_fwd(c, prec, FLASH4_DTYPE_FP64, FLASH4_DTYPE_FP64, 0);
      EXPECT_TRUE(same_bytes(a.out, b.out) && same_bytes(a.lse, b.lse)) << "fwd 1 vs 4 threads";
      EXPECT_TRUE(same_bytes(a.out, h.out) && same_bytes(a.lse, h.lse)) << "fwd 1 vs all threads";
      const BwdOut ga = run_bwd(c, prec, FLASH4_DTYPE_FP64, 1);
      const BwdOut gb = run_bwd(c, prec, FLASH4_DTYPE_FP64, 4);
      EXPECT_TRUE(same_bytes(ga.dq, gb.dq) && same_bytes(ga.dk, gb.dk) && same_bytes(ga.dv, gb.dv))
          << "bwd 1 vs 4 threads";
    }
  }
}

// ===========================================================================
// Validation failures leave every output untouched.
// ===========================================================================
void poison(const Tensor& t) { std::fill(t.storage->begin(), t.storage->end(), uint8_t(0x5A)); }
bool poisoned(const Tensor& t) {
  return std::all_of(t.storage->begin(), t.storage->end(), [](uint8_t b) { return b == 0x5A; });
}

TEST(ReferenceValidation, FailureWritesNothing) {
  Problem p = small(8, 8, Opts{}, FLASH4_DTYPE_BF16, 4, 2, 16, 2);
  p.used_k = {8, 8};
  Case good = make_case(p, base_seed() + 500);

  const Case& c = good;
  Tensor out = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  Tensor lse = make_tensor(FLASH4_DTYPE_FP32, c.lse_shape());
  Tensor dq = make_tensor(FLASH4_DTYPE_FP64, c.q_shape());
  Tensor dk = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());
  Tensor dv = make_tensor(FLASH4_DTYPE_FP64, c.k_shape());

  auto expect_untouched_fwd = [&](flash4_fwd_args a, const char* what) {
    poison(out);
    poison(lse);
    const flash4_status st = flash4_reference_fwd(&a, FLASH4_REF_FP64, 2);
    EXPECT_EQ(st, FLASH4_ERROR_INVALID_ARGUMENT) << what;
    EXPECT_STRNE(flash4_last_error(), "") << what;
    EXPECT_TRUE(poisoned(out) && poisoned(lse)) << what;
  };
  auto expect_untouched_bwd = [&](flash4_bwd_args a, const char* what) {
    poison(dq);
    poison(dk);
    poison(dv);
    const flash4_status st = flash4_reference_bwd(&a, FLASH4_REF_FP64, 2);
    EXPECT_EQ(st, FLASH4_ERROR_INVALID_ARGUMENT) << what;
    EXPECT_STRNE(flash4_last_error(), "") << what;
    EXPECT_TRUE(poisoned(dq) && poisoned(dk) && poisoned(dv)) << what;
  };

  {  // heads_q not a multiple of heads_kv: q with 3 heads against 2 kv heads
    Tensor q3 = make_tensor(FLASH4_DTYPE_BF16, {2, 8, 3, 16});
    std::mt19937_64 rng(base_seed() + 501);
    fill_random(q3, rng);
    flash4_fwd_args a = c.fwd_args(out, &lse);
    a.q = q3.view();
    expect_untouched_fwd(a, "Hq % Hkv");
  }
  {  // head dim mismatch between q and k
    flash4_fwd_args a = c.fwd_args(out, &lse);
    a.k.shape[3] = 8;
    expect_untouched_fwd(a, "k headdim");
  }
  {  // seqused_k larger than the keys of the sequence (checked on the host)
    Case bad = c;
    bad.used_t = make_tensor(FLASH4_DTYPE_INT32, {2});
    bad.used_t.set({0}, 8);
    bad.used_t.set({1}, 9);
    expect_untouched_fwd(bad.fwd_args(out, &lse), "seqused_k > Sk");
    flash4_bwd_args b = bad.bwd_args(out, lse, dq, dk, dv);
    expect_untouched_bwd(b, "seqused_k > Sk (bwd)");
    EXPECT_NE(std::string(flash4_last_error()).find("seqused_k"), std::string::npos) << flash4_last_error();
  }
  {  // decreasing cu_seqlens (varlen, host arrays)
    Problem vp = varlen_problem(FLASH4_DTYPE_BF16, Opts{}, false);
    Case v = make_case(vp, base_seed() + 502);
    Tensor vout = make_tensor(FLASH4_DTYPE_FP64, v.q_shape());
    Tensor vlse = make_tensor(FLASH4_DTYPE_FP32, v.lse_shape());
    v.cu_k_t.set({2}, v.cu_k[1] - 1);
    flash4_fwd_args a = v.fwd_args(vout, &vlse);
    poison(vout);
    poison(vlse);
    EXPECT_EQ(flash4_reference_fwd(&a, FLASH4_REF_LOWP, 2), FLASH4_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flash4_last_error()).find("cu_seqlens_k"), std::string::npos) << flash4_last_error();
    EXPECT_TRUE(poisoned(vout) && poisoned(vlse));
  }
  {  // output dtype the reference does not write (int32 out)
    Tensor bad_out = make_tensor(FLASH4_DTYPE_INT32, c.q_shape());
    flash4_fwd_args a = c.fwd_args(bad_out, &lse);
    poison(bad_out);
    poison(lse);
    EXPECT_EQ(flash4_reference_fwd(&a, FLASH4_REF_FP64, 2), FLASH4_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(poisoned(bad_out) && poisoned(lse));
  }
  {  // backward: dk with a wrong shape
    Tensor dk_bad = make_tensor(FLASH4_DTYPE_FP64, {2, 7, 2, 16});
    flash4_bwd_args b = c.bwd_args(out, lse, dq, dk_bad, dv);
    poison(dk_bad);
    expect_untouched_bwd(b, "dk shape");
    EXPECT_TRUE(poisoned(dk_bad));
  }
  {  // invalid precision value
    flash4_fwd_args a = c.fwd_args(out, &lse);
    poison(out);
    EXPECT_EQ(flash4_reference_fwd(&a, flash4_ref_precision(7), 2), FLASH4_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(poisoned(out));
  }
  // And the good call goes through after all that, clearing the message.
  flash4_fwd_args a = good.fwd_args(out, &lse);
  EXPECT_EQ(flash4_reference_fwd(&a, FLASH4_REF_FP64, 2), FLASH4_OK) << flash4_last_error();
  EXPECT_STREQ(flash4_last_error(), "");
}

}  // namespace
