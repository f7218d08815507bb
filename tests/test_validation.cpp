// Validation rules (src/validate.cpp), host only: no GPU needed.
//
// Device-target rules go through the public entry points (flash4_fwd,
// flash4_fwd_workspace_size, flash4_bwd), which validate before touching any
// device: the pointers are fake but aligned and are never dereferenced.
// Reference-target rules and the filled params use validate_* directly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/validate.hpp"
#include "flash4/flash4.h"

namespace {

using flash4::BwdParams;
using flash4::FwdParams;
using flash4::Target;

// Distinct 256-byte aligned addresses that are never dereferenced.
void* fake(int i) { return reinterpret_cast<void*>(uintptr_t(0x10000000) * uintptr_t(i + 1)); }

flash4_tensor view(void* data, flash4_dtype dtype, std::initializer_list<int64_t> shape,
                   std::initializer_list<int64_t> strides = {}) {
  return flash4_make_tensor(data, dtype, int32_t(shape.size()), shape.begin(),
                            strides.size() ? strides.begin() : nullptr);
}

flash4_attn_options no_mask() {
  flash4_attn_options o{};
  o.window_left = -1;
  o.window_right = -1;
  return o;
}

// A valid batched forward: q is a slice of a packed (B, Sq, 3, Hq, D) qkv
// buffer so that its strides differ from k's and v's.
struct Batched {
  int64_t B = 2, Sq = 5, Sk = 7, Hq = 6, Hkv = 3, D = 64;
  flash4_dtype dt = FLASH4_DTYPE_BF16;

  flash4_fwd_args fwd() const {
    flash4_fwd_args a{};
    a.q = view(fake(0), dt, {B, Sq, Hq, D}, {Sq * 3 * Hq * D, 3 * Hq * D, D, 1});
    a.k = view(fake(1), dt, {B, Sk, Hkv, D});
    a.v = view(fake(2), dt, {B, Sk, Hkv, D});
    a.out = view(fake(3), dt, {B, Sq, Hq, D});
    a.lse = view(fake(4), FLASH4_DTYPE_FP32, {B, Hq, Sq});
    a.opt = no_mask();
    return a;
  }
  flash4_bwd_args bwd() const {
    const flash4_fwd_args f = fwd();
    flash4_bwd_args a{};
    a.q = f.q;
    a.k = f.k;
    a.v = f.v;
    a.out = f.out;
    a.lse = f.lse;
    a.dout = view(fake(5), dt, {B, Sq, Hq, D});
    a.dq = view(fake(6), dt, {B, Sq, Hq, D});
    a.dk = view(fake(7), dt, {B, Sk, Hkv, D});
    a.dv = view(fake(8), dt, {B, Sk, Hkv, D});
    a.opt = f.opt;
    return a;
  }
};

// A valid varlen forward: B = 3 sequences packed into total_q / total_k rows.
struct Varlen {
  int64_t B = 3, total_q = 11, total_k = 17, Hq = 4, Hkv = 4, D = 128;
  flash4_dtype dt = FLASH4_DTYPE_FP16;

