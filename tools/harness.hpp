// Test harness shared by the GPU tests (tests/test_fwd_gpu.cpp,
// tests/test_bwd_gpu.cpp) and `flash4 check` (tools/check_cmd.hpp). Header-only.
//
//   Problem      what to run: shapes, dtype, mask options, varlen lengths,
//                memory layout, seed.
//   HostCase     the problem made concrete: seeded random inputs (never zero),
//                laid out in host "allocations" exactly as they will be on the
//                device (strides, padding), every byte outside a tensor view
//                set to NaN so that reads of padding poison the result.
//   DeviceCase   the same allocations on the GPU plus out/lse buffers with
//                guard regions; launch() calls flash4_fwd on a stream.
//   Reference    flash4_reference_fwd in FLASH4_REF_FP64 and FLASH4_REF_LOWP.
//   evaluate()   the tolerance rule of docs/design.md:
//                  err(x) = max |x - ref_fp64|,
//                  pass iff nothing unwritten / NaN / out of bounds and
//                  err(kernel) <= rtol * err(lowp) + atol.
//   run_gpu_fwd  all of the above for one problem.
//   Backward     the same for flash4_bwd (BwdHostCase ... run_gpu_bwd, below).
//
// Every CUDA status is checked; failures throw harness::Error with the call,
// the CUDA error name and the source location.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "flash4/flash4.h"
#include "../src/common/host_dtype.hpp"

namespace flash4 {
namespace harness {

// ======================================================================
// Errors and CUDA RAII
// ======================================================================

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  std::ostringstream os;
  os << what << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e) << ") at "
     << file << ":" << line;
  throw Error(os.str());
}
#define FLASH4_HARNESS_CUDA(call) ::flash4::harness::cuda_check((call), #call, __FILE__, __LINE__)

