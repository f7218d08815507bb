// CPU reference of flash4: exact attention forward and backward on host
// memory, the oracle of the tests and of `flash4 check`.
//
// Two precisions (flash4_ref_precision):
//   FP64: every input is converted exactly to double and everything is
//         computed in double; only the final store rounds (to the output
//         dtype, correctly rounded).
//   LOWP: the same-precision reference of the tolerance rule: scores, row
//         max and row sums in float32, P rounded to the input dtype before
//         P.V, float32 accumulators, outputs rounded to their dtype. In the
//         backward P and dS are rounded to the input dtype before the
//         matmuls that consume them and O (for D = rowsum(dO * O)) is
//         rounded to the input dtype.
//
// Work is split into independent items run by std::thread workers:
//   forward / backward phase 1: (batch, query head, block of query rows);
//     every row is computed entirely by one item, so results do not depend
//     on the number of threads.
//   backward phase 2: (batch, kv head, block of keys); dK and dV of a key
//     are owned by one item, which sums over the query heads of the GQA
//     group and the query rows in a fixed order (no races, deterministic).
// The backward recomputes P from q, k and the row LSE; phase 1 computes the
// LSE, D_i = rowsum(dO * O) (with O recomputed from q, k, v) and dQ; phase 2
// computes dK and dV.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/error.hpp"
#include "common/host_dtype.hpp"
#include "common/params.hpp"
#include "common/validate.hpp"
#include "flash4/flash4.h"

