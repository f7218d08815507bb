// PyTorch ops of flash4: TORCH_LIBRARY(flash4) with four ops, each a thin
// call of the C ABI (include/flash4/flash4.h).
//
//   flash4::fwd         batched forward, returns (out, lse)
//   flash4::bwd         batched backward, writes dq, dk, dv (passed in)
//   flash4::fwd_varlen  packed variable-length forward, returns (out, lse)
//   flash4::bwd_varlen  packed variable-length backward, writes dq, dk, dv
//   flash4::fwd_supported  which path fwd would take (or why none): (path, reason)
//
// Layouts are the C ABI's: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D), lse fp32
// (B, Hq, Sq); varlen q (total_q, Hq, D), k/v (total_k, Hkv, D), lse fp32
// (Hq, total_q) with int32 cu_seqlens of B+1 entries. Tensors go to the
// library as views (pointer, shape, strides), so strided inputs are read in
// place when the library can take them: last dimension contiguous, data
// pointer and other strides multiples of 16 bytes (fp16/bf16). An input that
// breaks these rules is copied to contiguous memory first; outputs (out and
// lse are allocated contiguous here; dq, dk, dv are the caller's) are never
// copied, and the library names the rule a bad output breaks.
//
// Each call validates through the library first (so an argument error reads
// the same on any device), then runs under a device guard on the current
// CUDA stream, with any workspace from PyTorch's caching allocator: no
// synchronization, so the ops can be captured in CUDA graphs.
//
// Errors become Python exceptions carrying flash4_last_error():
//   FLASH4_ERROR_INVALID_ARGUMENT -> ValueError
//   FLASH4_ERROR_NOT_SUPPORTED    -> NotImplementedError (e.g. the GPU backward today)
//   anything else                 -> RuntimeError
//
// The fake (meta) kernels and the autograd formula are registered from
// Python (python/flash4/_ops.py) after this library is loaded.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "flash4/flash4.h"

namespace flash4_torch {
namespace {

// Raises the Python exception that matches the status, with the library's
// message. Returns only when status == FLASH4_OK.
void check_status(flash4_status status, const char* op) {
  if (status == FLASH4_OK) return;
  const std::string message = std::string("flash4::") + op + ": " + flash4_last_error() + " [" +
                              flash4_status_string(status) + "]";
  TORCH_CHECK_VALUE(status != FLASH4_ERROR_INVALID_ARGUMENT, message);
  TORCH_CHECK_NOT_IMPLEMENTED(status != FLASH4_ERROR_NOT_SUPPORTED, message);
  TORCH_CHECK(false, message);
}

flash4_dtype dtype_of(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kHalf: return FLASH4_DTYPE_FP16;
    case at::kBFloat16: return FLASH4_DTYPE_BF16;
    case at::kFloat: return FLASH4_DTYPE_FP32;
    case at::kDouble: return FLASH4_DTYPE_FP64;
    case at::kInt: return FLASH4_DTYPE_INT32;
    default:
      TORCH_CHECK_VALUE(false, "flash4::", op, ": ", name, ": dtype ", c10::toString(t.scalar_type()),
                        " is not supported (q, k, v: float16 or bfloat16; cu_seqlens, "
                        "seqused_k: int32)");
  }
  return FLASH4_DTYPE_FP16;  // not reached
}

// The library's view of a tensor. Strides of size-1 dimensions are never
// used to address memory: they are set to 0 so that a view PyTorch built
// with an odd stride there (e.g. after unsqueeze) still passes the
// alignment rule.
flash4_tensor view_of(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.dim() <= FLASH4_MAX_DIMS, "flash4::", op, ": ", name,
                    ": ", t.dim(), " dimensions, expected 1 to ", FLASH4_MAX_DIMS);
  flash4_tensor v{};
  v.data = t.numel() > 0 ? t.data_ptr() : nullptr;
  v.dtype = dtype_of(t, op, name);
  v.ndim = static_cast<int32_t>(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) {
    v.shape[i] = t.size(i);
    v.stride[i] = (t.size(i) == 1 && i + 1 < t.dim()) ? 0 : t.stride(i);
  }
  return v;
}

