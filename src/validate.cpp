// Validation of flash4_fwd_args / flash4_bwd_args (see src/common/validate.hpp).
//
// Every rule of the API is checked here, before anything touches a GPU or
// memory: the first broken rule gives FLASH4_ERROR_INVALID_ARGUMENT and a
// message "<argument>: <what is wrong and the rule>". Device arrays
// (cu_seqlens, seqused_k) are never read: validation must not synchronize.
// Params are filled only when every rule holds.
#include "common/validate.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

namespace flash4 {
namespace {

// Sizes reach the kernels as int (params.hpp) and cu_seqlens are int32.
constexpr int64_t kIntLimit = int64_t(1) << 31;
constexpr double kLog2e = 1.4426950408889634074;

bool dtype_is_valid(flash4_dtype d) {
  switch (d) {
    case FLASH4_DTYPE_FP16: case FLASH4_DTYPE_BF16: case FLASH4_DTYPE_FP32:
    case FLASH4_DTYPE_FP64: case FLASH4_DTYPE_INT32:
      return true;
  }
  return false;
}

const char* dtype_name(flash4_dtype d) {
  switch (d) {
    case FLASH4_DTYPE_FP16: return "fp16";
    case FLASH4_DTYPE_BF16: return "bf16";
    case FLASH4_DTYPE_FP32: return "fp32";
    case FLASH4_DTYPE_FP64: return "fp64";
    case FLASH4_DTYPE_INT32: return "int32";
  }
  return "invalid";
}

int64_t dtype_bytes(flash4_dtype d) {
  switch (d) {
    case FLASH4_DTYPE_FP16: case FLASH4_DTYPE_BF16: return 2;
    case FLASH4_DTYPE_FP32: case FLASH4_DTYPE_INT32: return 4;
    case FLASH4_DTYPE_FP64: return 8;
  }
  return 1;
}

// Builds a message from pieces: msg("q: headdim ", d, " must ...").
template <typename... Parts>
std::string msg(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

bool is_empty(const flash4_tensor& t) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) return true;
  return false;
}

// Names of the dimensions of each layout, for messages.
const char* const kQBatched[] = {"batch", "seqlen_q", "heads", "headdim"};
const char* const kKBatched[] = {"batch", "seqlen_k", "heads_kv", "headdim"};
const char* const kQVarlen[] = {"total_q", "heads", "headdim"};
const char* const kKVarlen[] = {"total_k", "heads_kv", "headdim"};
const char* const kLseBatched[] = {"batch", "heads", "seqlen_q"};
const char* const kLseVarlen[] = {"heads", "total_q"};
const char* const kBatchPlus1[] = {"batch+1"};
const char* const kBatchOnly[] = {"batch"};

std::string dims_text(int ndim, const char* const* dim_names) {
  std::string s = "(";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::string(dim_names[i]);
  return s + ")";
}

// Layout rules every tensor view obeys whatever its role: a valid dtype, the
// expected rank, non-negative sizes, a contiguous last dimension and
// non-negative strides. Checked before the role's own rules (dtype, head
// dim, shapes) so that the message names the most basic problem.
std::string check_layout(const char* name, const flash4_tensor& t, int ndim,
                         const char* const* dim_names) {
  if (!dtype_is_valid(t.dtype))
    return msg(name, ": dtype ", int(t.dtype), " is not a flash4_dtype");
  if (t.ndim != ndim)
    return msg(name, ": ndim ", t.ndim, ", expected ", ndim, " ", dims_text(ndim, dim_names));
  for (int i = 0; i < ndim; ++i)
    if (t.shape[i] < 0)
      return msg(name, ": negative size in shape[", i, "] (", dim_names[i], ") = ", t.shape[i]);
  if (t.stride[ndim - 1] != 1)
    return msg(name, ": last dimension must be contiguous (stride 1), got stride ",
               t.stride[ndim - 1]);
  for (int i = 0; i < ndim - 1; ++i)
    if (t.stride[i] < 0)
      return msg(name, ": stride[", i, "]=", t.stride[i], " must be non-negative");
  return {};
}

// Memory rules, after the layout and role rules: a data pointer unless the
// view is empty, alignment, and byte offsets that fit in int64.
//
// Alignment: on the GPU, 16-bit tensors are loaded in 16-byte vectors (and
// through TMA on Hopper), so the pointer and every stride but the last must
// be 16-byte multiples; other element types (fp32 lse, int32 arrays) and all
// reference (host) tensors need only the natural alignment of their type.
std::string check_memory(const char* name, const flash4_tensor& t, Target target) {
  const int ndim = t.ndim;
  const bool empty = is_empty(t);
  if (t.data == nullptr && !empty) return msg(name, ": data is NULL");

  const int64_t elem = dtype_bytes(t.dtype);
  const bool vector_aligned = target == Target::kDevice && elem == 2;
  const int64_t align = vector_aligned ? 16 : elem;
  const uintptr_t address = reinterpret_cast<uintptr_t>(t.data);
  // An empty view is never dereferenced: its pointer may be anything.
  if (!empty && address % uintptr_t(align) != 0)
    return msg(name, ": data pointer must be ", align, "-byte aligned",
               vector_aligned ? "" : msg(" (", dtype_name(t.dtype), ")"));
  if (vector_aligned)
    for (int i = 0; i < ndim - 1; ++i)
      if ((t.stride[i] * elem) % 16 != 0)
        return msg(name, ": stride[", i, "]=", t.stride[i],
                   " elements is not a multiple of 16 bytes");

  // The byte offset of the last element must fit in int64 (kernels index
  // with 64-bit math; anything beyond is not a real allocation).
  if (!empty) {
    int64_t last = 0;
    for (int i = 0; i < ndim; ++i) {
      int64_t term = 0;
      if (__builtin_mul_overflow(t.shape[i] - 1, t.stride[i], &term) ||
          __builtin_add_overflow(last, term, &last))
        return msg(name, ": the largest element offset overflows int64");
    }
    int64_t bytes = 0;
    if (__builtin_add_overflow(last, int64_t(1), &last) ||
        __builtin_mul_overflow(last, elem, &bytes))
      return msg(name, ": the largest byte offset overflows int64");
  }
  return {};
}

// shape[i] == expected[i] for every i; names the first mismatch.
std::string check_shape(const char* name, const flash4_tensor& t, const int64_t* expected,
                        const char* const* dim_names, const char* ref_name) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] != expected[i])
      return msg(name, ": shape[", i, "]=", t.shape[i], " (", dim_names[i], ") differs from ",
                 ref_name, "'s ", expected[i]);
  return {};
}