namespace flash4 {
namespace {

using i64 = int64_t;

constexpr i64 kRowBlock = 32;  // query rows per work item (multiple of kMR)
constexpr i64 kKeyBlock = 32;  // keys per backward phase-2 work item
constexpr int kMR = 4;         // rows per register tile
constexpr int kNR = 2;         // keys per register tile

i64 dtype_size(flash4_dtype t) {
  switch (t) {
    case FLASH4_DTYPE_FP16:
    case FLASH4_DTYPE_BF16: return 2;
    case FLASH4_DTYPE_FP32:
    case FLASH4_DTYPE_INT32: return 4;
    case FLASH4_DTYPE_FP64: return 8;
  }
  return 0;
}

// A strided tensor seen as (batch, row, head, element). Element (b, r, h, d)
// sits at data + (b*bs + r*rs + h*hs + d*es) * elem_size. Varlen tensors
// have bs == 0 and r is the global token index.
struct View {
  char* data = nullptr;
  flash4_dtype dtype = FLASH4_DTYPE_FP32;
  i64 bs = 0, rs = 0, hs = 0, es = 1;
  i64 esize = 4;
  bool valid() const { return data != nullptr; }
  i64 offset(i64 b, i64 r, i64 h) const { return b * bs + r * rs + h * hs; }
};

// q/k/v/out/dout/dq/dk/dv: batched (B, S, H, D) or varlen (total, H, D).
View head_view(const flash4_tensor& t, bool varlen) {
  View v;
  v.data = static_cast<char*>(t.data);
  v.dtype = t.dtype;
  v.esize = dtype_size(t.dtype);
  if (varlen) {
    v.bs = 0; v.rs = t.stride[0]; v.hs = t.stride[1]; v.es = t.stride[2];
  } else {
    v.bs = t.stride[0]; v.rs = t.stride[1]; v.hs = t.stride[2]; v.es = t.stride[3];
  }
  return v;
}

// lse: batched (B, H, Sq) or varlen (H, total_q).
View lse_view(const flash4_tensor& t, bool varlen) {
  View v;
  v.data = static_cast<char*>(t.data);
  v.dtype = t.dtype;
  v.esize = dtype_size(t.dtype);
  if (varlen) {
    v.bs = 0; v.hs = t.stride[0]; v.rs = t.stride[1];
  } else {
    v.bs = t.stride[0]; v.hs = t.stride[1]; v.rs = t.stride[2];
  }
  v.es = 0;
  return v;
}

// ---- conversions --------------------------------------------------------

// Rounds a double to float with round-to-odd: the result keeps a sticky bit,
// so a second rounding to a narrower type (bf16/fp16, at most 11 significant
// bits < 24 - 1) is the correctly rounded value of the double.
float to_float_round_odd(double x) {
  float f = static_cast<float>(x);
  if (!std::isfinite(x) || static_cast<double>(f) == x) return f;
  if (std::isinf(f) || std::fabs(static_cast<double>(f)) > std::fabs(x))
    f = std::nextafter(f, 0.0f);  // truncate toward zero
  uint32_t b = float_to_bits(f);
  b |= 1u;  // sticky
  return bits_to_float(b);
}

template <class T>
void load_row(const char* p, flash4_dtype dt, i64 es, i64 n, T* dst) {
  switch (dt) {
    case FLASH4_DTYPE_FP16: {
      for (i64 d = 0; d < n; ++d) {
        uint16_t h;
        std::memcpy(&h, p + d * es * 2, 2);
        dst[d] = static_cast<T>(fp16_to_float(h));
      }
      break;
    }
    case FLASH4_DTYPE_BF16: {
      for (i64 d = 0; d < n; ++d) {
        uint16_t h;
        std::memcpy(&h, p + d * es * 2, 2);
        dst[d] = static_cast<T>(bf16_to_float(h));
      }
      break;
    }
    case FLASH4_DTYPE_FP32: {
      for (i64 d = 0; d < n; ++d) {
        float f;
        std::memcpy(&f, p + d * es * 4, 4);
        dst[d] = static_cast<T>(f);
      }
      break;
    }
    case FLASH4_DTYPE_FP64: {
      for (i64 d = 0; d < n; ++d) {
        double f;
        std::memcpy(&f, p + d * es * 8, 8);
        dst[d] = static_cast<T>(f);
      }
      break;
    }
    default: break;
  }
}

template <class T>
void store_value(char* p, flash4_dtype dt, T x) {
  switch (dt) {
    case FLASH4_DTYPE_FP64: {
      double d = static_cast<double>(x);
      std::memcpy(p, &d, 8);
      break;
    }
    case FLASH4_DTYPE_FP32: {
      float f = static_cast<float>(x);  // correctly rounded from double
      std::memcpy(p, &f, 4);
      break;
    }
    case FLASH4_DTYPE_BF16: {
      float f = std::is_same<T, double>::value ? to_float_round_odd(static_cast<double>(x))
                                               : static_cast<float>(x);
      uint16_t h = float_to_bf16(f);
      std::memcpy(p, &h, 2);
      break;
    }
    case FLASH4_DTYPE_FP16: {
      float f = std::is_same<T, double>::value ? to_float_round_odd(static_cast<double>(x))
                                               : static_cast<float>(x);
      uint16_t h = float_to_fp16(f);
      std::memcpy(p, &h, 2);
      break;
    }
    default: break;
  }
}

template <class T>
void store_row(char* p, flash4_dtype dt, i64 es, i64 n, const T* src) {
  const i64 step = es * dtype_size(dt);
  for (i64 d = 0; d < n; ++d) store_value(p + d * step, dt, src[d]);
}

template <class T>
void store_zero_row(char* p, flash4_dtype dt, i64 es, i64 n) {
  const i64 step = es * dtype_size(dt);
  for (i64 d = 0; d < n; ++d) store_value(p + d * step, dt, T(0));
}

// Rounding of P / dS / O to the input dtype (LOWP with 16-bit inputs only).
struct Rounder {
  int kind = 0;  // 0: none, 1: bf16, 2: fp16
  float operator()(float x) const {
    return kind == 1 ? round_to_bf16(x) : kind == 2 ? round_to_fp16(x) : x;
  }
  double operator()(double x) const { return x; }
};

// ---- small dense kernels (contiguous buffers of D elements per row) -----

#if (defined(__GNUC__) || defined(__clang__)) && !defined(FLASH4_REF_NO_VECTOR)
#define FLASH4_REF_VECTOR 1
typedef double RefV2d __attribute__((vector_size(16)));
typedef float RefV4f __attribute__((vector_size(16)));
template <class T> struct VecOf;
template <> struct VecOf<double> { using type = RefV2d; static constexpr int L = 2; };
template <> struct VecOf<float> { using type = RefV4f; static constexpr int L = 4; };
#endif

// C[r*ldc + c] = sum_d A[r*D + d] * B[c*D + d] for an MR x NR tile. Each
// entry is accumulated in the same order whatever the tile shape: lane l
// sums d = l (mod L) over the vectorisable prefix, lanes are added in order,
// then the tail. So a result never depends on how work was tiled.
template <class T, int MR, int NR>
inline void dot_tile(const T* A, const T* B, i64 D, T* C, i64 ldc) {
#ifdef FLASH4_REF_VECTOR
  using V = typename VecOf<T>::type;
  constexpr int L = VecOf<T>::L;
  V acc[MR][NR] = {};  // all lanes +0
  i64 d = 0;
  for (; d + L <= D; d += L) {
    V b[NR];
    for (int c = 0; c < NR; ++c) std::memcpy(&b[c], B + c * D + d, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      V a;
      std::memcpy(&a, A + r * D + d, sizeof(V));
      for (int c = 0; c < NR; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      T s = acc[r][c][0];
      for (int l = 1; l < L; ++l) s += acc[r][c][l];
      for (i64 e = d; e < D; ++e) s += A[r * D + e] * B[c * D + e];
      C[r * ldc + c] = s;
    }
#else
  constexpr int L = 4;
  T acc[MR][NR][L] = {};
  i64 d = 0;
  for (; d + L <= D; d += L)
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c)
        for (int l = 0; l < L; ++l) acc[r][c][l] += A[r * D + d + l] * B[c * D + d + l];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      T s = acc[r][c][0];
      for (int l = 1; l < L; ++l) s += acc[r][c][l];
      for (i64 e = d; e < D; ++e) s += A[r * D + e] * B[c * D + e];
      C[r * ldc + c] = s;
    }
#endif
}

template <class T, int MR>
inline void dot_rows(const T* A, const T* B, i64 nb, i64 D, T* C, i64 ldc) {
  i64 c = 0;
  for (; c + kNR <= nb; c += kNR) dot_tile<T, MR, kNR>(A, B + c * D, D, C + c, ldc);
  for (; c < nb; ++c) dot_tile<T, MR, 1>(A, B + c * D, D, C + c, ldc);
}

// C (na x nb, leading dim ldc) = A (na x D) . B (nb x D)^T, na <= kMR.
template <class T>
void dot_block(const T* A, i64 na, const T* B, i64 nb, i64 D, T* C, i64 ldc) {
  static_assert(kMR == 4, "dispatch below assumes kMR == 4");
  switch (na) {
    case 4: dot_rows<T, 4>(A, B, nb, D, C, ldc); break;
    case 3: dot_rows<T, 3>(A, B, nb, D, C, ldc); break;
    case 2: dot_rows<T, 2>(A, B, nb, D, C, ldc); break;
    case 1: dot_rows<T, 1>(A, B, nb, D, C, ldc); break;
    default: break;
  }
}

// y += a[0] x[0]; y += a[1] x[1]; ... (n <= 4), element by element in that
// order: the same result as n successive axpys, with y loaded and stored
// once.
template <class T>
inline void axpy_n(const T* a, const T* const* x, int n, T* y, i64 D) {
  switch (n) {
    case 4: {
      const T a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
      const T *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
      for (i64 d = 0; d < D; ++d) {
        T t = y[d];
        t += a0 * x0[d];
        t += a1 * x1[d];
        t += a2 * x2[d];
        t += a3 * x3[d];
        y[d] = t;
      }
      break;
    }
    case 3: {
      const T a0 = a[0], a1 = a[1], a2 = a[2];
      const T *x0 = x[0], *x1 = x[1], *x2 = x[2];
      for (i64 d = 0; d < D; ++d) {
        T t = y[d];
        t += a0 * x0[d];
        t += a1 * x1[d];
        t += a2 * x2[d];
        y[d] = t;
      }
      break;
    }
    case 2: {
      const T a0 = a[0], a1 = a[1];
      const T *x0 = x[0], *x1 = x[1];
      for (i64 d = 0; d < D; ++d) {
        T t = y[d];
        t += a0 * x0[d];
        t += a1 * x1[d];
        y[d] = t;
      }
      break;
    }
    case 1: {
      const T a0 = a[0];
      const T* x0 = x[0];
      for (i64 d = 0; d < D; ++d) y[d] += a0 * x0[d];
      break;
    }
    default: break;
  }
}

// Accumulates y += sum_k a_k x_k over the nonzero a_k, in the order given,
// four at a time.
template <class T>
struct AxpyBatch {
  T a[4];
  const T* x[4];
  int n = 0;
  T* y;
  i64 D;
  AxpyBatch(T* y_, i64 D_) : y(y_), D(D_) {}
  void add(T coef, const T* row) {
    if (coef == T(0)) return;
    a[n] = coef;
    x[n] = row;
    if (++n == 4) flush();
  }
  void flush() {
    axpy_n(a, x, n, y, D);
    n = 0;
  }
};

// ---- problem description ------------------------------------------------

struct Seq {
  i64 b = 0;       // batch index for batch strides (0 when varlen)
  i64 q0 = 0;      // first row of the sequence in q/out/dout/dq (and lse)
  i64 k0 = 0;      // first row in k/v/dk/dv
  i64 sq = 0;      // queries
  i64 sk_rows = 0; // key rows stored for the sequence
  i64 sk = 0;      // keys used (seqused_k or sk_rows)
  i64 lse_row0 = 0;
};

struct Problem {
  bool varlen = false;
  i64 B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, G = 1, D = 0;
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;
  const int32_t* used_k = nullptr;
  i64 total_q = 0, total_k = 0;
  i64 left = -1, right = -1;
  double scale = 1.0, softcap = 0.0;
  flash4_dtype in_dtype = FLASH4_DTYPE_FP32;
  View q, k, v, out, lse, dout, dq, dk, dv;