// True when at least one CUDA device can be used; otherwise *why says why.
inline bool cuda_device_available(std::string* why = nullptr) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    (void)cudaGetLastError();  // clear the sticky-free error state
    return false;
  }
  if (n <= 0) {
    if (why) *why = "cudaGetDeviceCount returned 0 devices";
    return false;
  }
  return true;
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) FLASH4_HARNESS_CUDA(cudaMalloc(&ptr_, bytes_));
  }
  ~DeviceBuffer() {
    if (ptr_) (void)cudaFree(ptr_);  // destructor: cannot throw; errors surface on the next checked call
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) (void)cudaFree(ptr_);
      ptr_ = o.ptr_; bytes_ = o.bytes_;
      o.ptr_ = nullptr; o.bytes_ = 0;
    }
    return *this;
  }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

  void upload(const void* src, size_t n) {
    if (n > bytes_) throw Error("DeviceBuffer::upload: " + std::to_string(n) + " bytes into a buffer of " + std::to_string(bytes_));
    if (n) FLASH4_HARNESS_CUDA(cudaMemcpy(ptr_, src, n, cudaMemcpyHostToDevice));
  }
  void download(void* dst, size_t n) const {
    if (n > bytes_) throw Error("DeviceBuffer::download: " + std::to_string(n) + " bytes from a buffer of " + std::to_string(bytes_));
    if (n) FLASH4_HARNESS_CUDA(cudaMemcpy(dst, ptr_, n, cudaMemcpyDeviceToHost));
  }
  void fill_async(int byte, cudaStream_t s) {
    if (bytes_) FLASH4_HARNESS_CUDA(cudaMemsetAsync(ptr_, byte, bytes_, s));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class Stream {
 public:
  Stream() { FLASH4_HARNESS_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { if (s_) (void)cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const { FLASH4_HARNESS_CUDA(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

class Graph {
 public:
  Graph() = default;
  ~Graph() { reset(); }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void reset() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    exec_ = nullptr; graph_ = nullptr;
  }
  cudaGraph_t* graph_ptr() { return &graph_; }
  cudaGraph_t graph() const { return graph_; }
  void instantiate() { FLASH4_HARNESS_CUDA(cudaGraphInstantiate(&exec_, graph_, 0)); }
  void launch(cudaStream_t s) const { FLASH4_HARNESS_CUDA(cudaGraphLaunch(exec_, s)); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// ======================================================================
// dtype helpers
// ======================================================================

inline const char* dtype_name(flash4_dtype t) {
  switch (t) {
    case FLASH4_DTYPE_FP16: return "fp16";
    case FLASH4_DTYPE_BF16: return "bf16";
    case FLASH4_DTYPE_FP32: return "fp32";
    case FLASH4_DTYPE_FP64: return "fp64";
    case FLASH4_DTYPE_INT32: return "int32";
  }
  return "?";
}
inline float half_to_float(flash4_dtype t, uint16_t h) {
  return t == FLASH4_DTYPE_FP16 ? fp16_to_float(h) : bf16_to_float(h);
}
inline uint16_t float_to_half(flash4_dtype t, float f) {
  return t == FLASH4_DTYPE_FP16 ? float_to_fp16(f) : float_to_bf16(f);
}
inline float round_to(flash4_dtype t, float f) { return half_to_float(t, float_to_half(t, f)); }
// Unit roundoff (half an ulp at 1) of the 16-bit storage types.
inline double unit_roundoff(flash4_dtype t) {
  return t == FLASH4_DTYPE_FP16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}
constexpr double kEps32 = 5.9604644775390625e-08;  // 2^-24, unit roundoff of float32

constexpr uint16_t kPoison16 = 0xFFFFu;     // NaN in fp16 and in bf16
constexpr uint32_t kPoison32 = 0xFFFFFFFFu; // NaN in fp32
constexpr int64_t kGuardElems = 64;         // 16-bit elements of guard before/after each buffer (128 B)
constexpr int64_t kLseGuard = 32;           // floats of guard before/after lse (128 B)

// ======================================================================
// Problem description
// ======================================================================

enum class Layout {
  kContiguous,  // (B, S, H, D) / (T, H, D) dense
  kPackedQKV,   // q, k, v sliced from one (B, S, 3, H, D) / (T, 3, H, D) buffer; out dense
  kHeadMajor,   // memory order (B, H, S, D) / (H, T, D): row stride D, head stride S*D
  kPadded,      // head stride D+8, row stride H*(D+8)+8, batch stride S*row+16; out padded too
};
inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "dense";
    case Layout::kPackedQKV: return "packed-qkv";
    case Layout::kHeadMajor: return "head-major";
    case Layout::kPadded: return "padded";
  }
  return "?";
}

struct Problem {
  int batch = 1;
  int seqlen_q = 128;  // batched only (varlen: seqlens_q)
  int seqlen_k = 128;
  int heads_q = 2;
  int heads_kv = 2;
  int headdim = 64;
  flash4_dtype dtype = FLASH4_DTYPE_BF16;
  bool causal = false;
  int window_left = -1;
  int window_right = -1;
  double softcap = 0.0;
  double softmax_scale = 0.0;  // 0: 1/sqrt(headdim)
  bool varlen = false;
  std::vector<int> seqlens_q;  // varlen: batch entries (zeros allowed)
  std::vector<int> seqlens_k;
  std::vector<int> seqused_k;  // optional, batch entries, each <= that sequence's seqlen_k
  Layout layout = Layout::kContiguous;
  bool with_lse = true;        // false: lse.data = NULL (not computed)
  flash4_path path = FLASH4_PATH_AUTO;
  int exp2_emulation = 0;      // opt.exp2_emulation (-1 off, 0 default, 1 on)
  double input_std = 1.0;      // standard deviation of the random inputs
  uint64_t seed = 1;
  double rtol = 2.0;           // the rule's factor on err(lowp)
  double grad_rtol = 3.0;      // the backward rule's factor on err(lowp) (dq, dk, dv)

  double scale() const { return softmax_scale != 0.0 ? softmax_scale : 1.0 / std::sqrt(double(headdim)); }
};

// One-line description, enough to rebuild the case.
inline std::string describe(const Problem& p) {
  std::ostringstream os;
  os << dtype_name(p.dtype);
  if (p.varlen) {
    os << " varlen B=" << p.batch << " sq=[";
    for (size_t i = 0; i < p.seqlens_q.size(); ++i) os << (i ? "," : "") << p.seqlens_q[i];
    os << "] sk=[";
    for (size_t i = 0; i < p.seqlens_k.size(); ++i) os << (i ? "," : "") << p.seqlens_k[i];
    os << "]";
  } else {
    os << " B=" << p.batch << " Sq=" << p.seqlen_q << " Sk=" << p.seqlen_k;
  }
  if (!p.seqused_k.empty()) {
    os << " used_k=[";
    for (size_t i = 0; i < p.seqused_k.size(); ++i) os << (i ? "," : "") << p.seqused_k[i];
    os << "]";
  }
  os << " H=" << p.heads_q << "/" << p.heads_kv << " d=" << p.headdim;
  if (p.causal) os << " causal";
  if (p.window_left >= 0 || p.window_right >= 0) os << " win=(" << p.window_left << "," << p.window_right << ")";
  if (p.softcap != 0.0) os << " softcap=" << p.softcap;
  if (p.exp2_emulation != 0) os << " exp2_emulation=" << p.exp2_emulation;
  if (p.softmax_scale != 0.0) os << " scale=" << p.softmax_scale;
  if (p.layout != Layout::kContiguous) os << " " << layout_name(p.layout);
  if (!p.with_lse) os << " no-lse";
  if (p.path != FLASH4_PATH_AUTO) os << " path=" << (p.path == FLASH4_PATH_PORTABLE ? "portable" : p.path == FLASH4_PATH_SM90 ? "sm90" : "?");
  if (p.input_std != 1.0) os << " std=" << p.input_std;
  char seed[32];
  std::snprintf(seed, sizeof seed, "%#llx", static_cast<unsigned long long>(p.seed));
  os << " seed=" << seed;
  return os.str();
}

// splitmix64: derive per-case seeds from a base seed and a case index.
inline uint64_t mix_seed(uint64_t base, uint64_t index) {
  uint64_t z = base + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Lengths in [0, max]; every third sequence (and the last) has no keys, every
// fourth has no queries (FlashAttention's zero_lengths pattern, plus q).
inline void random_lengths(Problem* p, int batch, int max_q, int max_k, bool same, bool seqused, std::mt19937_64& rng) {
  p->varlen = true;
  p->batch = batch;
  p->seqlens_q.resize(batch);
  p->seqlens_k.resize(batch);
  std::uniform_int_distribution<int> uq(1, max_q), uk(1, max_k);
  for (int b = 0; b < batch; ++b) {
    p->seqlens_q[b] = uq(rng);
    p->seqlens_k[b] = same ? p->seqlens_q[b] : uk(rng);
    if (!same) {
      if (b % 3 == 2 || b == batch - 1) p->seqlens_k[b] = 0;
      if (b % 4 == 1) p->seqlens_q[b] = 0;
    } else if (b % 4 == 1) {
      p->seqlens_q[b] = p->seqlens_k[b] = 0;
    }
  }
  if (seqused) {
    p->seqused_k.resize(batch);
    for (int b = 0; b < batch; ++b) {
      std::uniform_int_distribution<int> uu(0, p->seqlens_k[b]);
      p->seqused_k[b] = uu(rng);
    }
  }
}
// ======================================================================
// Host case: concrete inputs and their memory layout
// ======================================================================

struct View {
  int alloc = 0;       // index into HostCase::allocs
  int64_t offset = 0;  // elements from the allocation start
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t stride[4] = {0, 0, 0, 0};
  int64_t numel() const { int64_t n = 1; for (int i = 0; i < ndim; ++i) n *= shape[i]; return n; }
  // Storage offset of logical element (row, h, d): row is b*S+s (batched) or t (varlen).
  int64_t at(int64_t row, int64_t h, int64_t d, int64_t rows_per_batch) const {
    if (ndim == 4) {
      int64_t b = rows_per_batch ? row / rows_per_batch : 0, s = rows_per_batch ? row % rows_per_batch : 0;
      return offset + b * stride[0] + s * stride[1] + h * stride[2] + d * stride[3];
    }
    return offset + row * stride[0] + h * stride[1] + d * stride[2];
  }
};

struct HostCase {
  Problem p;
  int batch = 0;
  std::vector<int> sq, sk, sk_used;       // per sequence
  std::vector<int64_t> q_start, k_start;  // first logical row of each sequence
  int64_t rows_q = 0, rows_k = 0;         // B*Sq / total_q and B*Sk / total_k
  int64_t max_sq = 0, max_sk = 0;
  std::vector<int32_t> cu_q, cu_k, seqused;  // int32 arrays handed to the API (varlen / seqused)

  // Logical inputs, dense (rows, heads, D), already in the dtype.
  std::vector<uint16_t> q_log, k_log, v_log;

  // Physical storage: 16-bit allocations; everything outside the views is NaN.
  std::vector<std::vector<uint16_t>> allocs;
  View q, k, v, out;
  int64_t lse_numel = 0;  // (B, Hq, Sq) or (Hq, total_q), dense

  int64_t out_numel() const { return rows_q * p.heads_q * p.headdim; }
  int64_t q_rows_per_batch() const { return p.varlen ? 0 : p.seqlen_q; }
  int64_t k_rows_per_batch() const { return p.varlen ? 0 : p.seqlen_k; }
  // Logical index of out element / lse element.
  int64_t out_index(int64_t row, int h, int d) const { return (row * p.heads_q + h) * p.headdim + d; }
  int64_t lse_index(int b, int64_t i, int h) const {
    return p.varlen ? int64_t(h) * rows_q + q_start[b] + i : (int64_t(b) * p.heads_q + h) * p.seqlen_q + i;
  }
};

namespace detail {

inline void check_problem(const Problem& p) {
  auto bad = [&](const std::string& m) { throw Error("harness: bad problem (" + describe(p) + "): " + m); };
  if (p.batch < 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.headdim <= 0) bad("sizes");
  if (p.varlen) {
    if (int(p.seqlens_q.size()) != p.batch || int(p.seqlens_k.size()) != p.batch) bad("varlen lengths must have batch entries");
    for (int i = 0; i < p.batch; ++i)
      if (p.seqlens_q[i] < 0 || p.seqlens_k[i] < 0) bad("negative length");
  } else if (p.seqlen_q < 0 || p.seqlen_k < 0) {
    bad("negative length");
  }
  if (!p.seqused_k.empty()) {
    if (int(p.seqused_k.size()) != p.batch) bad("seqused_k must have batch entries");
    for (int i = 0; i < p.batch; ++i) {
      int skb = p.varlen ? p.seqlens_k[i] : p.seqlen_k;
      if (p.seqused_k[i] < 0 || p.seqused_k[i] > skb) bad("seqused_k out of range");
    }
  }
  if (p.layout == Layout::kPackedQKV) {
    if (p.heads_q != p.heads_kv) bad("packed qkv needs heads_q == heads_kv");
    if (p.varlen ? p.seqlens_q != p.seqlens_k : p.seqlen_q != p.seqlen_k) bad("packed qkv needs equal q/k lengths");
  }
}

// Dense or strided view of a (rows, H, D) logical tensor; allocation size in elements.
inline View make_view(const Problem& p, int alloc, int64_t rows, int64_t rows_per_batch, int heads, Layout layout,
                      int64_t offset) {
  View v;
  v.alloc = alloc;
  v.offset = offset;
  const int64_t D = p.headdim;
  int64_t row_st = heads * D, head_st = D, batch_st = 0;
  switch (layout) {
    case Layout::kContiguous:
    case Layout::kPackedQKV:  // packed handled by the caller
      row_st = heads * D; head_st = D; batch_st = rows_per_batch * row_st;
      break;
    case Layout::kHeadMajor:
      row_st = D; head_st = (p.varlen ? rows : rows_per_batch) * D; batch_st = heads * head_st;
      if (head_st == 0) head_st = D;  // zero-length: any stride is fine, keep it positive
      if (batch_st == 0) batch_st = heads * D;
      break;
    case Layout::kPadded:
      head_st = D + 8; row_st = heads * (D + 8) + 8; batch_st = rows_per_batch * row_st + 16;
      break;
  }
  if (p.varlen) {
    v.ndim = 3;
    v.shape[0] = rows; v.shape[1] = heads; v.shape[2] = D;
    v.stride[0] = row_st; v.stride[1] = head_st; v.stride[2] = 1;
  } else {
    v.ndim = 4;
    v.shape[0] = p.batch; v.shape[1] = rows_per_batch; v.shape[2] = heads; v.shape[3] = D;
    v.stride[0] = batch_st; v.stride[1] = row_st; v.stride[2] = head_st; v.stride[3] = 1;
  }
  return v;
}

// Elements spanned by a view (max offset + 1 past the view's offset), 0 if empty.
inline int64_t view_span(const View& v) {
  if (v.numel() == 0) return 0;
  int64_t last = 0;
  for (int i = 0; i < v.ndim; ++i) last += (v.shape[i] - 1) * v.stride[i];
  return last + 1;
}

inline void scatter(const HostCase& hc, const View& v, const std::vector<uint16_t>& logical, int heads,
                    int64_t rows, int64_t rows_per_batch, std::vector<uint16_t>* alloc) {
  const int D = hc.p.headdim;
  for (int64_t r = 0; r < rows; ++r)
    for (int h = 0; h < heads; ++h)
      for (int d = 0; d < D; ++d)
        (*alloc)[size_t(v.at(r, h, d, rows_per_batch))] = logical[size_t((r * heads + h) * D + d)];
}

}  // namespace detail

// Builds the host case from given logical inputs (dense (rows, H, D) arrays in the dtype).
inline HostCase make_case_from(const Problem& p, std::vector<uint16_t> q_log, std::vector<uint16_t> k_log,
                               std::vector<uint16_t> v_log) {
  detail::check_problem(p);
  HostCase hc;
  hc.p = p;
  hc.batch = p.batch;
  const int B = p.batch;
  hc.sq.resize(B); hc.sk.resize(B); hc.sk_used.resize(B); hc.q_start.resize(B); hc.k_start.resize(B);
  int64_t tq = 0, tk = 0;
  for (int b = 0; b < B; ++b) {
    hc.sq[b] = p.varlen ? p.seqlens_q[b] : p.seqlen_q;
    hc.sk[b] = p.varlen ? p.seqlens_k[b] : p.seqlen_k;
    hc.sk_used[b] = p.seqused_k.empty() ? hc.sk[b] : p.seqused_k[b];
    hc.q_start[b] = tq; hc.k_start[b] = tk;
    tq += hc.sq[b]; tk += hc.sk[b];
    hc.max_sq = std::max<int64_t>(hc.max_sq, hc.sq[b]);
    hc.max_sk = std::max<int64_t>(hc.max_sk, hc.sk[b]);
  }
  hc.rows_q = tq; hc.rows_k = tk;
  if (!p.varlen) { hc.max_sq = p.seqlen_q; hc.max_sk = p.seqlen_k; }
  if (p.varlen) {
    hc.cu_q.resize(B + 1); hc.cu_k.resize(B + 1);
    for (int b = 0; b <= B; ++b) {
      hc.cu_q[b] = int32_t(b < B ? hc.q_start[b] : tq);
      hc.cu_k[b] = int32_t(b < B ? hc.k_start[b] : tk);
    }
  }
  if (!p.seqused_k.empty()) hc.seqused.assign(p.seqused_k.begin(), p.seqused_k.end());

  const int D = p.headdim;
  const size_t nq = size_t(hc.rows_q) * p.heads_q * D, nk = size_t(hc.rows_k) * p.heads_kv * D;
  if (q_log.size() != nq || k_log.size() != nk || v_log.size() != nk)
    throw Error("harness: logical input sizes do not match the problem " + describe(p));
  hc.q_log = std::move(q_log); hc.k_log = std::move(k_log); hc.v_log = std::move(v_log);

  const int64_t rq = hc.q_rows_per_batch(), rk = hc.k_rows_per_batch();
  const int64_t G = kGuardElems;
  if (p.layout == Layout::kPackedQKV) {
    // One (rows, 3, H, D) buffer; q/k/v are the three slices.
    const int64_t H = p.heads_q;
    View base = detail::make_view(p, 0, hc.rows_q, rq, int(H), Layout::kContiguous, G);
    // Re-stride the dense view for the interleaved layout.
    if (p.varlen) { base.stride[0] = 3 * H * D; }
    else { base.stride[1] = 3 * H * D; base.stride[0] = rq * 3 * H * D; }
    hc.q = base; hc.k = base; hc.v = base;
    hc.k.offset = G + H * D;
    hc.v.offset = G + 2 * H * D;
    int64_t span = std::max({detail::view_span(hc.q), detail::view_span(hc.k) + H * D, detail::view_span(hc.v) + 2 * H * D});
    hc.allocs.emplace_back(size_t(span + 2 * G), kPoison16);
    hc.out = detail::make_view(p, 1, hc.rows_q, rq, p.heads_q, Layout::kContiguous, G);
  } else {
    hc.q = detail::make_view(p, 0, hc.rows_q, rq, p.heads_q, p.layout, G);
    hc.k = detail::make_view(p, 1, hc.rows_k, rk, p.heads_kv, p.layout, G);
    hc.v = detail::make_view(p, 2, hc.rows_k, rk, p.heads_kv, p.layout, G);
    for (const View* v : {&hc.q, &hc.k, &hc.v}) hc.allocs.emplace_back(size_t(detail::view_span(*v) + 2 * G), kPoison16);
    hc.out = detail::make_view(p, 3, hc.rows_q, rq, p.heads_q, p.layout, G);
  }
  detail::scatter(hc, hc.q, hc.q_log, p.heads_q, hc.rows_q, rq, &hc.allocs[size_t(hc.q.alloc)]);
  detail::scatter(hc, hc.k, hc.k_log, p.heads_kv, hc.rows_k, rk, &hc.allocs[size_t(hc.k.alloc)]);
  detail::scatter(hc, hc.v, hc.v_log, p.heads_kv, hc.rows_k, rk, &hc.allocs[size_t(hc.v.alloc)]);
  // The out allocation is only a size on the host side (its content is the GPU's).
  hc.allocs.emplace_back(size_t(detail::view_span(hc.out) + 2 * G), kPoison16);
  hc.lse_numel = hc.rows_q * p.heads_q;
  return hc;
}

// Fresh seeded random inputs: normal(0, input_std), rounded to the dtype, never zero.
inline std::vector<uint16_t> random_halves(size_t n, flash4_dtype dt, double std_dev, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, float(std_dev));
  std::vector<uint16_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    float x = round_to(dt, nd(rng));
    if (x == 0.0f || !std::isfinite(x)) x = round_to(dt, (i & 1 ? 0.5f : -0.5f) * float(std_dev));
    out[i] = float_to_half(dt, x);
  }
  return out;
}

inline HostCase make_case(const Problem& p) {
  detail::check_problem(p);
  int64_t tq = 0, tk = 0;
  for (int b = 0; b < p.batch; ++b) {
    tq += p.varlen ? p.seqlens_q[b] : p.seqlen_q;
    tk += p.varlen ? p.seqlens_k[b] : p.seqlen_k;
  }
  std::mt19937_64 rng(p.seed);
  const size_t D = size_t(p.headdim);
  auto q = random_halves(size_t(tq) * p.heads_q * D, p.dtype, p.input_std, rng);
  auto k = random_halves(size_t(tk) * p.heads_kv * D, p.dtype, p.input_std, rng);
  auto v = random_halves(size_t(tk) * p.heads_kv * D, p.dtype, p.input_std, rng);
  return make_case_from(p, std::move(q), std::move(k), std::move(v));
}

// ======================================================================
// flash4 argument construction (same for device and host pointers)
// ======================================================================

inline flash4_tensor tensor_of(const View& v, void* alloc_base, flash4_dtype dt) {
  flash4_tensor t;
  std::memset(&t, 0, sizeof t);
  t.data = alloc_base ? static_cast<void*>(static_cast<uint16_t*>(alloc_base) + v.offset) : nullptr;
  t.dtype = dt;
  t.ndim = v.ndim;
  for (int i = 0; i < v.ndim; ++i) { t.shape[i] = v.shape[i]; t.stride[i] = v.stride[i]; }
  return t;
}
inline flash4_tensor dense_tensor(void* data, flash4_dtype dt, std::initializer_list<int64_t> shape) {
  flash4_tensor t;
  std::memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dt;
  t.ndim = int32_t(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t st = 1;
  for (int j = t.ndim - 1; j >= 0; --j) { t.stride[j] = st; st *= t.shape[j]; }
  return t;
}
inline flash4_tensor lse_tensor(const HostCase& hc, void* data, flash4_dtype dt) {
  const Problem& p = hc.p;
  return p.varlen ? dense_tensor(data, dt, {p.heads_q, hc.rows_q}) : dense_tensor(data, dt, {p.batch, p.heads_q, p.seqlen_q});
}
inline flash4_tensor out_dense_tensor(const HostCase& hc, void* data, flash4_dtype dt) {
  const Problem& p = hc.p;
  return p.varlen ? dense_tensor(data, dt, {hc.rows_q, p.heads_q, p.headdim})
                  : dense_tensor(data, dt, {p.batch, p.seqlen_q, p.heads_q, p.headdim});
}

// Input views and options; out/lse left for the caller.
inline flash4_fwd_args make_args(const HostCase& hc, const std::vector<void*>& alloc_bases, const void* cu_q,
                                 const void* cu_k, const void* seqused) {
  const Problem& p = hc.p;
  flash4_fwd_args a;
  std::memset(&a, 0, sizeof a);
  a.q = tensor_of(hc.q, alloc_bases[size_t(hc.q.alloc)], p.dtype);
  a.k = tensor_of(hc.k, alloc_bases[size_t(hc.k.alloc)], p.dtype);
  a.v = tensor_of(hc.v, alloc_bases[size_t(hc.v.alloc)], p.dtype);
  a.opt.softmax_scale = p.softmax_scale;
  a.opt.causal = p.causal ? 1 : 0;
  a.opt.use_window = (p.window_left >= 0 || p.window_right >= 0) ? 1 : 0;
  a.opt.window_left = p.window_left;
  a.opt.window_right = p.window_right;
  a.opt.softcap = p.softcap;
  a.opt.exp2_emulation = p.exp2_emulation;
  if (p.varlen) {
    a.opt.cu_seqlens_q = dense_tensor(const_cast<void*>(cu_q), FLASH4_DTYPE_INT32, {p.batch + 1});
    a.opt.cu_seqlens_k = dense_tensor(const_cast<void*>(cu_k), FLASH4_DTYPE_INT32, {p.batch + 1});
    a.opt.max_seqlen_q = hc.max_sq;
    a.opt.max_seqlen_k = hc.max_sk;
  }
  if (!p.seqused_k.empty()) a.opt.seqused_k = dense_tensor(const_cast<void*>(seqused), FLASH4_DTYPE_INT32, {p.batch});
  a.opt.path = p.path;
  return a;
}

// ======================================================================
// Device case
// ======================================================================

struct RawOutput {
  std::vector<uint16_t> out_alloc;  // the whole out allocation, guards included
  std::vector<float> lse_alloc;     // the whole lse allocation, guards included (empty: no lse)
};

class DeviceCase {
 public:
  explicit DeviceCase(const HostCase& hc) : hc_(&hc) {
    const Problem& p = hc.p;
    std::vector<void*> bases;
    for (size_t i = 0; i < hc.allocs.size(); ++i) {
      bufs_.emplace_back(hc.allocs[i].size() * sizeof(uint16_t));
      if (int(i) != hc.out.alloc) bufs_.back().upload(hc.allocs[i].data(), hc.allocs[i].size() * sizeof(uint16_t));
      bases.push_back(bufs_.back().data());
    }
    if (p.varlen) {
      cu_q_ = DeviceBuffer(hc.cu_q.size() * sizeof(int32_t));
      cu_q_.upload(hc.cu_q.data(), hc.cu_q.size() * sizeof(int32_t));
      cu_k_ = DeviceBuffer(hc.cu_k.size() * sizeof(int32_t));
      cu_k_.upload(hc.cu_k.data(), hc.cu_k.size() * sizeof(int32_t));
    }
    if (!hc.seqused.empty()) {
      seqused_ = DeviceBuffer(hc.seqused.size() * sizeof(int32_t));
      seqused_.upload(hc.seqused.data(), hc.seqused.size() * sizeof(int32_t));
    } else if (p.batch == 0 && !p.seqused_k.empty()) {
      seqused_ = DeviceBuffer(16);
    }
    // Empty cu_seqlens arrays still need a pointer (B+1 >= 1 entries, so never empty).
    args = make_args(hc, bases, cu_q_.data(), cu_k_.data(), seqused_.data());
    args.out = tensor_of(hc.out, bufs_[size_t(hc.out.alloc)].data(), p.dtype);
    if (p.with_lse) {
      lse_ = DeviceBuffer(size_t(hc.lse_numel + 2 * kLseGuard) * sizeof(float));
      args.lse = lse_tensor(hc, static_cast<float*>(lse_.data()) + kLseGuard, FLASH4_DTYPE_FP32);
    } else {
      args.lse = lse_tensor(hc, nullptr, FLASH4_DTYPE_FP32);
    }
    size_t ws = 0;
    flash4_status st = flash4_fwd_workspace_size(&args, &ws);
    ws_status_ = st;
    if (st == FLASH4_OK && ws > 0) workspace_ = DeviceBuffer(ws);
  }

  // Status of flash4_fwd_workspace_size at construction (launch() reports it too).
  flash4_status workspace_status() const { return ws_status_; }

  // Fills out and lse, guards included, with NaN bytes.
  void poison(cudaStream_t s) {
    bufs_[size_t(hc_->out.alloc)].fill_async(0xFF, s);
    lse_.fill_async(0xFF, s);
  }

  // flash4_fwd on the stream with the current args (tests may alter `args`).
  flash4_status launch(cudaStream_t s, std::string* message = nullptr) {
    if (ws_status_ != FLASH4_OK) {
      if (message) *message = std::string("flash4_fwd_workspace_size: ") + flash4_last_error();
      return ws_status_;
    }
    flash4_status st = flash4_fwd(&args, workspace_.data(), workspace_.bytes(), reinterpret_cast<flash4_stream>(s));
    if (message) *message = st == FLASH4_OK ? std::string() : std::string(flash4_last_error());
    return st;
  }

  RawOutput download() const {
    RawOutput r;
    const DeviceBuffer& ob = bufs_[size_t(hc_->out.alloc)];
    r.out_alloc.resize(ob.bytes() / sizeof(uint16_t));
    ob.download(r.out_alloc.data(), ob.bytes());
    if (lse_.bytes()) {
      r.lse_alloc.resize(lse_.bytes() / sizeof(float));
      lse_.download(r.lse_alloc.data(), lse_.bytes());
    }
    return r;
  }

  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }

  flash4_fwd_args args;

 private:
  const HostCase* hc_;
  std::vector<DeviceBuffer> bufs_;
  DeviceBuffer cu_q_, cu_k_, seqused_, lse_, workspace_;
  flash4_status ws_status_ = FLASH4_OK;
};

// ======================================================================
// CPU reference
// ======================================================================

struct Reference {
  std::vector<double> out64, lse64;  // dense logical layouts
  std::vector<uint16_t> out_lowp;    // in the input dtype
  std::vector<float> lse_lowp;
};

inline flash4_fwd_args host_args(const HostCase& hc) {
  std::vector<void*> bases;
  for (const auto& a : hc.allocs) bases.push_back(const_cast<uint16_t*>(a.data()));
  return make_args(hc, bases, hc.cu_q.data(), hc.cu_k.data(), hc.seqused.data());
}

inline void run_reference_one(const HostCase& hc, flash4_ref_precision prec, void* out, flash4_dtype out_dt, void* lse,
                              flash4_dtype lse_dt, int threads) {
  flash4_fwd_args a = host_args(hc);
  a.out = out_dense_tensor(hc, out, out_dt);
  a.lse = lse_tensor(hc, lse, lse_dt);
  a.opt.path = FLASH4_PATH_AUTO;
  flash4_status st = flash4_reference_fwd(&a, prec, threads);
  if (st != FLASH4_OK)
    throw Error(std::string("flash4_reference_fwd(") + (prec == FLASH4_REF_FP64 ? "FP64" : "LOWP") + ") returned " +
                flash4_status_string(st) + ": " + flash4_last_error() + " [" + describe(hc.p) + "]");
}

// Both precisions. Outputs pre-filled with NaN so anything left unwritten shows.
inline Reference run_reference(const HostCase& hc, int threads = 0, bool lowp = true) {
  Reference r;
  const size_t no = size_t(hc.out_numel()), nl = size_t(hc.lse_numel);
  const double qnan = std::numeric_limits<double>::quiet_NaN();
  r.out64.assign(no, qnan);
  r.lse64.assign(nl, qnan);
  // Non-null pointers even for empty outputs.
  r.out64.reserve(1); r.lse64.reserve(1);
  run_reference_one(hc, FLASH4_REF_FP64, r.out64.data(), FLASH4_DTYPE_FP64, r.lse64.data(), FLASH4_DTYPE_FP64, threads);
  if (lowp) {
    r.out_lowp.assign(no, kPoison16);
    r.lse_lowp.assign(nl, std::numeric_limits<float>::quiet_NaN());
    r.out_lowp.reserve(1); r.lse_lowp.reserve(1);
    run_reference_one(hc, FLASH4_REF_LOWP, r.out_lowp.data(), hc.p.dtype, r.lse_lowp.data(), FLASH4_DTYPE_FP32, threads);
  }
  return r;
}

// ======================================================================
// Evaluation under the tolerance rule
// ======================================================================

struct FwdResult {
  std::string desc;
  flash4_status status = FLASH4_OK;
  std::string message;           // flash4_last_error() when status != OK
  // Output errors against the FP64 reference.
  double err_kernel = 0, err_lowp = 0, atol = 0, tol = 0, ratio = 0;
  // LSE: errors over rows with a finite reference LSE, and the worst
  // excess of |lse_k - lse64| over its per-row bound (<= 0 passes).
  double err_lse_kernel = 0, err_lse_lowp = 0, lse_atol = 0, lse_excess = -1;
  int64_t out_numel = 0, lse_numel = 0;
  int64_t out_nan = 0;           // NaN / poison inside the out view (unwritten)
  int64_t lse_nan = 0;           // NaN / poison inside lse
  int64_t out_guard = 0;         // out-allocation elements outside the view that changed
  int64_t lse_guard = 0;         // lse guard elements that changed
  int64_t empty_rows = 0;        // (row, head) pairs with no visible key
  int64_t empty_row_bad = 0;     // ... whose out is not exactly 0 or lse not -inf
  int64_t lse_inf_mismatch = 0;  // finite vs infinite disagreements
  bool pass = false;
  std::string why;               // first failed condition

  std::string numbers() const {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "err_kernel=%.3e err_lowp=%.3e atol=%.3e tol=%.3e ratio=%.3f | lse: err_kernel=%.3e err_lowp=%.3e "
                  "excess=%.3e | nan out/lse=%lld/%lld guard out/lse=%lld/%lld empty rows=%lld bad=%lld inf-mismatch=%lld",
                  err_kernel, err_lowp, atol, tol, ratio, err_lse_kernel, err_lse_lowp, lse_excess,
                  (long long)out_nan, (long long)lse_nan, (long long)out_guard, (long long)lse_guard,
                  (long long)empty_rows, (long long)empty_row_bad, (long long)lse_inf_mismatch);
    return buf;
  }
  std::string summary() const {
    std::string s = "[" + desc + "] " + (pass ? "PASS" : "FAIL");
    if (!pass) s += " (" + why + ")";
    if (status != FLASH4_OK) s += std::string(" status=") + flash4_status_string(status) + ": " + message;
    return s + " " + numbers();
  }
};

// Mask of the design: query i of a sequence with (sq, sk) queries/keys sees key j.
inline bool visible(const Problem& p, int64_t i, int64_t j, int64_t sq, int64_t sk) {
  if (j < 0 || j >= sk) return false;
  const int64_t shift = sk - sq;
  const int64_t right = p.causal ? 0 : p.window_right;
  if (right >= 0 && j > i + shift + right) return false;
  if (p.window_left >= 0 && j < i + shift - p.window_left) return false;
  return true;
}

// Per-(sequence, kv head) max key 2-norm; per query-row norm computed on the fly.
inline std::vector<double> key_norm_max(const HostCase& hc) {
  const Problem& p = hc.p;
  std::vector<double> m(size_t(hc.batch) * p.heads_kv, 0.0);
  for (int b = 0; b < hc.batch; ++b)
    for (int hk = 0; hk < p.heads_kv; ++hk) {
      double best = 0;
      for (int j = 0; j < hc.sk_used[b]; ++j) {
        double s = 0;
        for (int d = 0; d < p.headdim; ++d) {
          double x = half_to_float(p.dtype, hc.k_log[size_t(((hc.k_start[b] + j) * p.heads_kv + hk) * p.headdim + d)]);
          s += x * x;
        }
        best = std::max(best, std::sqrt(s));
      }
      m[size_t(b) * p.heads_kv + hk] = best;
    }
  return m;
}

// Bound on the error of a float32 LSE of one row, added to the rule's
// rtol*err(lowp). LSE is 1-Lipschitz in max_j |delta s_j|, so:
//   scores: a length-D dot product accumulated in fp32 is off by at most
//           D*u32*sum|q_d k_d| <= D*u32*|q|*max|k| (Cauchy-Schwarz), times scale
//           (softcap's tanh is 1-Lipschitz and does not grow it);
//   row sum: Sk terms accumulated in fp32: relative error <= Sk*u32, which log
//           turns into an absolute error of the same size;
//   rest:   scaling, exp2/log2 arguments and the final rounding: 8 u32 of the
//           magnitudes involved (|lse| and the max score, <= |lse| + log Sk).
inline double lse_row_atol(const HostCase& hc, double qnorm, double knorm_max, double lse_ref, int64_t sk) {
  const Problem& p = hc.p;
  const double score_bound = p.headdim * kEps32 * std::fabs(p.scale()) * qnorm * knorm_max;
  return score_bound + double(sk) * kEps32 + 8.0 * kEps32 * (1.0 + std::fabs(lse_ref) + std::log1p(double(sk)));
}

// FA3's fwd_atol: 2 * max |(ref + 0.3 - 0.3) - ref| with ref in the output dtype.
inline double output_atol(const std::vector<double>& ref64, flash4_dtype dt) {
  double m = 0;
  for (double r : ref64) {
    if (!std::isfinite(r)) continue;
    float rd = round_to(dt, float(r));
    float a = round_to(dt, rd + 0.3f);
    float b = round_to(dt, a - 0.3f);
    m = std::max(m, std::fabs(double(b) - double(rd)));
  }
  return 2.0 * m;
}

inline FwdResult evaluate(const HostCase& hc, const Reference& ref, const RawOutput& raw, flash4_status status,
                          const std::string& message) {
  const Problem& p = hc.p;
  FwdResult r;
  r.desc = describe(p);
  r.status = status;
  r.message = message;
  r.out_numel = hc.out_numel();
  r.lse_numel = p.with_lse ? hc.lse_numel : 0;
  const double inf = std::numeric_limits<double>::infinity();
  auto fail = [&](const std::string& why) { if (r.why.empty()) r.why = why; };
  if (status != FLASH4_OK) fail(std::string("flash4_fwd returned ") + flash4_status_string(status));

  // Which allocation elements belong to the out view.
  const View& ov = hc.out;
  std::vector<uint8_t> in_view(raw.out_alloc.size(), 0);
  const int64_t rq = hc.q_rows_per_batch();
  const int H = p.heads_q, D = p.headdim;
  for (int64_t row = 0; row < hc.rows_q; ++row)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) in_view[size_t(ov.at(row, h, d, rq))] = 1;
  for (size_t i = 0; i < raw.out_alloc.size(); ++i)
    if (!in_view[i] && raw.out_alloc[i] != kPoison16) ++r.out_guard;
  if (raw.lse_alloc.size()) {
    for (size_t i = 0; i < raw.lse_alloc.size(); ++i) {
      bool guard = int64_t(i) < kLseGuard || int64_t(i) >= kLseGuard + hc.lse_numel;
      uint32_t bits;
      std::memcpy(&bits, &raw.lse_alloc[i], 4);
      if (guard && bits != kPoison32) ++r.lse_guard;
    }
  }

  // Output errors.
  double e_k = 0, e_l = 0;
  for (int64_t row = 0; row < hc.rows_q; ++row)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) {
        const size_t li = size_t(hc.out_index(row, h, d));
        const double r64 = ref.out64[li];
        const double g = half_to_float(p.dtype, raw.out_alloc[size_t(ov.at(row, h, d, rq))]);
        if (std::isnan(g)) { ++r.out_nan; e_k = inf; }
        else if (std::isfinite(r64)) e_k = std::max(e_k, std::fabs(g - r64));
        else e_k = inf;
        if (!ref.out_lowp.empty()) {
          const double l = half_to_float(p.dtype, ref.out_lowp[li]);
          e_l = std::isfinite(l) && std::isfinite(r64) ? std::max(e_l, std::fabs(l - r64)) : inf;
        }
      }
  r.err_kernel = e_k;
  r.err_lowp = e_l;
  r.atol = output_atol(ref.out64, p.dtype);
  r.tol = p.rtol * r.err_lowp + r.atol;
  r.ratio = r.err_lowp > 0 ? r.err_kernel / r.err_lowp : (r.err_kernel == 0 ? 0.0 : inf);

  // Rows without visible keys and the LSE.
  std::vector<double> knorm = key_norm_max(hc);
  double e_lk = 0, e_ll = 0, excess = -inf, lse_atol_max = 0;
  const float* lse_k = raw.lse_alloc.empty() ? nullptr : raw.lse_alloc.data() + kLseGuard;
  for (int b = 0; b < hc.batch; ++b)
    for (int64_t i = 0; i < hc.sq[b]; ++i)
      for (int h = 0; h < H; ++h) {
        const int64_t row = hc.q_start[b] + i;
        const size_t li = size_t(hc.lse_index(b, i, h));
        const double l64 = ref.lse64[li];
        bool empty = false;
        if (std::isinf(l64) && l64 < 0) {
          empty = true;
          ++r.empty_rows;
          bool bad = false;
          for (int d = 0; d < D; ++d) {
            const double g = half_to_float(p.dtype, raw.out_alloc[size_t(ov.at(row, h, d, rq))]);
            if (g != 0.0) bad = true;
          }
          if (lse_k && !(std::isinf(lse_k[li]) && lse_k[li] < 0)) bad = true;
          if (bad) ++r.empty_row_bad;
        }
        if (!ref.lse_lowp.empty()) {
          const double ll = ref.lse_lowp[li];
          if (empty) { if (!(std::isinf(ll) && ll < 0)) e_ll = inf; }
          else e_ll = std::isfinite(ll) ? std::max(e_ll, std::fabs(ll - l64)) : inf;
        }
        if (!lse_k) continue;
        const double lk = lse_k[li];
        if (std::isnan(lk)) { ++r.lse_nan; continue; }
        if (empty) continue;  // counted above
        if (!std::isfinite(l64) || !std::isfinite(lk)) { ++r.lse_inf_mismatch; continue; }
        double qn = 0;
        for (int d = 0; d < D; ++d) {
          double x = half_to_float(p.dtype, hc.q_log[size_t((row * H + h) * D + d)]);
          qn += x * x;
        }
        const int hk = h / (H / p.heads_kv);
        const double at = lse_row_atol(hc, std::sqrt(qn), knorm[size_t(b) * p.heads_kv + hk], l64, hc.sk_used[b]);
        lse_atol_max = std::max(lse_atol_max, at);
        const double diff = std::fabs(lk - l64);
        e_lk = std::max(e_lk, diff);
        excess = std::max(excess, diff - at);
      }
  r.err_lse_kernel = e_lk;
  r.err_lse_lowp = e_ll;
  r.lse_atol = lse_atol_max;
  // lse_excess: worst |lse_k - lse64| - (rtol*err_lse_lowp + row atol).
  r.lse_excess = excess == -inf ? -1.0 : excess - p.rtol * e_ll;

  if (r.out_nan) fail(std::to_string(r.out_nan) + " output elements NaN/unwritten");
  if (r.lse_nan) fail(std::to_string(r.lse_nan) + " LSE elements NaN/unwritten");
  if (r.out_guard) fail(std::to_string(r.out_guard) + " writes outside the out view");
  if (r.lse_guard) fail(std::to_string(r.lse_guard) + " writes outside lse");
  if (r.empty_row_bad) fail(std::to_string(r.empty_row_bad) + " rows without keys not 0 / -inf");
  if (r.lse_inf_mismatch) fail(std::to_string(r.lse_inf_mismatch) + " LSE finite/infinite mismatches");
  if (!(r.err_kernel <= r.tol)) fail("err_kernel > rtol*err_lowp + atol");
  if (!(r.lse_excess <= 0)) fail("LSE error over its bound");
  r.pass = r.why.empty();
  return r;
}

// What a device run would download if the kernel had written `out_dense`
// (dense logical layout, in the dtype) and `lse_dense` (nullptr: no lse):
// poison everywhere else. Lets the harness test its own rule on the CPU.
inline RawOutput simulated_output(const HostCase& hc, const std::vector<uint16_t>& out_dense,
                                  const std::vector<float>* lse_dense) {
  RawOutput raw;
  raw.out_alloc.assign(hc.allocs[size_t(hc.out.alloc)].size(), kPoison16);
  const int64_t rq = hc.q_rows_per_batch();
  for (int64_t row = 0; row < hc.rows_q; ++row)
    for (int h = 0; h < hc.p.heads_q; ++h)
      for (int d = 0; d < hc.p.headdim; ++d)
        raw.out_alloc[size_t(hc.out.at(row, h, d, rq))] = out_dense[size_t(hc.out_index(row, h, d))];
  if (hc.p.with_lse) {
    const float poison = bits_to_float(kPoison32);
    raw.lse_alloc.assign(size_t(hc.lse_numel + 2 * kLseGuard), poison);
    if (lse_dense)
      for (int64_t i = 0; i < hc.lse_numel; ++i) raw.lse_alloc[size_t(kLseGuard + i)] = (*lse_dense)[size_t(i)];
  }
  return raw;
}

// Runs one problem end to end: upload, poison, flash4_fwd on a stream,
// synchronize, download, both references, evaluate.
inline FwdResult run_gpu_fwd(const Problem& p, int ref_threads = 0) {
  HostCase hc = make_case(p);
  DeviceCase dc(hc);
  Stream stream;
  dc.poison(stream.get());
  std::string msg;
  flash4_status st = dc.launch(stream.get(), &msg);
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  RawOutput raw = dc.download();
  Reference ref = run_reference(hc, ref_threads);
  return evaluate(hc, ref, raw, st, msg);
}

// ======================================================================
// Backward: case, device run, reference and the rule for dq, dk, dv
// ======================================================================
//
//   BwdHostCase     a HostCase (q, k, v and their layout) plus the other
//                   inputs of the backward: dout (seeded random normals),
//                   out and lse from the FP64 reference forward (out rounded
//                   to the dtype, lse to fp32), and the dq/dk/dv output
//                   allocations. dout/out/dq are laid out like q's out view,
//                   dk/dv like k (dense for the packed layout); every byte
//                   outside a view is NaN.
//   BwdDeviceCase   the same on the GPU, dq/dk/dv poisoned before each
//                   launch, workspace from flash4_bwd_workspace_size.
//   BwdReference    flash4_reference_bwd in FLASH4_REF_FP64 and FLASH4_REF_LOWP.
//   evaluate_bwd    per gradient: err(x) = max |x - ref_fp64|; pass iff
//                   nothing unwritten / NaN / out of bounds, gradients of
//                   rows (dq) and keys (dk, dv) that see nothing exactly 0,
//                   and err(kernel) <= grad_rtol * err(lowp) + atol, atol =
//                   output_atol of that gradient (docs/design.md: 3x).
//   run_gpu_bwd     all of the above for one problem.

struct BwdHostCase {
  HostCase hc;                             // q, k, v; hc.out is the view of `out` (an input here)
  std::vector<uint16_t> dout_log, out_log;  // dense (rows_q, Hq, D) in the dtype
  std::vector<float> lse;                   // dense lse layout, fp32
  std::vector<double> out64, lse64;         // the FP64 forward
  View dout, dq, dk, dv;
  int64_t k_numel() const { return hc.rows_k * hc.p.heads_kv * hc.p.headdim; }
  int64_t k_index(int64_t row, int hk, int d) const {
    return (row * hc.p.heads_kv + hk) * hc.p.headdim + d;
  }
};

inline flash4_tensor k_dense_tensor(const HostCase& hc, void* data, flash4_dtype dt) {
  const Problem& p = hc.p;
  return p.varlen ? dense_tensor(data, dt, {hc.rows_k, p.heads_kv, p.headdim})
                  : dense_tensor(data, dt, {p.batch, p.seqlen_k, p.heads_kv, p.headdim});
}

// Builds the backward case around a host case (dout drawn from a seed
// derived from p.seed, so equal seeds give equal dout).
inline BwdHostCase make_bwd_case_from(HostCase host) {
  BwdHostCase bc;
  bc.hc = std::move(host);
  HostCase& hc = bc.hc;
  const Problem& p = hc.p;
  Reference fr = run_reference(hc, 0, /*lowp=*/false);
  bc.out64 = std::move(fr.out64);
  bc.lse64 = std::move(fr.lse64);
  bc.out_log.resize(bc.out64.size());
  for (size_t i = 0; i < bc.out64.size(); ++i) bc.out_log[i] = float_to_half(p.dtype, float(bc.out64[i]));
  bc.lse.resize(bc.lse64.size());
  for (size_t i = 0; i < bc.lse64.size(); ++i) bc.lse[i] = float(bc.lse64[i]);
  std::mt19937_64 rng(mix_seed(p.seed, 0xd0d0));
  bc.dout_log = random_halves(size_t(hc.out_numel()), p.dtype, 1.0, rng);

  const int64_t rq = hc.q_rows_per_batch(), rk = hc.k_rows_per_batch();
  const int64_t G = kGuardElems;
  const Layout lay = p.layout == Layout::kPackedQKV ? Layout::kContiguous : p.layout;
  auto add = [&](int64_t rows, int64_t rpb, int heads) {
    View v = detail::make_view(p, int(hc.allocs.size()), rows, rpb, heads, lay, G);
    hc.allocs.emplace_back(size_t(detail::view_span(v) + 2 * G), kPoison16);
    return v;
  };
  bc.dout = add(hc.rows_q, rq, p.heads_q);
  bc.dq = add(hc.rows_q, rq, p.heads_q);
  bc.dk = add(hc.rows_k, rk, p.heads_kv);
  bc.dv = add(hc.rows_k, rk, p.heads_kv);
  detail::scatter(hc, hc.out, bc.out_log, p.heads_q, hc.rows_q, rq, &hc.allocs[size_t(hc.out.alloc)]);
  detail::scatter(hc, bc.dout, bc.dout_log, p.heads_q, hc.rows_q, rq, &hc.allocs[size_t(bc.dout.alloc)]);
  return bc;
}
inline BwdHostCase make_bwd_case(const Problem& p) { return make_bwd_case_from(make_case(p)); }

// flash4_bwd_args over allocation bases (device or host); lse given separately.
inline flash4_bwd_args make_bwd_args(const BwdHostCase& bc, const std::vector<void*>& bases, void* lse,
                                     const void* cu_q, const void* cu_k, const void* seqused) {
  const HostCase& hc = bc.hc;
  const Problem& p = hc.p;
  const flash4_fwd_args f = make_args(hc, bases, cu_q, cu_k, seqused);
  flash4_bwd_args a;
  std::memset(&a, 0, sizeof a);
  a.q = f.q;
  a.k = f.k;
  a.v = f.v;
  a.opt = f.opt;
  a.out = tensor_of(hc.out, bases[size_t(hc.out.alloc)], p.dtype);
  a.dout = tensor_of(bc.dout, bases[size_t(bc.dout.alloc)], p.dtype);
  a.dq = tensor_of(bc.dq, bases[size_t(bc.dq.alloc)], p.dtype);
  a.dk = tensor_of(bc.dk, bases[size_t(bc.dk.alloc)], p.dtype);
  a.dv = tensor_of(bc.dv, bases[size_t(bc.dv.alloc)], p.dtype);
  a.lse = lse_tensor(hc, lse, FLASH4_DTYPE_FP32);
  return a;
}

struct BwdRawOutput {
  std::vector<uint16_t> dq_alloc, dk_alloc, dv_alloc;  // whole allocations, guards included
};

class BwdDeviceCase {
 public:
  explicit BwdDeviceCase(const BwdHostCase& bc, bool deterministic = false) : bc_(&bc) {
    const HostCase& hc = bc.hc;
    const Problem& p = hc.p;
    std::vector<void*> bases;
    for (size_t i = 0; i < hc.allocs.size(); ++i) {
      bufs_.emplace_back(hc.allocs[i].size() * sizeof(uint16_t));
      bufs_.back().upload(hc.allocs[i].data(), hc.allocs[i].size() * sizeof(uint16_t));
      bases.push_back(bufs_.back().data());
    }
    if (p.varlen) {
      cu_q_ = DeviceBuffer(hc.cu_q.size() * sizeof(int32_t));
      cu_q_.upload(hc.cu_q.data(), hc.cu_q.size() * sizeof(int32_t));
      cu_k_ = DeviceBuffer(hc.cu_k.size() * sizeof(int32_t));
      cu_k_.upload(hc.cu_k.data(), hc.cu_k.size() * sizeof(int32_t));
    }
    if (!hc.seqused.empty()) {
      seqused_ = DeviceBuffer(hc.seqused.size() * sizeof(int32_t));
      seqused_.upload(hc.seqused.data(), hc.seqused.size() * sizeof(int32_t));
    }
    // lse with poisoned guards on both sides (an input: a read of the guards shows as NaN).
    std::vector<float> l(size_t(hc.lse_numel + 2 * kLseGuard), bits_to_float(kPoison32));
    std::copy(bc.lse.begin(), bc.lse.end(), l.begin() + kLseGuard);
    lse_ = DeviceBuffer(l.size() * sizeof(float));
    lse_.upload(l.data(), l.size() * sizeof(float));
    args = make_bwd_args(bc, bases, static_cast<float*>(lse_.data()) + kLseGuard, cu_q_.data(), cu_k_.data(),
                         seqused_.data());
    args.deterministic = deterministic ? 1 : 0;
    size_t ws = 0;
    ws_status_ = flash4_bwd_workspace_size(&args, &ws);
    if (ws_status_ == FLASH4_OK && ws > 0) workspace_ = DeviceBuffer(ws);
  }

  flash4_status workspace_status() const { return ws_status_; }

  // Fills dq, dk, dv (guards included) and the workspace with 0xFF bytes
  // (NaN halves and floats, -1 semaphores): flash4_bwd must not depend on
  // what its workspace held before the call.
  void poison(cudaStream_t s) {
    for (const View* v : {&bc_->dq, &bc_->dk, &bc_->dv}) bufs_[size_t(v->alloc)].fill_async(0xFF, s);
    if (workspace_.bytes() > 0) workspace_.fill_async(0xFF, s);
  }

  // flash4_bwd on the stream with the current args (tests may alter `args`);
  // workspace_bytes < 0: the whole workspace, else that many bytes of it.
  flash4_status launch(cudaStream_t s, std::string* message = nullptr, int64_t workspace_bytes = -1) {
    if (ws_status_ != FLASH4_OK) {
      if (message) *message = std::string("flash4_bwd_workspace_size: ") + flash4_last_error();
      return ws_status_;
    }
    const size_t n = workspace_bytes < 0 ? workspace_.bytes() : size_t(workspace_bytes);
    flash4_status st = flash4_bwd(&args, workspace_.data(), n, reinterpret_cast<flash4_stream>(s));
    if (message) *message = st == FLASH4_OK ? std::string() : std::string(flash4_last_error());
    return st;
  }

  BwdRawOutput download() const {
    BwdRawOutput r;
    auto get = [&](const View& v, std::vector<uint16_t>* dst) {
      const DeviceBuffer& b = bufs_[size_t(v.alloc)];
      dst->resize(b.bytes() / sizeof(uint16_t));
      b.download(dst->data(), b.bytes());
    };
    get(bc_->dq, &r.dq_alloc);
    get(bc_->dk, &r.dk_alloc);
    get(bc_->dv, &r.dv_alloc);
    return r;
  }

  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }

  flash4_bwd_args args;

 private:
  const BwdHostCase* bc_;
  std::vector<DeviceBuffer> bufs_;
  DeviceBuffer cu_q_, cu_k_, seqused_, lse_, workspace_;
  flash4_status ws_status_ = FLASH4_OK;
};