std::string check_below_int_limit(const char* name, const flash4_tensor& t,
                                  const char* const* dim_names) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] >= kIntLimit)
      return msg(name, ": shape[", i, "]=", t.shape[i], " (", dim_names[i],
                 ") must be below 2^31");
  return {};
}

// Outputs the reference may write in a wider type than its input.
std::string check_output_dtype(const char* name, const flash4_tensor& t, flash4_dtype q_dtype,
                               Target target) {
  if (target == Target::kDevice) {
    if (t.dtype != q_dtype)
      return msg(name, ": dtype ", dtype_name(t.dtype), " differs from q's ", dtype_name(q_dtype),
                 " (the GPU writes ", name, " in the input dtype)");
    return {};
  }
  if (t.dtype != q_dtype && t.dtype != FLASH4_DTYPE_FP32 && t.dtype != FLASH4_DTYPE_FP64)
    return msg(name, ": dtype ", dtype_name(t.dtype), " must be fp64, fp32 or q's ",
               dtype_name(q_dtype));
  return {};
}

std::string check_lse_dtype(const flash4_tensor& lse, Target target) {
  if (lse.dtype == FLASH4_DTYPE_FP32) return {};
  if (target == Target::kReference && lse.dtype == FLASH4_DTYPE_FP64) return {};
  return msg("lse: dtype ", dtype_name(lse.dtype), " must be fp32",
             target == Target::kReference ? " or fp64" : "");
}

std::string check_flag(const char* name, int32_t value) {
  if (value != 0 && value != 1) return msg(name, "=", value, ": must be 0 or 1");
  return {};
}

// What the shared part of validation learned about the problem.
struct Problem {
  bool varlen = false;
  int64_t batch = 0;
  int64_t seqlen_q = 0, seqlen_k = 0;  // batched: Sq, Sk; varlen: max_seqlen_q/k
  int64_t heads_q = 0, heads_kv = 0, headdim = 0;
  flash4_dtype dtype = FLASH4_DTYPE_FP16;
  const char* const* q_dims = kQBatched;
  const char* const* k_dims = kKBatched;
  int ndim = 4;
};