// An input as the library can take it: itself when its last dimension is
// contiguous and its data pointer and other strides (of dimensions longer
// than 1) are multiples of 16 bytes (16-bit types) or of the element size;
// else a contiguous copy.
at::Tensor usable(const at::Tensor& t) {
  if (t.dim() == 0 || t.numel() == 0) return t;
  const int64_t es = static_cast<int64_t>(t.element_size());
  const int64_t align = es == 2 ? 16 : es;
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % align == 0;
  for (int64_t i = 0; ok && i + 1 < t.dim(); ++i)
    if (t.size(i) != 1 && (t.stride(i) * es) % align != 0) ok = false;
  // clone, not contiguous(): a contiguous tensor at a misaligned address
  // needs fresh memory too.
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

std::optional<at::Tensor> usable(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return usable(*t);
}

// Every tensor argument on q's device. Names the first that is not.
void check_devices(const char* op, const at::Tensor& q,
                   std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  for (const auto& [name, t] : others) {
    if (t == nullptr) continue;
    // Device::str() formats inside libc10: no stream crosses the library
    // boundary (see the note on static libstdc++ in python/CMakeLists.txt).
    TORCH_CHECK_VALUE(t->device() == q.device(), "flash4::", op, ": ", name, " is on ",
                      t->device().str(), " but q is on ", q.device().str(),
                      " (all tensors must be on the same device)");
  }
}

// After validation (so that a malformed call is reported by the library
// whatever the device): the run needs CUDA tensors.
void require_cuda(const char* op, const at::Tensor& q) {
  TORCH_CHECK_VALUE(q.is_cuda(), "flash4::", op, ": the tensors are on ", q.device().str(),
                    "; flash4 runs on CUDA devices only (its CPU reference is "
                    "flash4_reference_fwd/bwd in the C API)");
}

int32_t window_value(int64_t w, int64_t unbounded_from) {
  // The library checks w >= -1; a bound that reaches past every sequence is
  // the same as none, and becomes -1 so that no int32 arithmetic overflows.
  if (w >= unbounded_from || w > std::numeric_limits<int32_t>::max()) return -1;
  if (w < std::numeric_limits<int32_t>::min()) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(w);
}

flash4_attn_options make_options(const char* op, double softmax_scale, bool causal,
                                 int64_t window_left, int64_t window_right, double softcap,
                                 int64_t seqlen_q, int64_t seqlen_k,
                                 const std::optional<at::Tensor>& seqused_k) {
  flash4_attn_options opt{};
  opt.softmax_scale = softmax_scale;
  opt.causal = causal ? 1 : 0;
  // Query i sees keys [i + Sk - Sq - left, i + Sk - Sq + right]: left >= Sk
  // and right >= Sq reach every key of every row.
  const int32_t left = window_value(window_left, std::max<int64_t>(seqlen_k, 1));
  const int32_t right = window_value(window_right, std::max<int64_t>(seqlen_q, 1));
  opt.use_window = (left != -1 || right != -1) ? 1 : 0;
  opt.window_left = opt.use_window ? left : -1;
  opt.window_right = opt.use_window ? right : -1;
  opt.softcap = softcap;
  if (seqused_k.has_value()) opt.seqused_k = view_of(*seqused_k, op, "seqused_k");
  opt.path = FLASH4_PATH_AUTO;
  return opt;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  // Uninitialised: flash4_bwd writes every workspace byte it reads (its
  // preprocess zeroes the dQ accumulator and the semaphores; flash4.h), so a
  // memset here would only cost bandwidth.
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// exp2_emulation: -1 off, 0 default, 1 on (the library checks the value too;
// this keeps a huge int64 from wrapping into a valid int32).
int32_t exp2_emulation_arg(const char* op, int64_t v) {
  TORCH_CHECK_VALUE(v >= -1 && v <= 1, "flash4::", op, ": exp2_emulation=", v,
                    " must be -1 (off), 0 (default) or 1 (on)");
  return static_cast<int32_t>(v);
}

// ---- forward ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> run_fwd(const char* op, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           at::Tensor out, at::Tensor lse,
                                           const flash4_attn_options& opt) {
  flash4_fwd_args a{};
  a.q = view_of(q, op, "q");
  a.k = view_of(k, op, "k");
  a.v = view_of(v, op, "v");
  a.out = view_of(out, op, "out");
  a.lse = view_of(lse, op, "lse");  // empty (no query rows): data NULL, ignored
  a.opt = opt;
  size_t bytes = 0;
  check_status(flash4_fwd_workspace_size(&a, &bytes), op);  // validates the call
  require_cuda(op, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor ws;
  if (bytes > 0) ws = workspace(bytes, q);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(q.get_device()).stream();
  check_status(flash4_fwd(&a, bytes > 0 ? ws.data_ptr() : nullptr, bytes,
                          reinterpret_cast<flash4_stream>(stream)),
               op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                       const at::Tensor& v_in, double softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, double softcap,
                                       const std::optional<at::Tensor>& seqused_k_in,
                                       bool deterministic, int64_t exp2_emulation) {
  (void)deterministic;  // the backward's; part of the schema for autograd
  constexpr const char* op = "fwd";
  check_devices(op, q_in,
                {{"k", &k_in}, {"v", &v_in}, {"seqused_k", seqused_k_in ? &*seqused_k_in : nullptr}});
  const at::Tensor q = usable(q_in), k = usable(k_in), v = usable(v_in);
  const std::optional<at::Tensor> seqused_k = usable(seqused_k_in);
  TORCH_CHECK_VALUE(q.dim() == 4, "flash4::fwd: q: ", q.dim(),
                    " dimensions, expected 4 (batch, seqlen_q, heads, headdim)");
  TORCH_CHECK_VALUE(k.dim() == 4, "flash4::fwd: k: ", k.dim(),
                    " dimensions, expected 4 (batch, seqlen_k, heads_kv, headdim)");
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  auto opt = make_options(op, softmax_scale, causal, window_left, window_right, softcap,
                          q.size(1), k.size(1), seqused_k);
  opt.exp2_emulation = exp2_emulation_arg(op, exp2_emulation);
  return run_fwd(op, q, k, v, out, lse, opt);
}

std::tuple<at::Tensor, at::Tensor> fwd_varlen(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& cu_seqlens_q_in, const at::Tensor& cu_seqlens_k_in, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool causal, int64_t window_left,
    int64_t window_right, double softcap, const std::optional<at::Tensor>& seqused_k_in,
    bool deterministic, int64_t exp2_emulation) {
  (void)deterministic;
  constexpr const char* op = "fwd_varlen";
  check_devices(op, q_in,
                {{"k", &k_in}, {"v", &v_in}, {"cu_seqlens_q", &cu_seqlens_q_in},
                 {"cu_seqlens_k", &cu_seqlens_k_in},
                 {"seqused_k", seqused_k_in ? &*seqused_k_in : nullptr}});
  const at::Tensor q = usable(q_in), k = usable(k_in), v = usable(v_in);
  const at::Tensor cu_seqlens_q = usable(cu_seqlens_q_in), cu_seqlens_k = usable(cu_seqlens_k_in);
  const std::optional<at::Tensor> seqused_k = usable(seqused_k_in);
  TORCH_CHECK_VALUE(q.dim() == 3, "flash4::fwd_varlen: q: ", q.dim(),
                    " dimensions, expected 3 (total_q, heads, headdim)");
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  auto opt = make_options(op, softmax_scale, causal, window_left, window_right, softcap,
                          max_seqlen_q, max_seqlen_k, seqused_k);
  opt.cu_seqlens_q = view_of(cu_seqlens_q, op, "cu_seqlens_q");
  opt.cu_seqlens_k = view_of(cu_seqlens_k, op, "cu_seqlens_k");
  opt.max_seqlen_q = max_seqlen_q;
  opt.max_seqlen_k = max_seqlen_k;
  opt.exp2_emulation = exp2_emulation_arg(op, exp2_emulation);
  return run_fwd(op, q, k, v, out, lse, opt);
}

// Which path flash4_fwd would take for these inputs on q's device (CPU
// tensors: the current CUDA device), or "none" and why: the C ABI's
// flash4_fwd_supported. Nothing is allocated or launched; out and lse are
// described by views on q's memory, which validation never dereferences.
std::tuple<std::string, std::string> fwd_supported(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, double softmax_scale,
    bool causal, int64_t window_left, int64_t window_right, double softcap,
    const std::optional<at::Tensor>& seqused_k_in) {
  constexpr const char* op = "fwd_supported";
  check_devices(op, q_in,
                {{"k", &k_in}, {"v", &v_in}, {"seqused_k", seqused_k_in ? &*seqused_k_in : nullptr}});
  const at::Tensor q = usable(q_in), k = usable(k_in), v = usable(v_in);
  const std::optional<at::Tensor> seqused_k = usable(seqused_k_in);
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4, "flash4::fwd_supported: q and k need 4 "
                    "dimensions (batch, seqlen, heads, headdim), got ", q.dim(), " and ", k.dim());
  flash4_fwd_args a{};
  a.q = view_of(q, op, "q");
  a.k = view_of(k, op, "k");
  a.v = view_of(v, op, "v");
  a.out = a.q;
  const int64_t lse_shape[3] = {q.size(0), q.size(2), q.size(1)};
  a.lse = flash4_make_tensor(a.q.data, FLASH4_DTYPE_FP32, 3, lse_shape, nullptr);
  a.opt = make_options(op, softmax_scale, causal, window_left, window_right, softcap, q.size(1),
                       k.size(1), seqused_k);
  flash4_support info{};
  check_status(flash4_fwd_supported(&a, q.is_cuda() ? q.get_device() : -1, &info), op);
  return {std::string(flash4_path_name(info.path)), std::string(info.reason)};
}

// ---- backward -----------------------------------------------------------------

void run_bwd(const char* op, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
             const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
             const flash4_attn_options& opt, bool deterministic) {
  flash4_bwd_args a{};
  a.dout = view_of(dout, op, "dout");
  a.q = view_of(q, op, "q");
  a.k = view_of(k, op, "k");
  a.v = view_of(v, op, "v");
  a.out = view_of(out, op, "out");
  a.lse = view_of(lse, op, "lse");
  a.dq = view_of(dq, op, "dq");
  a.dk = view_of(dk, op, "dk");
  a.dv = view_of(dv, op, "dv");
  a.opt = opt;
  a.deterministic = deterministic ? 1 : 0;
  size_t bytes = 0;
  check_status(flash4_bwd_workspace_size(&a, &bytes), op);  // validates
  require_cuda(op, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor ws;
  if (bytes > 0) ws = workspace(bytes, q);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(q.get_device()).stream();
  check_status(flash4_bwd(&a, bytes > 0 ? ws.data_ptr() : nullptr, bytes,
                          reinterpret_cast<flash4_stream>(stream)),
               op);
}

void bwd(const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
         const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
         const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv, double softmax_scale,
         bool causal, int64_t window_left, int64_t window_right, double softcap,
         const std::optional<at::Tensor>& seqused_k_in, bool deterministic) {
  constexpr const char* op = "bwd";
  check_devices(op, q_in,
                {{"dout", &dout_in}, {"k", &k_in}, {"v", &v_in}, {"out", &out_in},
                 {"lse", &lse_in}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv},
                 {"seqused_k", seqused_k_in ? &*seqused_k_in : nullptr}});
  const at::Tensor dout = usable(dout_in), q = usable(q_in), k = usable(k_in), v = usable(v_in);
  const at::Tensor out = usable(out_in), lse = usable(lse_in);
  const std::optional<at::Tensor> seqused_k = usable(seqused_k_in);
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4, "flash4::bwd: q and k need 4 dimensions, got ",
                    q.dim(), " and ", k.dim());
  const auto opt = make_options(op, softmax_scale, causal, window_left, window_right, softcap,
                                q.size(1), k.size(1), seqused_k);
  run_bwd(op, dout, q, k, v, out, lse, dq, dk, dv, opt, deterministic);
}

void bwd_varlen(const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
                const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
                const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                const at::Tensor& cu_seqlens_q_in, const at::Tensor& cu_seqlens_k_in,
                int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, bool causal,
                int64_t window_left, int64_t window_right, double softcap,
                const std::optional<at::Tensor>& seqused_k_in, bool deterministic) {
  constexpr const char* op = "bwd_varlen";
  check_devices(op, q_in,
                {{"dout", &dout_in}, {"k", &k_in}, {"v", &v_in}, {"out", &out_in},
                 {"lse", &lse_in}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv},
                 {"cu_seqlens_q", &cu_seqlens_q_in}, {"cu_seqlens_k", &cu_seqlens_k_in},
                 {"seqused_k", seqused_k_in ? &*seqused_k_in : nullptr}});
  const at::Tensor dout = usable(dout_in), q = usable(q_in), k = usable(k_in), v = usable(v_in);
  const at::Tensor out = usable(out_in), lse = usable(lse_in);
  const at::Tensor cu_seqlens_q = usable(cu_seqlens_q_in), cu_seqlens_k = usable(cu_seqlens_k_in);
  const std::optional<at::Tensor> seqused_k = usable(seqused_k_in);
  auto opt = make_options(op, softmax_scale, causal, window_left, window_right, softcap,
                          max_seqlen_q, max_seqlen_k, seqused_k);
  opt.cu_seqlens_q = view_of(cu_seqlens_q, op, "cu_seqlens_q");
  opt.cu_seqlens_k = view_of(cu_seqlens_k, op, "cu_seqlens_k");
  opt.max_seqlen_q = max_seqlen_q;
  opt.max_seqlen_k = max_seqlen_k;
  run_bwd(op, dout, q, k, v, out, lse, dq, dk, dv, opt, deterministic);
}

}  // namespace
}  // namespace flash4_torch