  flash4_fwd_args fwd() const {
    flash4_fwd_args a{};
    a.q = view(fake(0), dt, {total_q, Hq, D});
    a.k = view(fake(1), dt, {total_k, Hkv, D}, {2 * Hkv * D, D, 1});  // from a packed kv
    a.v = view(fake(2), dt, {total_k, Hkv, D}, {2 * Hkv * D, D, 1});
    a.out = view(fake(3), dt, {total_q, Hq, D});
    a.lse = view(fake(4), FLASH4_DTYPE_FP32, {Hq, total_q});
    a.opt = no_mask();
    a.opt.cu_seqlens_q = view(fake(9), FLASH4_DTYPE_INT32, {B + 1});
    a.opt.cu_seqlens_k = view(fake(10), FLASH4_DTYPE_INT32, {B + 1});
    a.opt.max_seqlen_q = 6;
    a.opt.max_seqlen_k = 9;
    return a;
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The call is rejected as INVALID_ARGUMENT by the GPU entry points (before
// any device work) and the message contains every part.
void expect_invalid(const flash4_fwd_args& a, std::initializer_list<const char*> parts) {
  const flash4_status s = flash4_fwd(&a, nullptr, 0, nullptr);
  EXPECT_EQ(s, FLASH4_ERROR_INVALID_ARGUMENT) << flash4_last_error();
  const std::string message = flash4_last_error();
  for (const char* part : parts) EXPECT_TRUE(contains(message, part)) << message << " | " << part;
  size_t bytes = 12345;
  EXPECT_EQ(flash4_fwd_workspace_size(&a, &bytes), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bytes, 12345u);  // nothing written on failure
  EXPECT_EQ(message, flash4_last_error());
}

void expect_invalid_bwd(const flash4_bwd_args& a, std::initializer_list<const char*> parts) {
  const flash4_status s = flash4_bwd(&a, nullptr, 0, nullptr);
  EXPECT_EQ(s, FLASH4_ERROR_INVALID_ARGUMENT) << flash4_last_error();
  const std::string message = flash4_last_error();
  for (const char* part : parts) EXPECT_TRUE(contains(message, part)) << message << " | " << part;
}

// Reference-target rules: the message comes back through the out-parameter.
std::string reference_error(const flash4_fwd_args& a) {
  std::string message;
  FwdParams p;
  EXPECT_EQ(flash4::validate_fwd(a, Target::kReference, &p, &message),
            FLASH4_ERROR_INVALID_ARGUMENT);
  return message;
}

void expect_valid(const flash4_fwd_args& a, Target target = Target::kDevice,
                  FwdParams* out = nullptr) {
  std::string message = "untouched";
  FwdParams p;
  EXPECT_EQ(flash4::validate_fwd(a, target, &p, &message), FLASH4_OK) << message;
  EXPECT_EQ(message, "");
  if (out) *out = p;
}

// ---- valid calls and the params they produce ------------------------------

TEST(Validation, ValidBatchedFillsParams) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.opt.softmax_scale = 0.3;
  a.opt.softcap = 15.0;
  a.opt.exp2_emulation = 1;
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.q, fake(0));
  EXPECT_EQ(p.k, fake(1));
  EXPECT_EQ(p.v, fake(2));
  EXPECT_EQ(p.out, fake(3));
  EXPECT_EQ(p.lse, fake(4));
  EXPECT_EQ(p.q_batch_stride, c.Sq * 3 * c.Hq * c.D);
  EXPECT_EQ(p.q_row_stride, 3 * c.Hq * c.D);
  EXPECT_EQ(p.q_head_stride, c.D);
  EXPECT_EQ(p.k_batch_stride, c.Sk * c.Hkv * c.D);
  EXPECT_EQ(p.k_row_stride, c.Hkv * c.D);
  EXPECT_EQ(p.k_head_stride, c.D);
  EXPECT_EQ(p.v_batch_stride, c.Sk * c.Hkv * c.D);
  EXPECT_EQ(p.o_batch_stride, c.Sq * c.Hq * c.D);
  EXPECT_EQ(p.o_row_stride, c.Hq * c.D);
  EXPECT_EQ(p.o_head_stride, c.D);
  EXPECT_EQ(p.lse_batch_stride, c.Hq * c.Sq);
  EXPECT_EQ(p.lse_head_stride, c.Sq);
  EXPECT_EQ(p.batch, c.B);
  EXPECT_EQ(p.seqlen_q, c.Sq);
  EXPECT_EQ(p.seqlen_k, c.Sk);
  EXPECT_EQ(p.heads_q, c.Hq);
  EXPECT_EQ(p.heads_kv, c.Hkv);
  EXPECT_EQ(p.headdim, c.D);
  EXPECT_EQ(p.cu_seqlens_q, nullptr);
  EXPECT_EQ(p.cu_seqlens_k, nullptr);
  EXPECT_EQ(p.seqused_k, nullptr);
  EXPECT_FLOAT_EQ(p.softmax_scale, 0.3f);
  EXPECT_FLOAT_EQ(p.softmax_scale_log2, float(0.3 * 1.4426950408889634));
  EXPECT_FLOAT_EQ(p.softcap, 15.0f);
  EXPECT_EQ(p.window_left, -1);
  EXPECT_EQ(p.window_right, -1);
  EXPECT_FALSE(p.is_causal);
  EXPECT_EQ(p.dtype, flash4::DType::kBf16);
  EXPECT_EQ(p.exp2_emulation, 1);
}

TEST(Validation, ValidVarlenFillsParams) {
  Varlen c;
  flash4_fwd_args a = c.fwd();
  a.opt.seqused_k = view(fake(11), FLASH4_DTYPE_INT32, {c.B});
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.batch, c.B);
  EXPECT_EQ(p.seqlen_q, 6);
  EXPECT_EQ(p.seqlen_k, 9);
  EXPECT_EQ(p.q_batch_stride, 0);
  EXPECT_EQ(p.q_row_stride, c.Hq * c.D);
  EXPECT_EQ(p.q_head_stride, c.D);
  EXPECT_EQ(p.k_batch_stride, 0);
  EXPECT_EQ(p.k_row_stride, 2 * c.Hkv * c.D);
  EXPECT_EQ(p.v_row_stride, 2 * c.Hkv * c.D);
  EXPECT_EQ(p.o_batch_stride, 0);
  EXPECT_EQ(p.o_row_stride, c.Hq * c.D);
  EXPECT_EQ(p.lse_batch_stride, 0);
  EXPECT_EQ(p.lse_head_stride, c.total_q);
  EXPECT_EQ(p.cu_seqlens_q, fake(9));
  EXPECT_EQ(p.cu_seqlens_k, fake(10));
  EXPECT_EQ(p.seqused_k, fake(11));
  EXPECT_EQ(p.dtype, flash4::DType::kFp16);
}

TEST(Validation, DefaultScaleIsInverseSqrtHeaddim) {
  for (int64_t d : {8, 64, 72, 256}) {
    Batched c;
    c.D = d;
    FwdParams p;
    expect_valid(c.fwd(), Target::kDevice, &p);
    const double scale = 1.0 / std::sqrt(double(d));
    EXPECT_FLOAT_EQ(p.softmax_scale, float(scale)) << d;
    EXPECT_FLOAT_EQ(p.softmax_scale_log2, float(scale * 1.4426950408889634)) << d;
  }
}

TEST(Validation, CausalNormalisesWindowRightToZero) {
  Batched c;
  for (int right : {-1, 0}) {
    for (int left : {-1, 0, 3}) {
      flash4_fwd_args a = c.fwd();
      a.opt.causal = 1;
      a.opt.use_window = 1;
      a.opt.window_left = left;
      a.opt.window_right = right;
      FwdParams p;
      expect_valid(a, Target::kDevice, &p);
      EXPECT_TRUE(p.is_causal);
      EXPECT_EQ(p.window_right, 0);
      EXPECT_EQ(p.window_left, left);
    }
  }
  // A local window passes through unchanged; right == 0 is the causal mask.
  flash4_fwd_args a = c.fwd();
  a.opt.window_left = 4;
  a.opt.window_right = 2;
  expect_invalid(a, {"opt.use_window is 0"});  // a window needs the switch
  a.opt.use_window = 1;
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.window_left, 4);
  EXPECT_EQ(p.window_right, 2);
  EXPECT_FALSE(p.is_causal);
  a.opt.window_left = -1;
  a.opt.window_right = 0;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_TRUE(p.is_causal);
}