struct BwdReference {
  std::vector<double> dq64, dk64, dv64;               // dense logical layouts
  std::vector<uint16_t> dq_lowp, dk_lowp, dv_lowp;    // in the input dtype
};

inline void run_bwd_reference_one(const BwdHostCase& bc, flash4_ref_precision prec, flash4_dtype dt, void* dq,
                                  void* dk, void* dv, int threads) {
  const HostCase& hc = bc.hc;
  std::vector<void*> bases;
  for (const auto& a : hc.allocs) bases.push_back(const_cast<uint16_t*>(a.data()));
  flash4_bwd_args a = make_bwd_args(bc, bases, const_cast<float*>(bc.lse.data()), hc.cu_q.data(), hc.cu_k.data(),
                                    hc.seqused.data());
  a.dq = out_dense_tensor(hc, dq, dt);
  a.dk = k_dense_tensor(hc, dk, dt);
  a.dv = k_dense_tensor(hc, dv, dt);
  a.opt.path = FLASH4_PATH_AUTO;
  const flash4_status st = flash4_reference_bwd(&a, prec, threads);
  if (st != FLASH4_OK)
    throw Error(std::string("flash4_reference_bwd(") + (prec == FLASH4_REF_FP64 ? "FP64" : "LOWP") + ") returned " +
                flash4_status_string(st) + ": " + flash4_last_error() + " [" + describe(hc.p) + "]");
}