  Seq seq(i64 b) const {
    Seq s;
    if (varlen) {
      s.b = 0;
      s.q0 = cu_q[b];
      s.k0 = cu_k[b];
      s.sq = i64(cu_q[b + 1]) - cu_q[b];
      s.sk_rows = i64(cu_k[b + 1]) - cu_k[b];
      s.lse_row0 = s.q0;
    } else {
      s.b = b;
      s.q0 = 0;
      s.k0 = 0;
      s.sq = Sq;
      s.sk_rows = Sk;
      s.lse_row0 = 0;
    }
    s.sk = used_k ? i64(used_k[b]) : s.sk_rows;
    return s;
  }
  // Row index into the per-(row, head) LSE / D arrays of the backward.
  i64 global_row(i64 b, const Seq& s, i64 i) const { return varlen ? s.q0 + i : b * Sq + i; }
  i64 total_rows() const { return varlen ? total_q : B * Sq; }

  // Visible keys of query i: [lo, hi] (empty when lo > hi).
  void key_range(const Seq& s, i64 i, i64* lo, i64* hi) const {
    const i64 off = s.sk - s.sq;
    i64 l = 0, h = s.sk - 1;
    if (left >= 0) l = std::max<i64>(l, i + off - left);
    if (right >= 0) h = std::min<i64>(h, i + off + right);
    *lo = l;
    *hi = h;
  }
  // Query rows that see at least one key of [j0, j1] (j1 < sk): [r0, r1].
  void row_range(const Seq& s, i64 j0, i64 j1, i64* r0, i64* r1) const {
    const i64 off = s.sk - s.sq;
    i64 a = 0, z = s.sq - 1;
    if (right >= 0) a = std::max<i64>(a, j0 - off - right);
    if (left >= 0) z = std::min<i64>(z, j1 - off + left);
    *r0 = a;
    *r1 = z;
  }
};

void convert_rows(const View& t, const Seq& s, i64 row_base, i64 row0, i64 nrows, i64 head,
                  i64 D, double* dst) {
  for (i64 r = 0; r < nrows; ++r)
    load_row(t.data + t.offset(s.b, row_base + row0 + r, head) * t.esize, t.dtype, t.es, D,
             dst + r * D);
}
void convert_rows(const View& t, const Seq& s, i64 row_base, i64 row0, i64 nrows, i64 head,
                  i64 D, float* dst) {
  for (i64 r = 0; r < nrows; ++r)
    load_row(t.data + t.offset(s.b, row_base + row0 + r, head) * t.esize, t.dtype, t.es, D,
             dst + r * D);
}

char* row_ptr(const View& t, i64 b, i64 row, i64 head) {
  return t.data + t.offset(b, row, head) * t.esize;
}

// ---- threads --------------------------------------------------------------

int resolve_threads(int requested, i64 items) {
  i64 n = requested;
  if (n <= 0) {
    unsigned hc = std::thread::hardware_concurrency();
    n = hc == 0 ? 1 : i64(hc);
  }
  n = std::min<i64>(n, std::max<i64>(items, 1));
  n = std::min<i64>(n, 1024);
  return int(std::max<i64>(n, 1));
}

// Runs fn(item, worker) for item in [0, n) on `threads` workers (dynamic
// scheduling). Returns false and sets *error if a worker threw.
template <class Fn>
bool parallel_for(i64 n, int threads, Fn&& fn, std::string* error) {
  std::atomic<i64> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  auto worker = [&](int w) {
    try {
      for (;;) {
        if (failed.load(std::memory_order_relaxed)) return;
        const i64 i = next.fetch_add(1, std::memory_order_relaxed);
        if (i >= n) return;
        fn(i, w);
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed.exchange(true)) *error = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed.exchange(true)) *error = "unknown exception";
    }
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w) {
    try {
      pool.emplace_back(worker, w);
    } catch (const std::system_error&) {
      break;  // fewer threads: the remaining workers take the items
    }
  }
  worker(0);
  for (auto& t : pool) t.join();
  return !failed.load();
}

// ---- forward and backward phase 1 -----------------------------------------

struct RowItem {
  i64 b, h, i0, n;
};
struct KeyItem {
  i64 b, hkv, j0, n;
};

template <class T>
struct Scratch {
  std::vector<T> q, dout, k, v, s, p, dp, f, o, acc_k, acc_v, row;
  std::vector<i64> lo, hi;
};

template <class T>
void ensure(std::vector<T>& v, i64 n) {
  if (i64(v.size()) < n) v.resize(size_t(n));
}

// Computes rows [i0, i0+n) of query head h of sequence b.
//   forward (bwd == false): writes out and lse.
//   backward phase 1: writes dq and stores the row LSE and D_i in
//   lse_rows / d_rows (indexed global_row * Hq + h).
template <class T>
void rows_item(const Problem& P, const Rounder& rnd, const RowItem& it, bool bwd,
               Scratch<T>& sc, double* lse_rows, double* d_rows) {
  const Seq s = P.seq(it.b);
  const i64 D = P.D;
  const i64 hk = it.h / P.G;
  const T scale = T(P.scale);
  const T cap = T(P.softcap);
  const bool softcap = P.softcap > 0.0;
  const T neg_inf = -std::numeric_limits<T>::infinity();

  ensure(sc.lo, it.n);
  ensure(sc.hi, it.n);
  i64 klo = std::numeric_limits<i64>::max(), khi = -1;
  for (i64 r = 0; r < it.n; ++r) {
    P.key_range(s, it.i0 + r, &sc.lo[r], &sc.hi[r]);
    if (sc.lo[r] <= sc.hi[r]) {
      klo = std::min(klo, sc.lo[r]);
      khi = std::max(khi, sc.hi[r]);
    }
  }

  auto write_masked_row = [&](i64 i) {
    if (!bwd) {
      store_zero_row<T>(row_ptr(P.out, s.b, s.q0 + i, it.h), P.out.dtype, P.out.es, D);
      if (P.lse.valid())
        store_value(P.lse.data + (s.b * P.lse.bs + it.h * P.lse.hs + (s.lse_row0 + i) * P.lse.rs) *
                                     P.lse.esize,
                    P.lse.dtype, neg_inf);
    } else {
      store_zero_row<T>(row_ptr(P.dq, s.b, s.q0 + i, it.h), P.dq.dtype, P.dq.es, D);
      const i64 g = P.global_row(it.b, s, i) * P.Hq + it.h;
      lse_rows[g] = -std::numeric_limits<double>::infinity();
      d_rows[g] = 0.0;
    }
  };

  if (khi < 0) {  // no row of the item sees a key
    for (i64 r = 0; r < it.n; ++r) write_masked_row(it.i0 + r);
    return;
  }

  const i64 KW = khi - klo + 1;
  ensure(sc.k, KW * D);
  ensure(sc.v, KW * D);
  ensure(sc.q, it.n * D);
  convert_rows(P.k, s, s.k0, klo, KW, hk, D, sc.k.data());
  convert_rows(P.v, s, s.k0, klo, KW, hk, D, sc.v.data());
  convert_rows(P.q, s, s.q0, it.i0, it.n, it.h, D, sc.q.data());
  if (bwd) {
    ensure(sc.dout, it.n * D);
    convert_rows(P.dout, s, s.q0, it.i0, it.n, it.h, D, sc.dout.data());
  }
  ensure(sc.o, kMR * D);
  ensure(sc.row, D);

  for (i64 g0 = 0; g0 < it.n; g0 += kMR) {
    const i64 gn = std::min<i64>(kMR, it.n - g0);
    i64 lo_g = std::numeric_limits<i64>::max(), hi_g = -1;
    for (i64 r = 0; r < gn; ++r)
      if (sc.lo[g0 + r] <= sc.hi[g0 + r]) {
        lo_g = std::min(lo_g, sc.lo[g0 + r]);
        hi_g = std::max(hi_g, sc.hi[g0 + r]);
      }
    if (hi_g < 0) {
      for (i64 r = 0; r < gn; ++r) write_masked_row(it.i0 + g0 + r);
      continue;
    }
    const i64 W = hi_g - lo_g + 1;
    ensure(sc.s, kMR * W);
    ensure(sc.p, kMR * W);
    if (softcap) ensure(sc.f, kMR * W);
    T* S = sc.s.data();
    T* Pm = sc.p.data();
    const T* kb = sc.k.data() + (lo_g - klo) * D;
    const T* vb = sc.v.data() + (lo_g - klo) * D;
    dot_block(sc.q.data() + g0 * D, gn, kb, W, D, S, W);

    T lse_r[kMR];
    bool masked[kMR];
    for (i64 r = 0; r < gn; ++r) {
      const i64 lo = sc.lo[g0 + r], hi = sc.hi[g0 + r];
      T* srow = S + r * W;
      T* prow = Pm + r * W;
      masked[r] = lo > hi;
      if (masked[r]) {
        for (i64 c = 0; c < W; ++c) prow[c] = T(0);
        lse_r[r] = neg_inf;
        continue;
      }
      T m = neg_inf;
      for (i64 j = lo; j <= hi; ++j) {
        T x = srow[j - lo_g] * scale;
        if (softcap) {
          const T t = std::tanh(x / cap);
          x = cap * t;
          sc.f[r * W + (j - lo_g)] = T(1) - t * t;
        }
        srow[j - lo_g] = x;
        m = std::max(m, x);
      }
      T l = T(0);
      for (i64 j = lo; j <= hi; ++j) {
        const T e = std::exp(srow[j - lo_g] - m);
        prow[j - lo_g] = e;
        l += e;
      }
      const T lse = m + std::log(l);
      lse_r[r] = lse;
      for (i64 c = 0; c < lo - lo_g; ++c) prow[c] = T(0);
      for (i64 c = hi - lo_g + 1; c < W; ++c) prow[c] = T(0);
      if (!bwd) {
        for (i64 j = lo; j <= hi; ++j) prow[j - lo_g] = prow[j - lo_g] / l;
      } else {
        for (i64 j = lo; j <= hi; ++j) prow[j - lo_g] = std::exp(srow[j - lo_g] - lse);
      }
    }

    // O = round(P) . V
    T* O = sc.o.data();
    std::fill(O, O + gn * D, T(0));
    for (i64 r = 0; r < gn; ++r) {
      AxpyBatch<T> acc(O + r * D, D);
      for (i64 c = 0; c < W; ++c) acc.add(rnd(Pm[r * W + c]), vb + c * D);
      acc.flush();
    }

    if (!bwd) {
      for (i64 r = 0; r < gn; ++r) {
        const i64 i = it.i0 + g0 + r;
        if (masked[r]) {
          write_masked_row(i);
          continue;
        }
        store_row(row_ptr(P.out, s.b, s.q0 + i, it.h), P.out.dtype, P.out.es, D, O + r * D);
        if (P.lse.valid())
          store_value(P.lse.data + (s.b * P.lse.bs + it.h * P.lse.hs + (s.lse_row0 + i) * P.lse.rs) *
                                       P.lse.esize,
                      P.lse.dtype, lse_r[r]);
      }
      continue;
    }

    // Backward phase 1: D_i, dP = dO . V^T, dS = P (dP - D_i) [* tanh'], dQ.
    ensure(sc.dp, kMR * W);
    T* dP = sc.dp.data();
    const T* dob = sc.dout.data() + g0 * D;
    dot_block(dob, gn, vb, W, D, dP, W);
    T drow[kMR];
    for (i64 r = 0; r < gn; ++r) {
      T acc = T(0);
      if (!masked[r])
        for (i64 d = 0; d < D; ++d) acc += dob[r * D + d] * rnd(O[r * D + d]);
      drow[r] = acc;
    }
    for (i64 r = 0; r < gn; ++r) {
      const i64 lo = sc.lo[g0 + r], hi = sc.hi[g0 + r];
      T* prow = Pm + r * W;
      T* dprow = dP + r * W;
      for (i64 c = 0; c < W; ++c) {
        const i64 j = lo_g + c;
        if (masked[r] || j < lo || j > hi) {
          dprow[c] = T(0);
          continue;
        }
        T ds = prow[c] * (dprow[c] - drow[r]);
        if (softcap) ds *= sc.f[r * W + c];
        dprow[c] = rnd(ds);
      }
    }
    // dQ = scale * dS . K
    std::fill(O, O + gn * D, T(0));
    for (i64 r = 0; r < gn; ++r) {
      AxpyBatch<T> acc(O + r * D, D);
      for (i64 c = 0; c < W; ++c) acc.add(dP[r * W + c], kb + c * D);
      acc.flush();
    }
    for (i64 r = 0; r < gn; ++r) {
      const i64 i = it.i0 + g0 + r;
      if (masked[r]) {
        write_masked_row(i);
        continue;
      }
      T* row = sc.row.data();
      for (i64 d = 0; d < D; ++d) row[d] = scale * O[r * D + d];
      store_row(row_ptr(P.dq, s.b, s.q0 + i, it.h), P.dq.dtype, P.dq.es, D, row);
      const i64 g = P.global_row(it.b, s, i) * P.Hq + it.h;
      lse_rows[g] = double(lse_r[r]);
      d_rows[g] = double(drow[r]);
    }
  }
}

// ---- backward phase 2: dK, dV of keys [j0, j0+n) of kv head hkv ----------
template <class T>
void keys_item(const Problem& P, const Rounder& rnd, const KeyItem& it, Scratch<T>& sc,
               const double* lse_rows, const double* d_rows) {
  const Seq s = P.seq(it.b);
  const i64 D = P.D;
  const T scale = T(P.scale);
  const T cap = T(P.softcap);
  const bool softcap = P.softcap > 0.0;
  const i64 ne = std::max<i64>(0, std::min<i64>(it.n, s.sk - it.j0));  // used keys

  ensure(sc.acc_k, it.n * D);
  ensure(sc.acc_v, it.n * D);
  T* dK = sc.acc_k.data();
  T* dV = sc.acc_v.data();
  std::fill(dK, dK + it.n * D, T(0));
  std::fill(dV, dV + it.n * D, T(0));

  if (ne > 0) {
    ensure(sc.k, ne * D);
    ensure(sc.v, ne * D);
    convert_rows(P.k, s, s.k0, it.j0, ne, it.hkv, D, sc.k.data());
    convert_rows(P.v, s, s.k0, it.j0, ne, it.hkv, D, sc.v.data());
    ensure(sc.s, kMR * ne);
    ensure(sc.dp, kMR * ne);
    ensure(sc.p, kMR * ne);
    ensure(sc.f, kMR * ne);
    T* S = sc.s.data();
    T* dP = sc.dp.data();
    T* Pr = sc.p.data();
    T* dSr = sc.f.data();
    for (i64 g = 0; g < P.G; ++g) {
      const i64 h = it.hkv * P.G + g;
      i64 r0, r1;
      P.row_range(s, it.j0, it.j0 + ne - 1, &r0, &r1);
      if (r0 > r1) continue;
      const i64 nr = r1 - r0 + 1;
      ensure(sc.q, nr * D);
      ensure(sc.dout, nr * D);
      convert_rows(P.q, s, s.q0, r0, nr, h, D, sc.q.data());
      convert_rows(P.dout, s, s.q0, r0, nr, h, D, sc.dout.data());
      for (i64 g0 = 0; g0 < nr; g0 += kMR) {
        const i64 gn = std::min<i64>(kMR, nr - g0);
        const T* qb = sc.q.data() + g0 * D;
        const T* dob = sc.dout.data() + g0 * D;
        dot_block(qb, gn, sc.k.data(), ne, D, S, ne);
        dot_block(dob, gn, sc.v.data(), ne, D, dP, ne);
        bool any = false;
        for (i64 r = 0; r < gn; ++r) {
          const i64 i = r0 + g0 + r;
          i64 lo, hi;
          P.key_range(s, i, &lo, &hi);
          const i64 grow = P.global_row(it.b, s, i) * P.Hq + h;
          const T lse = T(lse_rows[grow]);
          const T dd = T(d_rows[grow]);
          for (i64 c = 0; c < ne; ++c) {
            const i64 j = it.j0 + c;
            if (j < lo || j > hi) {
              Pr[r * ne + c] = T(0);
              dSr[r * ne + c] = T(0);
              continue;
            }
            T x = S[r * ne + c] * scale;
            T fac = T(1);
            if (softcap) {
              const T t = std::tanh(x / cap);
              x = cap * t;
              fac = T(1) - t * t;
            }
            const T p = std::exp(x - lse);
            T ds = p * (dP[r * ne + c] - dd);
            if (softcap) ds *= fac;
            Pr[r * ne + c] = rnd(p);
            dSr[r * ne + c] = rnd(ds);
            any = true;
          }
        }
        if (!any) continue;
        for (i64 c = 0; c < ne; ++c) {
          AxpyBatch<T> acc_v(dV + c * D, D), acc_k(dK + c * D, D);
          for (i64 r = 0; r < gn; ++r) {
            acc_v.add(Pr[r * ne + c], dob + r * D);
            acc_k.add(dSr[r * ne + c], qb + r * D);
          }
          acc_v.flush();
          acc_k.flush();
        }
      }
    }
  }
  ensure(sc.row, D);
  T* row = sc.row.data();
  for (i64 c = 0; c < it.n; ++c) {
    const i64 j = it.j0 + c;
    for (i64 d = 0; d < D; ++d) row[d] = scale * dK[c * D + d];
    store_row(row_ptr(P.dk, s.b, s.k0 + j, it.hkv), P.dk.dtype, P.dk.es, D, row);
    store_row(row_ptr(P.dv, s.b, s.k0 + j, it.hkv), P.dv.dtype, P.dv.es, D, dV + c * D);
  }
}

// ---- setup ----------------------------------------------------------------

bool is_input_dtype(flash4_dtype t) {
  return t == FLASH4_DTYPE_FP16 || t == FLASH4_DTYPE_BF16 || t == FLASH4_DTYPE_FP32;
}
bool is_output_dtype(flash4_dtype t, flash4_dtype in) {
  return t == FLASH4_DTYPE_FP64 || t == FLASH4_DTYPE_FP32 || t == in;
}

// Fills the shape part of the problem from validated params and args, and
// checks on the host arrays what validation cannot read (it never touches
// cu_seqlens / seqused_k contents, which are device arrays for GPU calls):
// cu_seqlens non-decreasing and within q/k, seqused_k within the keys of
// its sequence. Returns an empty string when fine, else "<argument>: <rule>".
std::string setup_problem(const FwdParams& fp, const flash4_tensor& tq, const flash4_tensor& tk,
                          const flash4_attn_options& opt, Problem* P) {
  P->varlen = fp.cu_seqlens_q != nullptr;
  P->B = fp.batch;
  P->Sq = fp.seqlen_q;
  P->Sk = fp.seqlen_k;
  P->Hq = fp.heads_q;
  P->Hkv = fp.heads_kv;
  P->D = fp.headdim;
  P->cu_q = fp.cu_seqlens_q;
  P->cu_k = fp.cu_seqlens_k;
  P->used_k = fp.seqused_k;
  P->left = fp.window_left;
  P->right = fp.window_right;
  if (fp.is_causal && P->right < 0) P->right = 0;
  if (P->Hkv <= 0 || P->Hq % P->Hkv != 0) return "heads: Hq must be a multiple of Hkv";
  P->G = P->Hq / P->Hkv;
  P->scale = opt.softmax_scale != 0.0 ? opt.softmax_scale : 1.0 / std::sqrt(double(P->D));
  P->softcap = opt.softcap > 0.0 ? opt.softcap : 0.0;
  P->in_dtype = tq.dtype;
  if (!is_input_dtype(tq.dtype)) return "q: dtype must be fp16, bf16 or fp32";
  if (P->varlen) {
    if (P->cu_k == nullptr) return "opt.cu_seqlens_k: data is NULL (varlen needs both cu_seqlens)";
    P->total_q = tq.shape[0];
    P->total_k = tk.shape[0];
    if (P->cu_q[0] < 0 || P->cu_k[0] < 0)
      return P->cu_q[0] < 0 ? "opt.cu_seqlens_q: entry 0 must be >= 0"
                            : "opt.cu_seqlens_k: entry 0 must be >= 0";
    for (i64 b = 0; b < P->B; ++b) {
      if (P->cu_q[b + 1] < P->cu_q[b])
        return "opt.cu_seqlens_q: entries must be non-decreasing, entry " + std::to_string(b + 1) +
               " = " + std::to_string(P->cu_q[b + 1]) + " < entry " + std::to_string(b) + " = " +
               std::to_string(P->cu_q[b]);
      if (P->cu_k[b + 1] < P->cu_k[b])
        return "opt.cu_seqlens_k: entries must be non-decreasing, entry " + std::to_string(b + 1) +
               " = " + std::to_string(P->cu_k[b + 1]) + " < entry " + std::to_string(b) + " = " +
               std::to_string(P->cu_k[b]);
    }
    if (P->cu_q[P->B] > P->total_q)
      return "opt.cu_seqlens_q: last entry " + std::to_string(P->cu_q[P->B]) +
             " exceeds total_q = q.shape[0] = " + std::to_string(P->total_q);
    if (P->cu_k[P->B] > P->total_k)
      return "opt.cu_seqlens_k: last entry " + std::to_string(P->cu_k[P->B]) +
             " exceeds total_k = k.shape[0] = " + std::to_string(P->total_k);
  }
  if (P->used_k) {
    for (i64 b = 0; b < P->B; ++b) {
      const i64 rows = P->varlen ? i64(P->cu_k[b + 1]) - P->cu_k[b] : P->Sk;
      if (P->used_k[b] < 0 || P->used_k[b] > rows)
        return "opt.seqused_k: entry " + std::to_string(b) + " = " + std::to_string(P->used_k[b]) +
               " is outside [0, " + std::to_string(rows) + "], the keys of that sequence";
    }
  }
  return std::string();
}

std::vector<RowItem> row_items(const Problem& P) {
  std::vector<RowItem> items;
  for (i64 b = 0; b < P.B; ++b) {
    const Seq s = P.seq(b);
    for (i64 h = 0; h < P.Hq; ++h)
      for (i64 i0 = 0; i0 < s.sq; i0 += kRowBlock)
        items.push_back({b, h, i0, std::min<i64>(kRowBlock, s.sq - i0)});
  }
  return items;
}

std::vector<KeyItem> key_items(const Problem& P) {
  std::vector<KeyItem> items;
  for (i64 b = 0; b < P.B; ++b) {
    const Seq s = P.seq(b);
    for (i64 h = 0; h < P.Hkv; ++h)
      for (i64 j0 = 0; j0 < s.sk_rows; j0 += kKeyBlock)
        items.push_back({b, h, j0, std::min<i64>(kKeyBlock, s.sk_rows - j0)});
  }
  return items;
}

Rounder make_rounder(flash4_ref_precision prec, flash4_dtype in) {
  Rounder r;
  if (prec == FLASH4_REF_LOWP) r.kind = in == FLASH4_DTYPE_BF16 ? 1 : in == FLASH4_DTYPE_FP16 ? 2 : 0;
  return r;
}

template <class T>
flash4_status run_fwd(const Problem& P, const Rounder& rnd, int num_threads) {
  const std::vector<RowItem> items = row_items(P);
  const int threads = resolve_threads(num_threads, i64(items.size()));
  std::vector<Scratch<T>> scratch(static_cast<size_t>(threads));
  std::string error;
  const bool ok = parallel_for(
      i64(items.size()), threads,
      [&](i64 i, int w) { rows_item<T>(P, rnd, items[size_t(i)], false, scratch[size_t(w)], nullptr, nullptr); },
      &error);
  if (!ok) return fail(FLASH4_ERROR_INTERNAL, "flash4_reference_fwd: " + error);
  clear_last_error();  // like every other call that goes through
  return FLASH4_OK;
}

template <class T>
flash4_status run_bwd(const Problem& P, const Rounder& rnd, int num_threads) {
  const std::vector<RowItem> ritems = row_items(P);
  const std::vector<KeyItem> kitems = key_items(P);
  std::vector<double> lse_rows, d_rows;
  std::string error;
  try {
    lse_rows.assign(size_t(P.total_rows() * P.Hq), 0.0);
    d_rows.assign(size_t(P.total_rows() * P.Hq), 0.0);
  } catch (const std::bad_alloc&) {
    return fail(FLASH4_ERROR_INTERNAL, "flash4_reference_bwd: out of host memory");
  }
  const int threads = resolve_threads(num_threads, std::max<i64>(i64(ritems.size()), i64(kitems.size())));
  std::vector<Scratch<T>> scratch(static_cast<size_t>(threads));
  bool ok = parallel_for(
      i64(ritems.size()), std::min<int>(threads, int(std::max<size_t>(ritems.size(), 1))),
      [&](i64 i, int w) {
        rows_item<T>(P, rnd, ritems[size_t(i)], true, scratch[size_t(w)], lse_rows.data(), d_rows.data());
      },
      &error);
  if (ok)
    ok = parallel_for(
        i64(kitems.size()), std::min<int>(threads, int(std::max<size_t>(kitems.size(), 1))),
        [&](i64 i, int w) {
          keys_item<T>(P, rnd, kitems[size_t(i)], scratch[size_t(w)], lse_rows.data(), d_rows.data());
        },
        &error);
  if (!ok) return fail(FLASH4_ERROR_INTERNAL, "flash4_reference_bwd: " + error);
  clear_last_error();
  return FLASH4_OK;
}

}  // namespace
}  // namespace flash4