TEST(Validation, TensorAbove2Pow31ElementsHas64BitStrides) {
  Batched c;
  c.B = 2;
  c.Sq = int64_t(1) << 20;
  c.Sk = int64_t(1) << 20;
  c.Hq = 16;
  c.Hkv = 16;
  c.D = 128;  // q has 2^32 elements
  flash4_fwd_args a = c.fwd();
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.q_batch_stride, c.Sq * 3 * c.Hq * c.D);
  EXPECT_GT(p.q_batch_stride, int64_t(INT32_MAX));
  EXPECT_EQ(p.k_batch_stride, int64_t(1) << 31);
  EXPECT_EQ(p.o_batch_stride, int64_t(1) << 31);
  EXPECT_EQ(p.lse_batch_stride, int64_t(1) << 24);
  EXPECT_EQ(p.seqlen_q, 1 << 20);
}

TEST(Validation, EmptyProblemsMayHaveNullData) {
  Batched c;
  for (int which = 0; which < 3; ++which) {
    Batched e = c;
    if (which == 0) e.B = 0;
    if (which == 1) e.Sq = 0;
    if (which == 2) e.Sk = 0;
    flash4_fwd_args a = e.fwd();
    if (which != 2) {  // no query rows: q, out and lse are empty
      a.q.data = a.out.data = a.lse.data = nullptr;
    }
    if (which != 1) {  // batch 0 or Sk 0: k and v are empty
      a.k.data = a.v.data = nullptr;
    }
    expect_valid(a);
  }
  Varlen v;
  v.total_q = 0;
  v.total_k = 0;
  flash4_fwd_args a = v.fwd();
  a.q.data = a.k.data = a.v.data = a.out.data = nullptr;
  expect_valid(a);
}

TEST(Validation, LseNullMeansNotComputed) {
  flash4_fwd_args a = Batched().fwd();
  a.lse = flash4_tensor{};  // zeroed view: data NULL, nothing else checked
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.lse, nullptr);
}