// Both precisions; outputs pre-filled with NaN so anything left unwritten shows.
inline BwdReference run_bwd_reference(const BwdHostCase& bc, int threads = 0, bool lowp = true) {
  BwdReference r;
  const size_t nq = size_t(bc.hc.out_numel()), nk = size_t(bc.k_numel());
  const double qnan = std::numeric_limits<double>::quiet_NaN();
  r.dq64.assign(nq, qnan);
  r.dk64.assign(nk, qnan);
  r.dv64.assign(nk, qnan);
  r.dq64.reserve(1); r.dk64.reserve(1); r.dv64.reserve(1);
  run_bwd_reference_one(bc, FLASH4_REF_FP64, FLASH4_DTYPE_FP64, r.dq64.data(), r.dk64.data(), r.dv64.data(),
                        threads);
  if (lowp) {
    r.dq_lowp.assign(nq, kPoison16);
    r.dk_lowp.assign(nk, kPoison16);
    r.dv_lowp.assign(nk, kPoison16);
    r.dq_lowp.reserve(1); r.dk_lowp.reserve(1); r.dv_lowp.reserve(1);
    run_bwd_reference_one(bc, FLASH4_REF_LOWP, bc.hc.p.dtype, r.dq_lowp.data(), r.dk_lowp.data(),
                          r.dv_lowp.data(), threads);
  }
  return r;
}