extern "C" FLASH4_API flash4_status flash4_reference_fwd(const flash4_fwd_args* args,
                                                         flash4_ref_precision precision,
                                                         int num_threads) {
  using namespace flash4;
  try {
    if (args == nullptr) return fail(FLASH4_ERROR_INVALID_ARGUMENT, "flash4_reference_fwd: args is NULL");
    if (precision != FLASH4_REF_FP64 && precision != FLASH4_REF_LOWP)
      return fail(FLASH4_ERROR_INVALID_ARGUMENT,
                  "flash4_reference_fwd: precision must be FLASH4_REF_FP64 or FLASH4_REF_LOWP");
    FwdParams fp;
    std::string message;
    const flash4_status st = validate_fwd(*args, Target::kReference, &fp, &message);
    if (st != FLASH4_OK) return fail(st, message);

    Problem P;
    std::string err = setup_problem(fp, args->q, args->k, args->opt, &P);
    if (err.empty() && !is_output_dtype(args->out.dtype, P.in_dtype))
      err = "out: dtype must be fp64, fp32 or q's dtype";
    if (err.empty() && args->lse.data != nullptr && !is_output_dtype(args->lse.dtype, P.in_dtype))
      err = "lse: dtype must be fp64, fp32 or q's dtype";
    if (!err.empty()) return fail(FLASH4_ERROR_INVALID_ARGUMENT, err);
    P.q = head_view(args->q, P.varlen);
    P.k = head_view(args->k, P.varlen);
    P.v = head_view(args->v, P.varlen);
    P.out = head_view(args->out, P.varlen);
    if (args->lse.data != nullptr) P.lse = lse_view(args->lse, P.varlen);

    const Rounder rnd = make_rounder(precision, P.in_dtype);
    if (precision == FLASH4_REF_FP64) return run_fwd<double>(P, rnd, num_threads);
    return run_fwd<float>(P, rnd, num_threads);
  } catch (const std::bad_alloc&) {
    return fail(FLASH4_ERROR_INTERNAL, "flash4_reference_fwd: out of host memory");
  } catch (const std::exception& e) {
    return fail(FLASH4_ERROR_INTERNAL, std::string("flash4_reference_fwd: ") + e.what());
  }
}