TEST(Validation, ReferenceAcceptsFp32InputsAndWideOutputs) {
  Batched c;
  c.dt = FLASH4_DTYPE_FP32;
  flash4_fwd_args a = c.fwd();
  for (flash4_dtype out : {FLASH4_DTYPE_FP32, FLASH4_DTYPE_FP64}) {
    a.out.dtype = out;
    a.lse.dtype = out;
    expect_valid(a, Target::kReference);
  }
  c.dt = FLASH4_DTYPE_FP16;
  a = c.fwd();
  for (flash4_dtype out : {FLASH4_DTYPE_FP16, FLASH4_DTYPE_FP32, FLASH4_DTYPE_FP64}) {
    a.out.dtype = out;
    expect_valid(a, Target::kReference);
  }
  a.out.dtype = FLASH4_DTYPE_BF16;
  EXPECT_TRUE(contains(reference_error(a), "out: dtype bf16"));
  a = c.fwd();
  a.lse.dtype = FLASH4_DTYPE_FP16;
  EXPECT_TRUE(contains(reference_error(a), "lse: dtype fp16 must be fp32 or fp64"));
}

TEST(Validation, ReferenceRejectsNonFloatInputs) {
  Batched c;
  c.dt = FLASH4_DTYPE_FP64;
  EXPECT_TRUE(contains(reference_error(c.fwd()), "q: dtype fp64 must be fp16, bf16 or fp32"));
  c.dt = FLASH4_DTYPE_INT32;
  EXPECT_TRUE(contains(reference_error(c.fwd()), "q: dtype int32"));
}

TEST(Validation, ReferenceNeedsOnlyNaturalAlignment) {
  flash4_fwd_args a = Batched().fwd();
  // 2-byte aligned pointer and a stride of 3 elements * 2 bytes: fine on the
  // host, not on the GPU.
  a.q.data = static_cast<char*>(fake(0)) + 2;
  a.k.stride[2] = 66;
  a.k.stride[1] = 3 * 66;
  a.k.stride[0] = 7 * 3 * 66;
  expect_valid(a, Target::kReference);
  a.q.data = static_cast<char*>(fake(0)) + 1;
  EXPECT_TRUE(contains(reference_error(a), "q: data pointer must be 2-byte aligned"));
  a = Batched().fwd();
  a.lse.data = static_cast<char*>(fake(4)) + 2;
  EXPECT_TRUE(contains(reference_error(a), "lse: data pointer must be 4-byte aligned"));
}

// ---- dtypes ----------------------------------------------------------------

TEST(Validation, DeviceRejectsFp32Inputs) {
  Batched c;
  c.dt = FLASH4_DTYPE_FP32;
  expect_invalid(c.fwd(), {"q: dtype fp32", "fp16 or bf16"});
}

TEST(Validation, KAndVDtypeMustMatchQ) {
  Batched c;
  c.dt = FLASH4_DTYPE_FP16;
  flash4_fwd_args a = c.fwd();
  a.k.dtype = FLASH4_DTYPE_BF16;
  expect_invalid(a, {"k: dtype bf16 differs from q's fp16"});
  a = c.fwd();
  a.v.dtype = FLASH4_DTYPE_BF16;
  expect_invalid(a, {"v: dtype bf16 differs from q's fp16"});
}

TEST(Validation, DeviceOutAndLseDtypes) {
  flash4_fwd_args a = Batched().fwd();
  a.out.dtype = FLASH4_DTYPE_FP32;
  expect_invalid(a, {"out: dtype fp32 differs from q's bf16"});
  a = Batched().fwd();
  a.lse.dtype = FLASH4_DTYPE_FP64;
  expect_invalid(a, {"lse: dtype fp64 must be fp32"});
}

TEST(Validation, DtypeOutsideTheEnum) {
  flash4_fwd_args a = Batched().fwd();
  a.v.dtype = static_cast<flash4_dtype>(9);
  expect_invalid(a, {"v: dtype 9 is not a flash4_dtype"});
}

// ---- head dims and heads --------------------------------------------------

TEST(Validation, HeaddimMultipleOf8From8To256) {
  for (int64_t d : {0, 4, 100, 264, 512}) {
    Batched c;
    c.D = d;
    flash4_fwd_args a = c.fwd();
    if (d == 0) a.q.data = nullptr;  // even an empty q breaks the rule
    expect_invalid(a, {"q: headdim", std::to_string(d).c_str(), "multiple of 8", "256"});
  }
}