// Errors of one gradient tensor.
struct GradStats {
  double err_kernel = 0, err_lowp = 0, atol = 0, tol = 0, ratio = 0;
  int64_t numel = 0;
  int64_t nan = 0;         // NaN / poison inside the view (unwritten)
  int64_t guard = 0;       // allocation elements outside the view that changed
  int64_t empty = 0;       // rows (dq) / keys (dk, dv) that see nothing
  int64_t empty_bad = 0;   // ... whose gradient is not exactly 0
  std::string text(const char* name) const {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s: err_kernel=%.3e err_lowp=%.3e atol=%.3e tol=%.3e ratio=%.3f nan=%lld guard=%lld "
                  "empty=%lld bad=%lld",
                  name, err_kernel, err_lowp, atol, tol, ratio, (long long)nan, (long long)guard, (long long)empty,
                  (long long)empty_bad);
    return buf;
  }
};

struct BwdResult {
  std::string desc;
  flash4_status status = FLASH4_OK;
  std::string message;
  GradStats dq, dk, dv;
  double worst_ratio = 0;  // max of the three ratios
  bool pass = false;
  std::string why;
  std::string summary() const {
    std::string s = "[" + desc + "] " + (pass ? "PASS" : "FAIL");
    if (!pass) s += " (" + why + ")";
    if (status != FLASH4_OK) s += std::string(" status=") + flash4_status_string(status) + ": " + message;
    return s + " | " + dq.text("dq") + " | " + dk.text("dk") + " | " + dv.text("dv");
  }
};