std::string check_options(const flash4_attn_options& opt) {
  std::string err;
  if (!(err = check_flag("opt.causal", opt.causal)).empty()) return err;
  if (opt.window_left < -1) return msg("opt.window_left=", opt.window_left, ": must be >= -1");
  if (opt.window_right < -1) return msg("opt.window_right=", opt.window_right, ": must be >= -1");
  if (opt.causal && opt.window_right != -1 && opt.window_right != 0)
    return msg("opt.window_right=", opt.window_right,
               ": must be -1 or 0 with opt.causal (causal means window_right = 0)");
  if (opt.use_window != 0 && opt.use_window != 1)
    return msg("opt.use_window=", opt.use_window, ": must be 0 or 1");
  if (!opt.use_window && !((opt.window_left == 0 && opt.window_right == 0) ||
                           (opt.window_left == -1 && opt.window_right == -1)))
    return msg("opt.window_left=", opt.window_left, ", opt.window_right=", opt.window_right,
               ": a window is given but opt.use_window is 0 (set opt.use_window = 1)");
  if (!std::isfinite(opt.softmax_scale))
    return msg("opt.softmax_scale must be finite, got ", opt.softmax_scale);
  const double float_max = std::numeric_limits<float>::max();
  // The kernels use scale * log2(e) in float: both must fit.
  if (std::fabs(opt.softmax_scale) * kLog2e > float_max)
    return msg("opt.softmax_scale=", opt.softmax_scale, " is out of float range");
  if (!std::isfinite(opt.softcap) || opt.softcap < 0)
    return msg("opt.softcap must be finite and >= 0, got ", opt.softcap);
  if (opt.softcap > float_max)
    return msg("opt.softcap=", opt.softcap, " is out of float range");
  if (opt.path != FLASH4_PATH_AUTO && opt.path != FLASH4_PATH_PORTABLE &&
      opt.path != FLASH4_PATH_SM90)
    return msg("opt.path=", int(opt.path),
               ": must be FLASH4_PATH_AUTO, FLASH4_PATH_PORTABLE or FLASH4_PATH_SM90");
  if (opt.exp2_emulation < -1 || opt.exp2_emulation > 1)
    return msg("opt.exp2_emulation=", opt.exp2_emulation, ": must be -1, 0 or 1");
  return {};
}