TEST(Validation, KHeaddimMustMatchQ) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.k = view(fake(1), c.dt, {c.B, c.Sk, c.Hkv, 32});
  expect_invalid(a, {"k: shape[3]=32 (headdim) differs from q's 64"});
}

TEST(Validation, VHeaddimMustMatchQ) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.v = view(fake(2), c.dt, {c.B, c.Sk, c.Hkv, 128});
  expect_invalid(a, {"v: shape[3]=128 (headdim)", "different V head dim is not supported"});
}

TEST(Validation, HqMultipleOfHkv) {
  Batched c;
  c.Hq = 6;
  c.Hkv = 4;
  expect_invalid(c.fwd(), {"heads: Hq=6 must be a multiple of Hkv=4"});
  c.Hkv = 0;
  flash4_fwd_args a = c.fwd();
  a.k.data = a.v.data = nullptr;
  expect_invalid(a, {"heads: Hkv=0 must be at least 1"});
}

// ---- shapes ---------------------------------------------------------------

TEST(Validation, NegativeSize) {
  flash4_fwd_args a = Batched().fwd();
  a.q.shape[1] = -3;
  expect_invalid(a, {"q: negative size in shape[1]"});
  a = Batched().fwd();
  a.out.shape[2] = -1;
  expect_invalid(a, {"out: negative size in shape[2]"});
}

TEST(Validation, WrongRank) {
  flash4_fwd_args a = Batched().fwd();
  a.k.ndim = 3;
  expect_invalid(a, {"k: ndim 3, expected 4"});
  a = Varlen().fwd();
  a.q = Batched().fwd().q;  // 4-D q in varlen mode
  expect_invalid(a, {"q: ndim 4, expected 3"});
  a = Batched().fwd();
  a.q.ndim = 7;
  expect_invalid(a, {"q: ndim 7"});
}

TEST(Validation, BatchMismatch) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.k = view(fake(1), c.dt, {3, c.Sk, c.Hkv, c.D});
  expect_invalid(a, {"k: shape[0]=3 (batch) differs from q's 2"});
}

TEST(Validation, VShapeMustEqualK) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.v = view(fake(2), c.dt, {c.B, c.Sk + 1, c.Hkv, c.D});
  expect_invalid(a, {"v: shape[1]=8 (seqlen_k) differs from k's 7"});
  a = c.fwd();
  a.v = view(fake(2), c.dt, {c.B, c.Sk, 6, c.D});
  expect_invalid(a, {"v: shape[2]=6 (heads_kv) differs from k's 3"});
}

TEST(Validation, OutShapeMustEqualQ) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.out = view(fake(3), c.dt, {c.B, c.Sq, c.Hq - 1, c.D});
  expect_invalid(a, {"out: shape[2]=5 (heads) differs from q's 6"});
}

TEST(Validation, LseShape) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.lse = view(fake(4), FLASH4_DTYPE_FP32, {c.B, c.Hq, c.Sq - 1});
  expect_invalid(a, {"lse: shape[2]=4 (seqlen_q) differs from q's 5"});
  a.lse = view(fake(4), FLASH4_DTYPE_FP32, {c.B, c.Sq, c.Hq});  // q's order, not lse's
  expect_invalid(a, {"lse: shape[1]=5 (heads)"});
  Varlen v;
  a = v.fwd();
  a.lse = view(fake(4), FLASH4_DTYPE_FP32, {v.total_q, v.Hq});
  expect_invalid(a, {"lse: shape[0]=11 (heads) differs from q's 4"});
}

TEST(Validation, SizesMustBeBelow2Pow31) {
  Batched c;
  c.Sk = int64_t(1) << 31;
  expect_invalid(c.fwd(), {"k: shape[1]=2147483648 (seqlen_k) must be below 2^31"});
  c = Batched();
  c.B = int64_t(1) << 31;
  c.Sq = 1;
  c.Sk = 1;
  expect_invalid(c.fwd(), {"q: shape[0]=2147483648 (batch) must be below 2^31"});
  c = Batched();
  c.Hq = int64_t(1) << 32;
  c.Sq = 1;
  expect_invalid(c.fwd(), {"q: shape[2]=4294967296 (heads) must be below 2^31"});
  Varlen v;
  v.total_q = int64_t(1) << 31;
  expect_invalid(v.fwd(), {"q: shape[0]=2147483648 (total_q) must be below 2^31"});
}

// ---- strides, pointers, alignment ----------------------------------------