extern "C" FLASH4_API flash4_status flash4_reference_bwd(const flash4_bwd_args* args,
                                                         flash4_ref_precision precision,
                                                         int num_threads) {
  using namespace flash4;
  try {
    if (args == nullptr) return fail(FLASH4_ERROR_INVALID_ARGUMENT, "flash4_reference_bwd: args is NULL");
    if (precision != FLASH4_REF_FP64 && precision != FLASH4_REF_LOWP)
      return fail(FLASH4_ERROR_INVALID_ARGUMENT,
                  "flash4_reference_bwd: precision must be FLASH4_REF_FP64 or FLASH4_REF_LOWP");
    BwdParams bp;
    std::string message;
    const flash4_status st = validate_bwd(*args, Target::kReference, &bp, &message);
    if (st != FLASH4_OK) return fail(st, message);

    Problem P;
    std::string err = setup_problem(bp, args->q, args->k, args->opt, &P);
    if (err.empty() && !is_input_dtype(args->dout.dtype))
      err = "dout: dtype must be fp16, bf16 or fp32";
    if (err.empty())
      for (const flash4_tensor* t : {&args->dq, &args->dk, &args->dv})
        if (!is_output_dtype(t->dtype, P.in_dtype)) {
          err = "dq/dk/dv: dtypes must be fp64, fp32 or q's dtype";
          break;
        }
    if (!err.empty()) return fail(FLASH4_ERROR_INVALID_ARGUMENT, err);
    P.q = head_view(args->q, P.varlen);
    P.k = head_view(args->k, P.varlen);
    P.v = head_view(args->v, P.varlen);
    P.dout = head_view(args->dout, P.varlen);
    P.dq = head_view(args->dq, P.varlen);
    P.dk = head_view(args->dk, P.varlen);
    P.dv = head_view(args->dv, P.varlen);

    const Rounder rnd = make_rounder(precision, P.in_dtype);
    if (precision == FLASH4_REF_FP64) return run_bwd<double>(P, rnd, num_threads);
    return run_bwd<float>(P, rnd, num_threads);
  } catch (const std::bad_alloc&) {
    return fail(FLASH4_ERROR_INTERNAL, "flash4_reference_bwd: out of host memory");
  } catch (const std::exception& e) {
    return fail(FLASH4_ERROR_INTERNAL, std::string("flash4_reference_bwd: ") + e.what());
  }
}