// Options, layout mode, q/k/v, heads, cu_seqlens and seqused_k: the part
// forward and backward share. Fills the input half of `p`.
std::string check_problem(const flash4_tensor& q, const flash4_tensor& k, const flash4_tensor& v,
                          const flash4_attn_options& opt, Target target, Problem* pr,
                          FwdParams* p) {
  std::string err;
  if (!(err = check_options(opt)).empty()) return err;

  // ---- layout mode ------------------------------------------------------
  const bool has_cu_q = opt.cu_seqlens_q.data != nullptr;
  const bool has_cu_k = opt.cu_seqlens_k.data != nullptr;
  if (has_cu_q != has_cu_k)
    return has_cu_q ? "opt.cu_seqlens_k: data is NULL but opt.cu_seqlens_q is set "
                      "(varlen needs both)"
                    : "opt.cu_seqlens_q: data is NULL but opt.cu_seqlens_k is set "
                      "(varlen needs both)";
  pr->varlen = has_cu_q;
  pr->ndim = pr->varlen ? 3 : 4;
  pr->q_dims = pr->varlen ? kQVarlen : kQBatched;
  pr->k_dims = pr->varlen ? kKVarlen : kKBatched;
  if (pr->varlen) {
    const char* names[2] = {"opt.cu_seqlens_q", "opt.cu_seqlens_k"};
    const flash4_tensor* cu[2] = {&opt.cu_seqlens_q, &opt.cu_seqlens_k};
    for (int i = 0; i < 2; ++i) {
      if (!(err = check_layout(names[i], *cu[i], 1, kBatchPlus1)).empty()) return err;
      if (cu[i]->dtype != FLASH4_DTYPE_INT32)
        return msg(names[i], ": dtype ", dtype_name(cu[i]->dtype), " must be int32");
      if (cu[i]->shape[0] < 1)
        return msg(names[i], ": shape[0]=", cu[i]->shape[0], " must be at least 1 (batch+1 entries)");
      if (cu[i]->shape[0] - 1 >= kIntLimit)
        return msg(names[i], ": shape[0]=", cu[i]->shape[0], " (batch+1): batch must be below 2^31");
      if (!(err = check_memory(names[i], *cu[i], target)).empty()) return err;
    }
    if (opt.cu_seqlens_k.shape[0] != opt.cu_seqlens_q.shape[0])
      return msg("opt.cu_seqlens_k: shape[0]=", opt.cu_seqlens_k.shape[0],
                 " (batch+1) differs from opt.cu_seqlens_q's ", opt.cu_seqlens_q.shape[0]);
    if (opt.max_seqlen_q < 0 || opt.max_seqlen_q >= kIntLimit)
      return msg("opt.max_seqlen_q=", opt.max_seqlen_q, ": must be >= 0 and below 2^31");
    if (opt.max_seqlen_k < 0 || opt.max_seqlen_k >= kIntLimit)
      return msg("opt.max_seqlen_k=", opt.max_seqlen_k, ": must be >= 0 and below 2^31");
  }

  // ---- q ----------------------------------------------------------------
  if (!(err = check_layout("q", q, pr->ndim, pr->q_dims)).empty()) return err;
  const bool lowp = q.dtype == FLASH4_DTYPE_FP16 || q.dtype == FLASH4_DTYPE_BF16;
  if (target == Target::kDevice && !lowp)
    return msg("q: dtype ", dtype_name(q.dtype), " is not supported on the GPU (fp16 or bf16)");
  if (target == Target::kReference && !lowp && q.dtype != FLASH4_DTYPE_FP32)
    return msg("q: dtype ", dtype_name(q.dtype), " must be fp16, bf16 or fp32");
  if (!(err = check_below_int_limit("q", q, pr->q_dims)).empty()) return err;
  const int hd = pr->ndim - 1;  // index of headdim
  pr->dtype = q.dtype;
  pr->headdim = q.shape[hd];
  pr->heads_q = q.shape[hd - 1];
  if (pr->headdim < 8 || pr->headdim > 256 || pr->headdim % 8 != 0)
    return msg("q: headdim ", pr->headdim, " must be a multiple of 8 between 8 and 256");
  if (!(err = check_memory("q", q, target)).empty()) return err;

  // ---- k ----------------------------------------------------------------
  if (!(err = check_layout("k", k, pr->ndim, pr->k_dims)).empty()) return err;
  if (k.dtype != q.dtype)
    return msg("k: dtype ", dtype_name(k.dtype), " differs from q's ", dtype_name(q.dtype));
  if (!(err = check_below_int_limit("k", k, pr->k_dims)).empty()) return err;
  if (!pr->varlen && k.shape[0] != q.shape[0])
    return msg("k: shape[0]=", k.shape[0], " (batch) differs from q's ", q.shape[0]);
  if (k.shape[hd] != pr->headdim)
    return msg("k: shape[", hd, "]=", k.shape[hd], " (headdim) differs from q's ", pr->headdim);
  pr->heads_kv = k.shape[hd - 1];
  if (!(err = check_memory("k", k, target)).empty()) return err;

  // ---- v: same shape as k ----------------------------------------------
  if (!(err = check_layout("v", v, pr->ndim, pr->k_dims)).empty()) return err;
  if (v.dtype != q.dtype)
    return msg("v: dtype ", dtype_name(v.dtype), " differs from q's ", dtype_name(q.dtype));
  if (v.shape[hd] != pr->headdim)
    return msg("v: shape[", hd, "]=", v.shape[hd], " (headdim) differs from q's ", pr->headdim,
               ": different V head dim is not supported");
  if (!(err = check_shape("v", v, k.shape, pr->k_dims, "k")).empty()) return err;
  if (!(err = check_memory("v", v, target)).empty()) return err;

  // ---- heads --------------------------------------------------------------
  if (pr->heads_q < 1) return msg("heads: Hq=", pr->heads_q, " must be at least 1");
  if (pr->heads_kv < 1) return msg("heads: Hkv=", pr->heads_kv, " must be at least 1");
  if (pr->heads_q % pr->heads_kv != 0)
    return msg("heads: Hq=", pr->heads_q, " must be a multiple of Hkv=", pr->heads_kv);

  if (pr->varlen) {
    pr->batch = opt.cu_seqlens_q.shape[0] - 1;
    pr->seqlen_q = opt.max_seqlen_q;
    pr->seqlen_k = opt.max_seqlen_k;
  } else {
    pr->batch = q.shape[0];
    pr->seqlen_q = q.shape[1];
    pr->seqlen_k = k.shape[1];
  }

  // ---- seqused_k (optional) ---------------------------------------------
  if (opt.seqused_k.data != nullptr) {
    if (!(err = check_layout("opt.seqused_k", opt.seqused_k, 1, kBatchOnly)).empty()) return err;
    if (opt.seqused_k.dtype != FLASH4_DTYPE_INT32)
      return msg("opt.seqused_k: dtype ", dtype_name(opt.seqused_k.dtype), " must be int32");
    if (opt.seqused_k.shape[0] != pr->batch)
      return msg("opt.seqused_k: shape[0]=", opt.seqused_k.shape[0],
                 " differs from the batch size ", pr->batch);
    if (!(err = check_memory("opt.seqused_k", opt.seqused_k, target)).empty()) return err;
  }

  // ---- fill the input half of the params ----------------------------------
  const int row = pr->varlen ? 0 : 1;  // index of the sequence dimension
  p->q = q.data;
  p->k = k.data;
  p->v = v.data;
  p->q_batch_stride = pr->varlen ? 0 : q.stride[0];
  p->q_row_stride = q.stride[row];
  p->q_head_stride = q.stride[row + 1];
  p->k_batch_stride = pr->varlen ? 0 : k.stride[0];
  p->k_row_stride = k.stride[row];
  p->k_head_stride = k.stride[row + 1];
  p->v_batch_stride = pr->varlen ? 0 : v.stride[0];
  p->v_row_stride = v.stride[row];
  p->v_head_stride = v.stride[row + 1];
  p->batch = int(pr->batch);
  p->seqlen_q = int(pr->seqlen_q);
  p->seqlen_k = int(pr->seqlen_k);
  p->total_q = pr->varlen ? q.shape[0] : pr->batch * pr->seqlen_q;
  p->total_k = pr->varlen ? k.shape[0] : pr->batch * pr->seqlen_k;
  p->heads_q = int(pr->heads_q);
  p->heads_kv = int(pr->heads_kv);
  p->headdim = int(pr->headdim);
  p->cu_seqlens_q = static_cast<const int32_t*>(opt.cu_seqlens_q.data);
  p->cu_seqlens_k = static_cast<const int32_t*>(opt.cu_seqlens_k.data);
  p->seqused_k = static_cast<const int32_t*>(opt.seqused_k.data);
  const double scale =
      opt.softmax_scale != 0 ? opt.softmax_scale : 1.0 / std::sqrt(double(pr->headdim));
  p->softmax_scale = float(scale);
  p->softmax_scale_log2 = float(scale * kLog2e);
  p->softcap = float(opt.softcap);
  // causal is the window with right = 0 (bottom-right aligned); is_causal
  // says exactly that, so kernels can take the cheaper causal mask whenever
  // right == 0 and still apply window_left when it is >= 0.
  p->window_left = opt.use_window ? opt.window_left : -1;
  p->window_right = opt.causal ? 0 : (opt.use_window ? opt.window_right : -1);
  p->is_causal = p->window_right == 0;
  // DType has only the 16-bit types: an fp32 reference call keeps the
  // default, and the reference reads dtypes from the args.
  if (q.dtype == FLASH4_DTYPE_FP16) p->dtype = DType::kFp16;
  if (q.dtype == FLASH4_DTYPE_BF16) p->dtype = DType::kBf16;
  p->exp2_emulation = opt.exp2_emulation;
  return {};
}