TEST(Validation, LastDimensionContiguous) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.v.stride[3] = 2;
  expect_invalid(a, {"v: last dimension must be contiguous (stride 1), got stride 2"});
  a = c.fwd();
  a.lse.stride[2] = 0;
  expect_invalid(a, {"lse: last dimension must be contiguous (stride 1), got stride 0"});
}

TEST(Validation, NegativeStride) {
  flash4_fwd_args a = Batched().fwd();
  a.k.stride[1] = -192;
  expect_invalid(a, {"k: stride[1]=-192 must be non-negative"});
}

TEST(Validation, NullData) {
  flash4_fwd_args a = Batched().fwd();
  a.q.data = nullptr;
  expect_invalid(a, {"q: data is NULL"});
  a = Batched().fwd();
  a.out.data = nullptr;
  expect_invalid(a, {"out: data is NULL"});
  a = Batched().fwd();
  a.v.data = nullptr;
  expect_invalid(a, {"v: data is NULL"});
}

TEST(Validation, DevicePointer16ByteAligned) {
  flash4_fwd_args a = Batched().fwd();
  a.out.data = static_cast<char*>(fake(3)) + 8;
  expect_invalid(a, {"out: data pointer must be 16-byte aligned"});
  a = Batched().fwd();
  a.lse.data = static_cast<char*>(fake(4)) + 4;  // fp32 lse: 4 bytes is enough
  expect_valid(a);
  a.lse.data = static_cast<char*>(fake(4)) + 2;
  expect_invalid(a, {"lse: data pointer must be 4-byte aligned"});
}

TEST(Validation, DeviceStridesMultipleOf16Bytes) {
  Batched c;
  flash4_fwd_args a = c.fwd();
  a.q.stride[1] = 12;
  expect_invalid(a, {"q: stride[1]=12 elements is not a multiple of 16 bytes"});
  a = c.fwd();
  a.k.stride[0] += 4;
  expect_invalid(a, {"k: stride[0]=", "is not a multiple of 16 bytes"});
  // The lse is fp32 and read with scalar accesses: any stride will do.
  a = c.fwd();
  a.lse.stride[1] = c.Sq + 1;
  a.lse.stride[0] = c.Hq * (c.Sq + 1);
  expect_valid(a);
}

TEST(Validation, OffsetOverflow) {
  flash4_fwd_args a = Batched().fwd();
  a.q.stride[0] = int64_t(1) << 62;  // (B-1) * 2^62 * 2 bytes overflows
  expect_invalid(a, {"q: the largest", "overflows int64"});
}

// ---- varlen ---------------------------------------------------------------

TEST(Validation, VarlenNeedsBothCuSeqlens) {
  flash4_fwd_args a = Varlen().fwd();
  a.opt.cu_seqlens_k.data = nullptr;
  expect_invalid(a, {"opt.cu_seqlens_k", "varlen needs both"});
  a = Varlen().fwd();
  a.opt.cu_seqlens_q.data = nullptr;
  expect_invalid(a, {"opt.cu_seqlens_q", "varlen needs both"});
}

TEST(Validation, VarlenCuSeqlensInt32OneDimContiguous) {
  Varlen c;
  flash4_fwd_args a = c.fwd();
  a.opt.cu_seqlens_q.dtype = FLASH4_DTYPE_FP32;
  expect_invalid(a, {"opt.cu_seqlens_q: dtype fp32 must be int32"});
  a = c.fwd();
  a.opt.cu_seqlens_k = view(fake(10), FLASH4_DTYPE_INT32, {1, c.B + 1});
  expect_invalid(a, {"opt.cu_seqlens_k: ndim 2, expected 1"});
  a = c.fwd();
  a.opt.cu_seqlens_k.stride[0] = 2;
  expect_invalid(a, {"opt.cu_seqlens_k: last dimension must be contiguous"});
  a = c.fwd();
  a.opt.cu_seqlens_q.data = static_cast<char*>(fake(9)) + 2;
  expect_invalid(a, {"opt.cu_seqlens_q: data pointer must be 4-byte aligned"});
}

TEST(Validation, VarlenCuSeqlensSameBatch) {
  Varlen c;
  flash4_fwd_args a = c.fwd();
  a.opt.cu_seqlens_k.shape[0] = c.B + 2;
  expect_invalid(a, {"opt.cu_seqlens_k: shape[0]=5 (batch+1) differs from opt.cu_seqlens_q's 4"});
  a = c.fwd();
  a.opt.cu_seqlens_q.shape[0] = 0;
  a.opt.cu_seqlens_k.shape[0] = 0;
  expect_invalid(a, {"opt.cu_seqlens_q: shape[0]=0 must be at least 1"});
}