namespace detail {

// One gradient: `view` over `alloc` (device result), logical rows x heads x D,
// `empty_row(row)` true where the gradient must be exactly 0.
template <class EmptyRow>
inline GradStats grad_stats(const HostCase& hc, const View& view, const std::vector<uint16_t>& alloc, int64_t rows,
                            int64_t rows_per_batch, int heads, const std::vector<double>& ref64,
                            const std::vector<uint16_t>& lowp, double rtol, EmptyRow empty_row) {
  const Problem& p = hc.p;
  const int D = p.headdim;
  const double inf = std::numeric_limits<double>::infinity();
  GradStats g;
  g.numel = rows * heads * D;
  std::vector<uint8_t> in_view(alloc.size(), 0);
  double e_k = 0, e_l = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const bool empty = empty_row(row);
    for (int h = 0; h < heads; ++h) {
      bool bad = false;
      for (int d = 0; d < D; ++d) {
        const size_t ai = size_t(view.at(row, h, d, rows_per_batch));
        in_view[ai] = 1;
        const size_t li = size_t((row * heads + h) * D + d);
        const double r64 = ref64[li];
        const double x = half_to_float(p.dtype, alloc[ai]);
        if (std::isnan(x)) { ++g.nan; e_k = inf; }
        else if (std::isfinite(r64)) e_k = std::max(e_k, std::fabs(x - r64));
        else e_k = inf;
        if (!lowp.empty()) {
          const double l = half_to_float(p.dtype, lowp[li]);
          e_l = std::isfinite(l) && std::isfinite(r64) ? std::max(e_l, std::fabs(l - r64)) : inf;
        }
        if (empty && x != 0.0) bad = true;
      }
      if (empty) {
        ++g.empty;
        if (bad) ++g.empty_bad;
      }
    }
  }
  for (size_t i = 0; i < alloc.size(); ++i)
    if (!in_view[i] && alloc[i] != kPoison16) ++g.guard;
  g.err_kernel = e_k;
  g.err_lowp = e_l;
  g.atol = output_atol(ref64, p.dtype);
  g.tol = rtol * e_l + g.atol;
  g.ratio = e_l > 0 ? e_k / e_l : (e_k == 0 ? 0.0 : inf);
  return g;
}

}  // namespace detail