void copy_shape(const Problem& pr, const flash4_tensor& ref, int64_t* shape) {
  for (int i = 0; i < pr.ndim; ++i) shape[i] = ref.shape[i];
}

std::string check_lse(const flash4_tensor& lse, const flash4_tensor& q, const Problem& pr,
                      Target target, FwdParams* p) {
  std::string err;
  const int ndim = pr.varlen ? 2 : 3;
  const char* const* dims = pr.varlen ? kLseVarlen : kLseBatched;
  if (!(err = check_layout("lse", lse, ndim, dims)).empty()) return err;
  if (!(err = check_lse_dtype(lse, target)).empty()) return err;
  int64_t expected[3];
  if (pr.varlen) {
    expected[0] = pr.heads_q;
    expected[1] = q.shape[0];
  } else {
    expected[0] = pr.batch;
    expected[1] = pr.heads_q;
    expected[2] = pr.seqlen_q;
  }
  if (!(err = check_shape("lse", lse, expected, dims, "q")).empty()) return err;
  if (!(err = check_memory("lse", lse, target)).empty()) return err;
  p->lse = static_cast<float*>(lse.data);
  p->lse_batch_stride = pr.varlen ? 0 : lse.stride[0];
  p->lse_head_stride = pr.varlen ? lse.stride[0] : lse.stride[1];
  return {};
}

