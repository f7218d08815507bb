// Entry points of the C ABI (src/api.cpp) and the C++ layer (flash4.hpp)
// that need no GPU: names, tensor helper, last error, workspace sizes,
// support queries and what the GPU calls answer on a machine without one.
// Pointers are fake (aligned, never dereferenced): no test here launches.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "flash4/flash4.h"
#include "flash4/flash4.hpp"

namespace {

void* fake(int i) { return reinterpret_cast<void*>(uintptr_t(0x20000000) * uintptr_t(i + 1)); }

bool has_gpu() {
  int count = 0;
  const bool yes = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();
  return yes;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Shape {
  int64_t B = 2, Sq = 200, Sk = 130, Hq = 6, Hkv = 2, D = 72;
};

flash4_fwd_args batched_fwd(const Shape& s) {
  flash4_fwd_args a{};
  const flash4_dtype dt = FLASH4_DTYPE_FP16;
  a.q = flash4::make_tensor(fake(0), dt, {s.B, s.Sq, s.Hq, s.D});
  a.k = flash4::make_tensor(fake(1), dt, {s.B, s.Sk, s.Hkv, s.D});
  a.v = flash4::make_tensor(fake(2), dt, {s.B, s.Sk, s.Hkv, s.D});
  a.out = flash4::make_tensor(fake(3), dt, {s.B, s.Sq, s.Hq, s.D});
  a.lse = flash4::make_tensor(fake(4), FLASH4_DTYPE_FP32, {s.B, s.Hq, s.Sq});
  a.opt = flash4::Options().causal();
  return a;
}

flash4_bwd_args batched_bwd(const Shape& s) {
  const flash4_fwd_args f = batched_fwd(s);
  flash4_bwd_args a{};
  a.q = f.q;
  a.k = f.k;
  a.v = f.v;
  a.out = f.out;
  a.lse = f.lse;
  a.opt = f.opt;
  a.dout = flash4::make_tensor(fake(5), f.q.dtype, {s.B, s.Sq, s.Hq, s.D});
  a.dq = flash4::make_tensor(fake(6), f.q.dtype, {s.B, s.Sq, s.Hq, s.D});
  a.dk = flash4::make_tensor(fake(7), f.q.dtype, {s.B, s.Sk, s.Hkv, s.D});
  a.dv = flash4::make_tensor(fake(8), f.q.dtype, {s.B, s.Sk, s.Hkv, s.D});
  return a;
}

// Make the last error non-empty, to see who clears it.
void leave_an_error() {
  ASSERT_EQ(flash4_fwd(nullptr, nullptr, 0, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  ASSERT_STRNE(flash4_last_error(), "");
}

TEST(Api, VersionStatusAndPathNames) {
  EXPECT_STREQ(flash4_version(), "0.1.0");
  EXPECT_EQ(flash4::version(), "0.1.0");
  std::set<std::string> names;
  for (int s = FLASH4_OK; s <= FLASH4_ERROR_INTERNAL; ++s)
    names.insert(flash4_status_string(static_cast<flash4_status>(s)));
  EXPECT_EQ(names.size(), size_t(FLASH4_ERROR_INTERNAL + 1));
  EXPECT_STREQ(flash4_status_string(FLASH4_ERROR_NO_DEVICE), "FLASH4_ERROR_NO_DEVICE");
  EXPECT_STREQ(flash4_path_name(FLASH4_PATH_AUTO), "auto");
  EXPECT_STREQ(flash4_path_name(FLASH4_PATH_PORTABLE), "portable");
  EXPECT_STREQ(flash4_path_name(FLASH4_PATH_SM90), "sm90");
  EXPECT_STREQ(flash4_path_name(FLASH4_PATH_NONE), "none");
  EXPECT_STREQ(flash4_path_name(static_cast<flash4_path>(17)), "unknown");
}

TEST(Api, MakeTensorStrides) {
  const int64_t shape[4] = {2, 3, 5, 8};
  flash4_tensor t = flash4_make_tensor(fake(0), FLASH4_DTYPE_BF16, 4, shape, nullptr);
  EXPECT_EQ(t.data, fake(0));
  EXPECT_EQ(t.dtype, FLASH4_DTYPE_BF16);
  EXPECT_EQ(t.ndim, 4);
  const int64_t contiguous[4] = {3 * 5 * 8, 5 * 8, 8, 1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(t.shape[i], shape[i]);
    EXPECT_EQ(t.stride[i], contiguous[i]) << i;
  }
  const int64_t strides[3] = {640, 16, 1};
  t = flash4_make_tensor(fake(1), FLASH4_DTYPE_FP16, 3, shape, strides);
  EXPECT_EQ(t.stride[0], 640);
  EXPECT_EQ(t.stride[1], 16);
  EXPECT_EQ(t.stride[2], 1);
  EXPECT_EQ(t.shape[3], 0);  // unused dims stay zero
  // A bad rank is kept for validation to report; nothing is read.
  t = flash4_make_tensor(fake(1), FLASH4_DTYPE_FP16, 9, shape, nullptr);
  EXPECT_EQ(t.ndim, 9);
  EXPECT_EQ(t.shape[0], 0);
}

TEST(Api, NullArgumentsAreInvalid) {
  size_t bytes = 0;
  flash4_support info{};
  flash4_fwd_args f = batched_fwd(Shape());
  flash4_bwd_args b = batched_bwd(Shape());
  EXPECT_EQ(flash4_fwd(nullptr, nullptr, 0, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "args is NULL"));
  EXPECT_EQ(flash4_fwd_workspace_size(&f, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "bytes is NULL"));
  EXPECT_EQ(flash4_fwd_supported(&f, -1, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "info is NULL"));
  EXPECT_EQ(flash4_bwd_workspace_size(nullptr, &bytes), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(flash4_bwd_supported(&b, -1, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(flash4_bwd(nullptr, nullptr, 0, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  (void)info;
}

TEST(Api, FwdWithoutGpuSaysNoDevice) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present: valid fake-pointer args must not launch";
  flash4_fwd_args a = batched_fwd(Shape());
  EXPECT_EQ(flash4_fwd(&a, nullptr, 0, nullptr), FLASH4_ERROR_NO_DEVICE);
  EXPECT_TRUE(contains(flash4_last_error(), "CUDA device")) << flash4_last_error();
  // Validation still comes first.
  a.q.stride[3] = 2;
  EXPECT_EQ(flash4_fwd(&a, nullptr, 0, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "q: last dimension")) << flash4_last_error();
}

// Head dim 72 has no backward kernel: NOT_SUPPORTED naming it on a GPU
// machine (or why the device cannot run the backward), NO_DEVICE without one.
TEST(Api, BwdUnsupportedShapeOrNoDevice) {
  flash4_bwd_args a = batched_bwd(Shape());
  const flash4_status s = flash4_bwd(&a, nullptr, 0, nullptr);
  if (has_gpu()) {
    EXPECT_EQ(s, FLASH4_ERROR_NOT_SUPPORTED) << flash4_status_string(s) << ": " << flash4_last_error();
    const std::string m = flash4_last_error();
    EXPECT_TRUE(contains(m, "head dim 72") || contains(m, "compute capability") || contains(m, "not built"))
        << m;
    EXPECT_TRUE(contains(m, "flash4_reference_bwd")) << m;
  } else {
    EXPECT_EQ(s, FLASH4_ERROR_NO_DEVICE) << flash4_status_string(s);
    EXPECT_TRUE(contains(flash4_last_error(), "CUDA device")) << flash4_last_error();
  }
  a.dk.dtype = FLASH4_DTYPE_BF16;
  EXPECT_EQ(flash4_bwd(&a, nullptr, 0, nullptr), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "dk: dtype bf16")) << flash4_last_error();
}

TEST(Api, FwdWorkspaceIsZero) {
  flash4_fwd_args a = batched_fwd(Shape());
  size_t bytes = 999;
  leave_an_error();
  EXPECT_EQ(flash4_fwd_workspace_size(&a, &bytes), FLASH4_OK);
  EXPECT_EQ(bytes, 0u);
  EXPECT_STREQ(flash4_last_error(), "");  // success clears the last error
  EXPECT_EQ(flash4::fwd_workspace_size(a), 0u);
}

TEST(Api, BwdWorkspaceFollowsThePlannedLayout) {
  // dq_accum fp32 (B, Hq, round_up(Sq,128), W) + two fp32 (B, Hq, round_up(Sq,128))
  // row arrays (softmax D, LSE in log2); W the width of the kernel that runs the head
  // dim: 64, 128 or 256 (136..248 run on the 256 kernel).
  auto width = [](int64_t d) -> int64_t { return d <= 64 ? 64 : d <= 128 ? 128 : 256; };
  for (const Shape& s : {Shape{2, 200, 130, 6, 2, 72}, Shape{1, 128, 1, 4, 4, 64},
                         Shape{3, 1, 9, 8, 1, 256}, Shape{2, 100, 50, 4, 2, 192},
                         Shape{1, 64, 64, 2, 1, 136}}) {
    flash4_bwd_args a = batched_bwd(s);
    size_t bytes = 0;
    ASSERT_EQ(flash4_bwd_workspace_size(&a, &bytes), FLASH4_OK) << flash4_last_error();
    const int64_t rows = s.B * s.Hq * round_up(s.Sq, 128);
    EXPECT_EQ(bytes, size_t(rows * width(s.D) * 4 + 2 * rows * 4)) << "D=" << s.D;
    EXPECT_EQ(flash4::bwd_workspace_size(a), bytes);
  }
  // Varlen: every sequence padded to 128 rows, bounded by total_q + 128 * B.
  const int64_t B = 3, total_q = 300, total_k = 400, H = 4, D = 40;
  const flash4_dtype dt = FLASH4_DTYPE_BF16;
  flash4_bwd_args a{};
  a.q = flash4::make_tensor(fake(0), dt, {total_q, H, D});
  a.k = flash4::make_tensor(fake(1), dt, {total_k, H, D});
  a.v = flash4::make_tensor(fake(2), dt, {total_k, H, D});
  a.out = flash4::make_tensor(fake(3), dt, {total_q, H, D});
  a.dout = flash4::make_tensor(fake(4), dt, {total_q, H, D});
  a.dq = flash4::make_tensor(fake(5), dt, {total_q, H, D});
  a.dk = flash4::make_tensor(fake(6), dt, {total_k, H, D});
  a.dv = flash4::make_tensor(fake(7), dt, {total_k, H, D});
  a.lse = flash4::make_tensor(fake(8), FLASH4_DTYPE_FP32, {H, total_q});
  a.opt = flash4::Options().varlen(flash4::make_tensor(fake(9), FLASH4_DTYPE_INT32, {B + 1}),
                                   flash4::make_tensor(fake(10), FLASH4_DTYPE_INT32, {B + 1}),
                                   200, 250);
  size_t bytes = 0;
  ASSERT_EQ(flash4_bwd_workspace_size(&a, &bytes), FLASH4_OK) << flash4_last_error();
  const int64_t rows = H * round_up(total_q + 132 * B, 4);
  EXPECT_EQ(bytes, size_t(rows * round_up(D, 64) * 4 + 2 * rows * 4));
  // Malformed: the validation error, nothing written.
  a.lse.dtype = FLASH4_DTYPE_FP16;
  bytes = 7;
  EXPECT_EQ(flash4_bwd_workspace_size(&a, &bytes), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bytes, 7u);
  EXPECT_TRUE(contains(flash4_last_error(), "lse: dtype fp16")) << flash4_last_error();
}

TEST(Api, FwdSupportedOnMalformedCallReturnsTheError) {
  flash4_fwd_args a = batched_fwd(Shape());
  a.opt.window_right = 4;  // with causal: must be -1 or 0
  flash4_support info{};
  info.path = FLASH4_PATH_SM90;
  std::strcpy(info.reason, "untouched");
  EXPECT_EQ(flash4_fwd_supported(&a, -1, &info), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "opt.window_right=4")) << flash4_last_error();
  EXPECT_EQ(info.path, FLASH4_PATH_SM90);
  EXPECT_STREQ(info.reason, "untouched");
  try {
    flash4::fwd_supported(a);
    ADD_FAILURE() << "no exception";
  } catch (const flash4::Error& e) {
    EXPECT_EQ(e.status(), FLASH4_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(e.what(), "opt.window_right=4")) << e.what();
  }
}

TEST(Api, FwdSupportedAnswersOnAnyMachine) {
  flash4_fwd_args a = batched_fwd(Shape());
  flash4_support info{};
  leave_an_error();
  ASSERT_EQ(flash4_fwd_supported(&a, -1, &info), FLASH4_OK) << flash4_last_error();
  EXPECT_STREQ(flash4_last_error(), "");
  EXPECT_GT(std::strlen(info.reason), 0u);
  if (!has_gpu()) {
    EXPECT_EQ(info.path, FLASH4_PATH_NONE);
    EXPECT_TRUE(contains(info.reason, "CUDA device")) << info.reason;
  }
  const flash4::Support s = flash4::fwd_supported(a);
  EXPECT_EQ(s.path, info.path);
  EXPECT_EQ(s.reason, info.reason);
  EXPECT_EQ(flash4_fwd_supported(&a, -2, &info), FLASH4_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(flash4_last_error(), "device=-2")) << flash4_last_error();
}

TEST(Api, BwdSupportedAnswersOnAnyMachine) {
  flash4_bwd_args a = batched_bwd(Shape());  // head dim 72: no backward kernel
  flash4_support info{};
  leave_an_error();
  ASSERT_EQ(flash4_bwd_supported(&a, -1, &info), FLASH4_OK) << flash4_last_error();
  EXPECT_STREQ(flash4_last_error(), "");
  EXPECT_EQ(info.path, FLASH4_PATH_NONE);
  if (has_gpu()) {
    EXPECT_TRUE(contains(info.reason, "head dim 72") || contains(info.reason, "compute capability") ||
                contains(info.reason, "not built"))
        << info.reason;
  } else {
    EXPECT_TRUE(contains(info.reason, "CUDA device")) << info.reason;
  }
  EXPECT_FALSE(flash4::bwd_supported(a).supported());
  // Deterministic is answered, never ignored: the sm90 path takes it and
  // says so; elsewhere the reason is the device.
  a.q.shape[3] = a.k.shape[3] = a.v.shape[3] = a.out.shape[3] = a.dout.shape[3] = 64;
  a.dq.shape[3] = a.dk.shape[3] = a.dv.shape[3] = 64;
  a.deterministic = 1;
  ASSERT_EQ(flash4_bwd_supported(&a, -1, &info), FLASH4_OK) << flash4_last_error();
  if (info.path == FLASH4_PATH_SM90) {
    EXPECT_TRUE(contains(info.reason, "deterministic")) << info.reason;
  } else {
    EXPECT_EQ(info.path, FLASH4_PATH_NONE) << info.reason;
    if (has_gpu())
      EXPECT_TRUE(contains(info.reason, "compute capability") || contains(info.reason, "not built") ||
                  contains(info.reason, "FLASH4_KERNELS=OFF"))
          << info.reason;
  }
  EXPECT_EQ(flash4_bwd_supported(&a, -2, &info), FLASH4_ERROR_INVALID_ARGUMENT);
}

TEST(Api, LastErrorIsPerThread) {
  leave_an_error();
  std::string other = "unset";
  std::thread([&] { other = flash4_last_error(); }).join();
  EXPECT_EQ(other, "");
  EXPECT_STRNE(flash4_last_error(), "");
}

TEST(Api, CppOptionsAndTensorHelpers) {
  const flash4_attn_options plain = flash4::Options();
  EXPECT_EQ(plain.window_left, -1);
  EXPECT_EQ(plain.window_right, -1);
  EXPECT_EQ(plain.causal, 0);
  EXPECT_EQ(plain.softmax_scale, 0.0);
  EXPECT_EQ(plain.path, FLASH4_PATH_AUTO);
  EXPECT_EQ(plain.cu_seqlens_q.data, nullptr);
  const flash4_attn_options o = flash4::Options()
                                    .softmax_scale(0.25)
                                    .window(16, 0)
                                    .softcap(30)
                                    .path(FLASH4_PATH_PORTABLE)
                                    .exp2_emulation(-1);
  EXPECT_EQ(o.softmax_scale, 0.25);
  EXPECT_EQ(o.window_left, 16);
  EXPECT_EQ(o.window_right, 0);
  EXPECT_EQ(o.softcap, 30.0);
  EXPECT_EQ(o.path, FLASH4_PATH_PORTABLE);
  EXPECT_EQ(o.exp2_emulation, -1);

  const flash4_tensor t = flash4::make_tensor(fake(0), FLASH4_DTYPE_FP16, {4, 8, 16}, {256, 32, 1});
  EXPECT_EQ(t.ndim, 3);
  EXPECT_EQ(t.stride[1], 32);
  EXPECT_THROW(flash4::make_tensor(fake(0), FLASH4_DTYPE_FP16, {4, 8}, {1}), flash4::Error);
  EXPECT_THROW(flash4::make_tensor(fake(0), FLASH4_DTYPE_FP16, {1, 2, 3, 4, 5}), flash4::Error);
}

TEST(Api, CppLayerThrowsWithStatusAndMessage) {
  flash4_fwd_args a = batched_fwd(Shape());
  a.k.dtype = FLASH4_DTYPE_BF16;
  try {
    flash4::fwd(a);
    ADD_FAILURE() << "no exception";
  } catch (const flash4::Error& e) {
    EXPECT_EQ(e.status(), FLASH4_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(e.what(), "k: dtype bf16 differs from q's fp16")) << e.what();
  }
  flash4_bwd_args b = batched_bwd(Shape());
  EXPECT_THROW(flash4::bwd(b), flash4::Error);
}

}  // namespace