// Per (sequence, key) whether any query row sees that key (keys past
// seqused_k see nothing). Indexed by the logical key row.
inline std::vector<uint8_t> keys_seen(const HostCase& hc) {
  std::vector<uint8_t> seen(size_t(hc.rows_k), 0);
  for (int b = 0; b < hc.batch; ++b)
    for (int64_t j = 0; j < hc.sk[b]; ++j) {
      bool any = false;
      for (int64_t i = 0; i < hc.sq[b] && !any; ++i) any = visible(hc.p, i, j, hc.sq[b], hc.sk_used[b]);
      seen[size_t(hc.k_start[b] + j)] = any ? 1 : 0;
    }
  return seen;
}

inline BwdResult evaluate_bwd(const BwdHostCase& bc, const BwdReference& ref, const BwdRawOutput& raw,
                              flash4_status status, const std::string& message) {
  const HostCase& hc = bc.hc;
  const Problem& p = hc.p;
  BwdResult r;
  r.desc = describe(p);
  r.status = status;
  r.message = message;
  auto fail = [&](const std::string& why) { if (r.why.empty()) r.why = why; };
  if (status != FLASH4_OK) fail(std::string("flash4_bwd returned ") + flash4_status_string(status));
  // Query rows (logical row, head) without a visible key: lse64 is -inf; a
  // query row is empty for dq if it is empty in every head (the mask does not
  // depend on the head, so that is the same as in any head).
  std::vector<uint8_t> row_empty(size_t(hc.rows_q), 0);
  for (int b = 0; b < hc.batch; ++b)
    for (int64_t i = 0; i < hc.sq[b]; ++i) {
      const double l = bc.lse64[size_t(hc.lse_index(b, i, 0))];
      row_empty[size_t(hc.q_start[b] + i)] = std::isinf(l) && l < 0 ? 1 : 0;
    }
  const std::vector<uint8_t> seen = keys_seen(hc);
  const double rtol = p.grad_rtol;
  r.dq = detail::grad_stats(hc, bc.dq, raw.dq_alloc, hc.rows_q, hc.q_rows_per_batch(), p.heads_q, ref.dq64,
                            ref.dq_lowp, rtol, [&](int64_t row) { return row_empty[size_t(row)] != 0; });
  auto key_empty = [&](int64_t row) { return seen[size_t(row)] == 0; };
  r.dk = detail::grad_stats(hc, bc.dk, raw.dk_alloc, hc.rows_k, hc.k_rows_per_batch(), p.heads_kv, ref.dk64,
                            ref.dk_lowp, rtol, key_empty);
  r.dv = detail::grad_stats(hc, bc.dv, raw.dv_alloc, hc.rows_k, hc.k_rows_per_batch(), p.heads_kv, ref.dv64,
                            ref.dv_lowp, rtol, key_empty);
  r.worst_ratio = std::max({r.dq.ratio, r.dk.ratio, r.dv.ratio});
  const char* names[3] = {"dq", "dk", "dv"};
  const GradStats* gs[3] = {&r.dq, &r.dk, &r.dv};
  for (int t = 0; t < 3; ++t) {
    const GradStats& g = *gs[t];
    const std::string n = names[t];
    if (g.nan) fail(std::to_string(g.nan) + " " + n + " elements NaN/unwritten");
    if (g.guard) fail(std::to_string(g.guard) + " writes outside the " + n + " view");
    if (g.empty_bad) fail(std::to_string(g.empty_bad) + " " + n + " rows that see nothing are not exactly 0");
    if (!(g.err_kernel <= g.tol)) fail(n + ": err_kernel > grad_rtol*err_lowp + atol");
  }
  r.pass = r.why.empty();
  return r;
}