TEST(Validation, VarlenMaxSeqlenRange) {
  flash4_fwd_args a = Varlen().fwd();
  a.opt.max_seqlen_q = -1;
  expect_invalid(a, {"opt.max_seqlen_q=-1"});
  a = Varlen().fwd();
  a.opt.max_seqlen_k = int64_t(1) << 31;
  expect_invalid(a, {"opt.max_seqlen_k=2147483648", "below 2^31"});
}

TEST(Validation, SequsedK) {
  Batched b;
  flash4_fwd_args a = b.fwd();
  a.opt.seqused_k = view(fake(11), FLASH4_DTYPE_INT32, {b.B});
  FwdParams p;
  expect_valid(a, Target::kDevice, &p);
  EXPECT_EQ(p.seqused_k, fake(11));
  a.opt.seqused_k.dtype = FLASH4_DTYPE_FP32;
  expect_invalid(a, {"opt.seqused_k: dtype fp32 must be int32"});
  a.opt.seqused_k = view(fake(11), FLASH4_DTYPE_INT32, {b.B + 1});
  expect_invalid(a, {"opt.seqused_k: shape[0]=3 differs from the batch size 2"});
  a.opt.seqused_k = view(fake(11), FLASH4_DTYPE_INT32, {b.B}, {2});
  expect_invalid(a, {"opt.seqused_k: last dimension must be contiguous"});
  a.opt.seqused_k = view(fake(11), FLASH4_DTYPE_INT32, {1, b.B});
  expect_invalid(a, {"opt.seqused_k: ndim 2, expected 1"});
}

// ---- options --------------------------------------------------------------

TEST(Validation, Windows) {
  flash4_fwd_args a = Batched().fwd();
  a.opt.window_left = -2;
  expect_invalid(a, {"opt.window_left=-2: must be >= -1"});
  a = Batched().fwd();
  a.opt.window_right = -5;
  expect_invalid(a, {"opt.window_right=-5: must be >= -1"});
  a = Batched().fwd();
  a.opt.causal = 1;
  a.opt.window_right = 3;
  expect_invalid(a, {"opt.window_right=3", "causal"});
  a = Batched().fwd();
  a.opt.causal = 2;
  expect_invalid(a, {"opt.causal=2: must be 0 or 1"});
  a = Batched().fwd();
  a.opt.use_window = 2;
  expect_invalid(a, {"opt.use_window=2: must be 0 or 1"});
  // Zeroed options (0, 0) and explicit (-1, -1) both mean no window.
  for (int w : {0, -1}) {
    a = Batched().fwd();
    a.opt.window_left = a.opt.window_right = w;
    FwdParams p;
    expect_valid(a, Target::kDevice, &p);
    EXPECT_EQ(p.window_left, -1);
    EXPECT_EQ(p.window_right, -1);
    EXPECT_FALSE(p.is_causal);
  }
}

TEST(Validation, SoftmaxScale) {
  for (double bad : {NAN, INFINITY, -INFINITY}) {
    flash4_fwd_args a = Batched().fwd();
    a.opt.softmax_scale = bad;
    expect_invalid(a, {"opt.softmax_scale must be finite"});
  }
  flash4_fwd_args a = Batched().fwd();
  a.opt.softmax_scale = 1e300;
  expect_invalid(a, {"opt.softmax_scale=", "out of float range"});
}

TEST(Validation, Softcap) {
  for (double bad : {-1.0, double(NAN), double(INFINITY)}) {
    flash4_fwd_args a = Batched().fwd();
    a.opt.softcap = bad;
    expect_invalid(a, {"opt.softcap must be finite and >= 0"});
  }
  flash4_fwd_args a = Batched().fwd();
  a.opt.softcap = 1e300;
  expect_invalid(a, {"opt.softcap=", "out of float range"});
}

TEST(Validation, PathAndExp2Emulation) {
  for (int bad : {-1, 3, 42}) {  // -1 is FLASH4_PATH_NONE: an answer, not a request
    flash4_fwd_args a = Batched().fwd();
    a.opt.path = static_cast<flash4_path>(bad);
    expect_invalid(a, {"opt.path=", "FLASH4_PATH_AUTO"});
  }
  for (int bad : {-2, 2}) {
    flash4_fwd_args a = Batched().fwd();
    a.opt.exp2_emulation = bad;
    expect_invalid(a, {"opt.exp2_emulation=", "must be -1, 0 or 1"});
  }
  for (int good : {-1, 0, 1}) {
    flash4_fwd_args a = Batched().fwd();
    a.opt.exp2_emulation = good;
    expect_valid(a);
  }
}