// softmax_scale 0 means 1/sqrt(headdim) (the C ABI's default); window bounds
// -1 mean unbounded; causal is bottom-right aligned (window_right = 0).
TORCH_LIBRARY(flash4, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, float softmax_scale=0., bool causal=False, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? seqused_k=None, "
      "bool deterministic=False, int exp2_emulation=0) -> (Tensor out, Tensor lse)");
  // Not traced by torch.compile (no tensors out): a question to ask eagerly.
  m.def(
      "fwd_supported(Tensor q, Tensor k, Tensor v, float softmax_scale=0., bool causal=False, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? seqused_k=None) "
      "-> (str path, str reason)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor(a!) dq, Tensor(b!) dk, Tensor(c!) dv, float softmax_scale=0., bool causal=False, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? seqused_k=None, "
      "bool deterministic=False) -> ()");
  m.def(
      "fwd_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, float softmax_scale=0., bool causal=False, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? seqused_k=None, "
      "bool deterministic=False, int exp2_emulation=0) -> (Tensor out, Tensor lse)");
  m.def(
      "bwd_varlen(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor(a!) dq, Tensor(b!) dk, Tensor(c!) dv, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, float softmax_scale=0., bool causal=False, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? seqused_k=None, "
      "bool deterministic=False) -> ()");
}

// CUDA runs the kernels. CPU validates through the library and then says
// that flash4 needs CUDA tensors, so argument errors read the same on a
// machine without a GPU (and the binding's error path is testable there).
TORCH_LIBRARY_IMPL(flash4, CUDA, m) {
  m.impl("fwd", &flash4_torch::fwd);
  m.impl("bwd", &flash4_torch::bwd);
  m.impl("fwd_varlen", &flash4_torch::fwd_varlen);
  m.impl("bwd_varlen", &flash4_torch::bwd_varlen);
  m.impl("fwd_supported", &flash4_torch::fwd_supported);
}

TORCH_LIBRARY_IMPL(flash4, CPU, m) {
  m.impl("fwd", &flash4_torch::fwd);
  m.impl("bwd", &flash4_torch::bwd);
  m.impl("fwd_varlen", &flash4_torch::fwd_varlen);
  m.impl("bwd_varlen", &flash4_torch::bwd_varlen);
  m.impl("fwd_supported", &flash4_torch::fwd_supported);
}