// A tensor shaped like `ref` (q or k), with an output dtype rule.
std::string check_like(const char* name, const flash4_tensor& t, const char* ref_name,
                       const flash4_tensor& ref, const char* const* dims, const Problem& pr,
                       bool output, Target target) {
  std::string err;
  if (!(err = check_layout(name, t, pr.ndim, dims)).empty()) return err;
  if (output) {
    if (!(err = check_output_dtype(name, t, pr.dtype, target)).empty()) return err;
  } else if (t.dtype != pr.dtype) {
    return msg(name, ": dtype ", dtype_name(t.dtype), " differs from q's ", dtype_name(pr.dtype));
  }
  int64_t expected[FLASH4_MAX_DIMS];
  copy_shape(pr, ref, expected);
  if (!(err = check_shape(name, t, expected, dims, ref_name)).empty()) return err;
  return check_memory(name, t, target);
}

void set_strides(const flash4_tensor& t, const Problem& pr, int64_t* batch, int64_t* row,
                 int64_t* head) {
  const int r = pr.varlen ? 0 : 1;
  *batch = pr.varlen ? 0 : t.stride[0];
  *row = t.stride[r];
  *head = t.stride[r + 1];
}

flash4_status finish(const std::string& err, std::string* message) {
  if (err.empty()) {
    if (message) message->clear();
    return FLASH4_OK;
  }
  if (message) *message = err;
  return FLASH4_ERROR_INVALID_ARGUMENT;
}

}  // namespace

// Exported (the library hides everything else) so that the host tests can
// check the params validation produces.
FLASH4_API flash4_status validate_fwd(const flash4_fwd_args& args, Target target,
                                      FwdParams* params, std::string* message) {
  FwdParams p;
  Problem pr;
  std::string err = check_problem(args.q, args.k, args.v, args.opt, target, &pr, &p);
  if (err.empty())
    err = check_like("out", args.out, "q", args.q, pr.q_dims, pr, /*output=*/true, target);
  // lse.data == NULL: the caller does not want the LSE; its view is ignored.
  if (err.empty() && args.lse.data != nullptr) err = check_lse(args.lse, args.q, pr, target, &p);
  if (err.empty()) {
    p.out = args.out.data;
    set_strides(args.out, pr, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
    if (params) *params = p;
  }
  return finish(err, message);
}

FLASH4_API flash4_status validate_bwd(const flash4_bwd_args& args, Target target,
                                      BwdParams* params, std::string* message) {
  BwdParams p;
  Problem pr;
  std::string err = check_problem(args.q, args.k, args.v, args.opt, target, &pr, &p);
  if (err.empty()) err = check_flag("deterministic", args.deterministic);
  // out is an input here (the forward's output): the reference accepts the
  // widths its forward may have written it in.
  if (err.empty())
    err = check_like("out", args.out, "q", args.q, pr.q_dims, pr, /*output=*/true, target);
  if (err.empty())
    err = check_like("dout", args.dout, "q", args.q, pr.q_dims, pr, /*output=*/false, target);
  // The backward needs the forward's LSE: no NULL escape here (only an
  // empty lse may be NULL, which check_memory allows).
  if (err.empty()) err = check_lse(args.lse, args.q, pr, target, &p);
  if (err.empty())
    err = check_like("dq", args.dq, "q", args.q, pr.q_dims, pr, /*output=*/true, target);
  if (err.empty())
    err = check_like("dk", args.dk, "k", args.k, pr.k_dims, pr, /*output=*/true, target);
  if (err.empty())
    err = check_like("dv", args.dv, "v", args.v, pr.k_dims, pr, /*output=*/true, target);
  if (err.empty()) {
    p.out = args.out.data;
    set_strides(args.out, pr, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
    p.dout = args.dout.data;
    set_strides(args.dout, pr, &p.do_batch_stride, &p.do_row_stride, &p.do_head_stride);
    p.dq = args.dq.data;
    set_strides(args.dq, pr, &p.dq_batch_stride, &p.dq_row_stride, &p.dq_head_stride);
    p.dk = args.dk.data;
    set_strides(args.dk, pr, &p.dk_batch_stride, &p.dk_row_stride, &p.dk_head_stride);
    p.dv = args.dv.data;
    set_strides(args.dv, pr, &p.dv_batch_stride, &p.dv_row_stride, &p.dv_head_stride);
    p.deterministic = args.deterministic != 0;
    if (params) *params = p;
  }
  return finish(err, message);
}

}  // namespace flash4