TEST(Validation, ValidatorWritesNothingOnFailure) {
  flash4_fwd_args a = Batched().fwd();
  a.opt.window_left = -3;
  FwdParams p;
  p.batch = 77;
  p.headdim = 99;
  std::string message;
  EXPECT_EQ(flash4::validate_fwd(a, Target::kDevice, &p, &message), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(p.batch, 77);
  EXPECT_EQ(p.headdim, 99);
  EXPECT_TRUE(contains(message, "opt.window_left"));
}

// ---- backward -------------------------------------------------------------

TEST(Validation, BackwardValidFillsParams) {
  Batched c;
  flash4_bwd_args a = c.bwd();
  a.deterministic = 1;
  a.opt.causal = 1;
  BwdParams p;
  std::string message;
  ASSERT_EQ(flash4::validate_bwd(a, Target::kDevice, &p, &message), FLASH4_OK) << message;
  EXPECT_EQ(p.dout, fake(5));
  EXPECT_EQ(p.dq, fake(6));
  EXPECT_EQ(p.dk, fake(7));
  EXPECT_EQ(p.dv, fake(8));
  EXPECT_EQ(p.out, fake(3));
  EXPECT_EQ(p.lse, fake(4));
  EXPECT_EQ(p.do_batch_stride, c.Sq * c.Hq * c.D);
  EXPECT_EQ(p.do_row_stride, c.Hq * c.D);
  EXPECT_EQ(p.dq_head_stride, c.D);
  EXPECT_EQ(p.dk_batch_stride, c.Sk * c.Hkv * c.D);
  EXPECT_EQ(p.dv_row_stride, c.Hkv * c.D);
  EXPECT_EQ(p.q_row_stride, 3 * c.Hq * c.D);
  EXPECT_TRUE(p.deterministic);
  EXPECT_TRUE(p.is_causal);
  EXPECT_EQ(p.window_right, 0);
}

TEST(Validation, BackwardNeedsLse) {
  flash4_bwd_args a = Batched().bwd();
  a.lse.data = nullptr;
  expect_invalid_bwd(a, {"lse: data is NULL"});
}

TEST(Validation, BackwardShapesAndDtypes) {
  Batched c;
  flash4_bwd_args a = c.bwd();
  a.dout.dtype = FLASH4_DTYPE_FP16;
  expect_invalid_bwd(a, {"dout: dtype fp16 differs from q's bf16"});
  a = c.bwd();
  a.dq.dtype = FLASH4_DTYPE_FP32;
  expect_invalid_bwd(a, {"dq: dtype fp32 differs from q's bf16"});
  a = c.bwd();
  a.dk = view(fake(7), c.dt, {c.B, c.Sk, c.Hq, c.D});  // dk is per kv head
  expect_invalid_bwd(a, {"dk: shape[2]=6 (heads_kv) differs from k's 3"});
  a = c.bwd();
  a.dv = view(fake(8), c.dt, {c.B, c.Sq, c.Hkv, c.D});
  expect_invalid_bwd(a, {"dv: shape[1]=5 (seqlen_k) differs from v's 7"});
  a = c.bwd();
  a.out.stride[3] = 3;
  expect_invalid_bwd(a, {"out: last dimension must be contiguous"});
  a = c.bwd();
  a.deterministic = 5;
  expect_invalid_bwd(a, {"deterministic=5: must be 0 or 1"});
  a = c.bwd();
  a.dq.data = nullptr;
  expect_invalid_bwd(a, {"dq: data is NULL"});
}

TEST(Validation, BackwardReferenceWideGradients) {
  Batched c;
  flash4_bwd_args a = c.bwd();
  a.dq.dtype = a.dk.dtype = a.dv.dtype = FLASH4_DTYPE_FP64;
  a.out.dtype = FLASH4_DTYPE_FP32;
  a.lse.dtype = FLASH4_DTYPE_FP64;
  BwdParams p;
  std::string message;
  EXPECT_EQ(flash4::validate_bwd(a, Target::kReference, &p, &message), FLASH4_OK) << message;
  EXPECT_EQ(flash4::validate_bwd(a, Target::kDevice, &p, &message),
            FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(message, "out: dtype fp32")) << message;
}

}  // namespace