// What a device run would download if the kernel had written the dense
// gradients given (in the dtype): poison everywhere else. For testing the
// rule itself on the CPU.
inline BwdRawOutput simulated_bwd_output(const BwdHostCase& bc, const std::vector<uint16_t>& dq,
                                         const std::vector<uint16_t>& dk, const std::vector<uint16_t>& dv) {
  const HostCase& hc = bc.hc;
  const Problem& p = hc.p;
  BwdRawOutput raw;
  auto fill = [&](const View& v, const std::vector<uint16_t>& dense, int64_t rows, int64_t rpb, int heads,
                  std::vector<uint16_t>* alloc) {
    alloc->assign(hc.allocs[size_t(v.alloc)].size(), kPoison16);
    for (int64_t row = 0; row < rows; ++row)
      for (int h = 0; h < heads; ++h)
        for (int d = 0; d < p.headdim; ++d)
          (*alloc)[size_t(v.at(row, h, d, rpb))] = dense[size_t((row * heads + h) * p.headdim + d)];
  };
  fill(bc.dq, dq, hc.rows_q, hc.q_rows_per_batch(), p.heads_q, &raw.dq_alloc);
  fill(bc.dk, dk, hc.rows_k, hc.k_rows_per_batch(), p.heads_kv, &raw.dk_alloc);
  fill(bc.dv, dv, hc.rows_k, hc.k_rows_per_batch(), p.heads_kv, &raw.dv_alloc);
  return raw;
}

// One problem end to end: inputs and forward reference, upload, poison,
// flash4_bwd on a stream, synchronize, download, both references, evaluate.
inline BwdResult run_gpu_bwd(const Problem& p, int ref_threads = 0) {
  BwdHostCase bc = make_bwd_case(p);
  BwdDeviceCase dc(bc);
  Stream stream;
  dc.poison(stream.get());
  std::string msg;
  const flash4_status st = dc.launch(stream.get(), &msg);
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const BwdRawOutput raw = dc.download();
  const BwdReference ref = run_bwd_reference(bc, ref_threads);
  return evaluate_bwd(bc, ref, raw, st, msg);
}

// Distance in units of the dtype's last place at the larger magnitude
// (subnormal spacing below the normal range); NaN or inf on either side: inf.
inline double ulp_distance(flash4_dtype t, uint16_t a, uint16_t b) {
  const double x = half_to_float(t, a), y = half_to_float(t, b);
  if (!std::isfinite(x) || !std::isfinite(y)) return std::numeric_limits<double>::infinity();
  const double m = std::max(std::fabs(x), std::fabs(y));
  const int mant = t == FLASH4_DTYPE_FP16 ? 10 : 7;
  const int emin = t == FLASH4_DTYPE_FP16 ? -14 : -126;
  const int e = m > 0 ? std::max(std::ilogb(m), emin) : emin;
  return std::fabs(x - y) / std::ldexp(1.0, e - mant);
}

// ======================================================================
// Independent float64 attention (for checking the reference itself)
// ======================================================================

// Straightforward two-pass softmax over the logical inputs; also measures
// how well (out_ref, lse_ref) satisfy sum_j exp(s_ij - lse_i) = 1 and
// sum_j exp(s_ij - lse_i) v_j = out_i (when ref pointers are given).
struct NaiveResult {
  std::vector<double> out, lse;
  double identity_sum_err = 0;  // max |sum_j exp(s - lse_ref) - 1|
  double identity_out_err = 0;  // max |sum_j exp(s - lse_ref) v_j - out_ref|
};

inline NaiveResult naive_fwd64(const HostCase& hc, const std::vector<double>* out_ref = nullptr,
                               const std::vector<double>* lse_ref = nullptr, int threads = 0) {
  const Problem& p = hc.p;
  const int H = p.heads_q, Hk = p.heads_kv, D = p.headdim, G = H / Hk;
  NaiveResult nr;
  nr.out.assign(size_t(hc.out_numel()), 0.0);
  nr.lse.assign(size_t(hc.lse_numel), -std::numeric_limits<double>::infinity());
  const double scale = p.scale();
  struct Task { int b, h; };
  std::vector<Task> tasks;
  for (int b = 0; b < hc.batch; ++b)
    for (int h = 0; h < H; ++h) tasks.push_back({b, h});
  std::vector<double> sum_err(tasks.size(), 0), out_err(tasks.size(), 0);
  std::atomic<size_t> next{0};
  auto work = [&]() {
    std::vector<double> qrow(static_cast<size_t>(D)), s, acc(static_cast<size_t>(D)), acc2(static_cast<size_t>(D));
    for (size_t t; (t = next.fetch_add(1)) < tasks.size();) {
      const int b = tasks[t].b, h = tasks[t].h, hk = h / G;
      const int64_t sq = hc.sq[b], sk = hc.sk_used[b];
      s.assign(size_t(sk), 0.0);
      for (int64_t i = 0; i < sq; ++i) {
        const int64_t row = hc.q_start[b] + i;
        for (int d = 0; d < D; ++d) qrow[size_t(d)] = half_to_float(p.dtype, hc.q_log[size_t((row * H + h) * D + d)]);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < sk; ++j) {
          if (!visible(p, i, j, sq, sk)) continue;
          const uint16_t* kr = &hc.k_log[size_t(((hc.k_start[b] + j) * Hk + hk) * D)];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qrow[size_t(d)] * double(half_to_float(p.dtype, kr[d]));
          double sc = dot * scale;
          if (p.softcap > 0) sc = p.softcap * std::tanh(sc / p.softcap);
          s[size_t(j)] = sc;
          mx = std::max(mx, sc);
        }
        const size_t lse_i = size_t(hc.lse_index(b, i, h));
        if (mx == -std::numeric_limits<double>::infinity()) {
          // no visible key: out 0, lse -inf (already)
          if (out_ref && lse_ref) {
            if (!(std::isinf((*lse_ref)[lse_i]) && (*lse_ref)[lse_i] < 0)) sum_err[t] = std::numeric_limits<double>::infinity();
            for (int d = 0; d < D; ++d) out_err[t] = std::max(out_err[t], std::fabs((*out_ref)[size_t(hc.out_index(row, h, d))]));
          }
          continue;
        }
        double l = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        std::fill(acc2.begin(), acc2.end(), 0.0);
        const double lr = lse_ref ? (*lse_ref)[lse_i] : 0.0;
        double l2 = 0;
        for (int64_t j = 0; j < sk; ++j) {
          if (!visible(p, i, j, sq, sk)) continue;
          const double e = std::exp(s[size_t(j)] - mx);
          const double e2 = lse_ref ? std::exp(s[size_t(j)] - lr) : 0.0;
          l += e; l2 += e2;
          const uint16_t* vr = &hc.v_log[size_t(((hc.k_start[b] + j) * Hk + hk) * D)];
          for (int d = 0; d < D; ++d) {
            const double vv = half_to_float(p.dtype, vr[d]);
            acc[size_t(d)] += e * vv;
            acc2[size_t(d)] += e2 * vv;
          }
        }
        nr.lse[lse_i] = mx + std::log(l);
        for (int d = 0; d < D; ++d) nr.out[size_t(hc.out_index(row, h, d))] = acc[size_t(d)] / l;
        if (out_ref && lse_ref) {
          sum_err[t] = std::max(sum_err[t], std::isfinite(l2) ? std::fabs(l2 - 1.0) : std::numeric_limits<double>::infinity());
          for (int d = 0; d < D; ++d) {
            const double o = (*out_ref)[size_t(hc.out_index(row, h, d))];
            const double dd = std::fabs(acc2[size_t(d)] - o);
            out_err[t] = std::max(out_err[t], std::isnan(dd) ? std::numeric_limits<double>::infinity() : dd);
          }
        }
      }
    }
  };
  int nt = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  nt = int(std::min<size_t>(size_t(nt), std::max<size_t>(1, tasks.size())));
  std::vector<std::thread> pool;
  for (int i = 1; i < nt; ++i) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  for (size_t t = 0; t < tasks.size(); ++t) {
    nr.identity_sum_err = std::max(nr.identity_sum_err, sum_err[t]);
    nr.identity_out_err = std::max(nr.identity_out_err, out_err[t]);
  }
  return nr;
}

// max |a - b| over two equally sized arrays; -inf must match -inf, NaN is +inf error.
inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    const double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

}  // namespace harness
}  // namespace flash4
