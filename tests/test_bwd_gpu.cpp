// GPU backward against the CPU reference, under the tolerance rule of
// docs/design.md (see tools/harness.hpp, "Backward"): for each of dq, dk, dv
//   pass iff no NaN / unwritten / out-of-bounds element, gradients of rows
//   and keys that see nothing exactly 0, and
//   max|g - ref_fp64| <= 3 * max|g_lowp - ref_fp64| + atol.
// out and lse come from the FP64 reference forward (rounded to the dtype /
// fp32), so the backward is tested on its own.
//
// Without a CUDA device, or without a device the backward runs on (the GPU
// backward is Hopper-only for now), the GPU tests are skipped with the reason.
// Head dims above 128 run on the head-dim-256 kernel.
//
// Suites (all GpuBwd*):
//   GpuBwdBase         {bf16, fp16} x (Sq,Sk) x d {64,128} x {non-causal, causal},
//                      plus 4224x4224 (B=1, H=2/1)
//   GpuBwdGqa          Hq/Hkv in {1,2,8} (dK/dV summed over the group)
//   GpuBwdLayout       packed qkv, head-major and padded strides
//   GpuBwdOptions      custom / negative softmax_scale, large scores, Sq or Sk = 0
//   GpuBwdWindow       random local windows, sliding-window causal, one-sided bands
//   GpuBwdSoftcap      softcap in both dtypes, with causal and a window
//   GpuBwdVarlen       varlen (empty sequences), seqused_k (varlen and batched)
//   GpuBwdHeadDim      head dims 8..256 on the 64 / 128 / 256 kernels (zero-filled
//                      columns); the 256 kernel with GQA, causal with empty rows,
//                      windows, softcap, varlen + seqused_k, padded layout, large scores
//   GpuBwdEmpty        batch 0: no crash, nothing written
//   GpuBwdRepeat       same inputs twice: dk/dv bitwise equal, dq within fp32
//                      reordering noise (see compare_runs)
//   GpuBwdGraph        flash4_bwd captured in a CUDA graph replays
//   GpuBwdDeterministic*  deterministic = 1: dq, dk, dv bitwise equal over
//                      50 runs and over CUDA graph replays, accurate, the
//                      default mode on the same inputs passes too; the
//                      workspace (GpuBwdDeterministicWorkspace runs without a GPU)
//   GpuBwdUnsupported  options without a kernel: NOT_SUPPORTED with a reason,
//                      nothing written; workspace errors
//   GpuBwdHarness      the backward rule itself on the CPU (runs without a GPU)
//
// Seeds: FLASH4_TEST_SEED (default 20240917) mixed with a per-case index;
// every case prints its description and seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "../tools/harness.hpp"

namespace {

namespace h = flash4::harness;
using h::Layout;
using h::Problem;

uint64_t base_seed() {
  const char* s = std::getenv("FLASH4_TEST_SEED");
  return s && *s ? std::strtoull(s, nullptr, 0) : 20240917ull;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Whether this machine can run the GPU backward at all; otherwise why not.
// Only "no device", "built without kernels" and "not a device the backward
// is built for" skip; any other refusal of a plain problem is a failure.
struct BwdAvailability {
  bool available = false;
  bool skip = false;
  std::string why;
};

BwdAvailability query_availability() {
  BwdAvailability a;
  std::string why;
  if (!h::cuda_device_available(&why)) {
    a.skip = true;
    a.why = "no CUDA device: GPU test skipped (run scripts/gpu-check.sh on a GPU machine) [" + why + "]";
    return a;
  }
  Problem p;
  p.seqlen_q = p.seqlen_k = 8;
  p.heads_q = p.heads_kv = 1;
  p.headdim = 64;
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  if (flash4_bwd_supported(&dc.args, -1, &info) != FLASH4_OK) {
    a.why = std::string("flash4_bwd_supported failed: ") + flash4_last_error();
    return a;
  }
  if (info.path != FLASH4_PATH_NONE) {
    a.available = true;
    return a;
  }
  a.why = info.reason;
  a.skip = contains(info.reason, "FLASH4_KERNELS=OFF") || contains(info.reason, "compute capability") ||
           contains(info.reason, "not built");
  return a;
}

const BwdAvailability& availability() {
  static const BwdAvailability a = query_availability();
  return a;
}

#define FLASH4_REQUIRE_BWD_GPU()                                                            \
  do {                                                                                      \
    const BwdAvailability& av_ = availability();                                            \
    if (av_.skip) GTEST_SKIP() << "GPU backward test skipped: " << av_.why;                 \
    ASSERT_TRUE(av_.available) << "a plain bf16 d=64 backward is refused: " << av_.why;     \
  } while (0)

struct Case {
  std::string name;  // gtest-safe ([A-Za-z0-9_])
  Problem p;
};
void PrintTo(const Case& c, std::ostream* os) { *os << h::describe(c.p); }
std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }
std::string dname(flash4_dtype t) { return t == FLASH4_DTYPE_FP16 ? "fp16" : "bf16"; }

std::vector<Case> seeded(std::vector<Case> cases, uint64_t salt) {
  for (size_t i = 0; i < cases.size(); ++i) cases[i].p.seed = h::mix_seed(base_seed() ^ (salt << 32), i);
  return cases;
}

void print_result(const h::BwdResult& r) {
  std::printf("  %s %s worst_ratio=%.3f dq=%.3e/%.3e dk=%.3e/%.3e dv=%.3e/%.3e (err_kernel/err_lowp)\n",
              r.pass ? "PASS" : "FAIL", r.desc.c_str(), r.worst_ratio, r.dq.err_kernel, r.dq.err_lowp,
              r.dk.err_kernel, r.dk.err_lowp, r.dv.err_kernel, r.dv.err_lowp);
}

void run_and_expect_pass(const Problem& p) {
  const h::BwdResult r = h::run_gpu_bwd(p);
  print_result(r);
  EXPECT_EQ(r.status, FLASH4_OK) << r.summary();
  EXPECT_TRUE(r.pass) << r.summary();
}

class GpuBwdSweep : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { FLASH4_REQUIRE_BWD_GPU(); }
};

// ---- base sweep ------------------------------------------------------------
std::vector<Case> base_cases() {
  const int shapes[][2] = {{1, 1}, {113, 203}, {239, 1}, {1023, 1024}, {1024, 1023}, {4224, 4224}};
  std::vector<Case> v;
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16})
    for (auto& s : shapes)
      for (int d : {64, 128})
        for (int causal = 0; causal < 2; ++causal) {
          const bool huge = s[0] == 4224;
          if (huge && (dt == FLASH4_DTYPE_FP16 || d != 128)) continue;
          Case c;
          Problem& p = c.p;
          p.dtype = dt;
          p.seqlen_q = s[0];
          p.seqlen_k = s[1];
          p.headdim = d;
          p.causal = causal;
          if (huge) { p.batch = 1; p.heads_q = 2; p.heads_kv = 1; }
          else if (s[0] >= 1000) { p.batch = 1; p.heads_q = 2; p.heads_kv = 2; }
          else { p.batch = 2; p.heads_q = 4; p.heads_kv = 2; }
          c.name = dname(dt) + "_" + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "_d" + std::to_string(d) +
                   (causal ? "_causal" : "");
          v.push_back(c);
        }
  return seeded(v, 101);
}
class GpuBwdBase : public GpuBwdSweep {};
TEST_P(GpuBwdBase, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdBase, ::testing::ValuesIn(base_cases()), case_name);

// ---- GQA / MQA ---------------------------------------------------------------
std::vector<Case> gqa_cases() {
  std::vector<Case> v;
  const int heads[][2] = {{1, 1}, {2, 1}, {2, 2}, {8, 1}, {8, 2}, {8, 8}};
  for (auto& hh : heads)
    for (int causal = 0; causal < 2; ++causal) {
      Case c;
      Problem& p = c.p;
      p.batch = 2; p.seqlen_q = 113; p.seqlen_k = 203; p.headdim = causal ? 128 : 64;
      p.heads_q = hh[0]; p.heads_kv = hh[1]; p.causal = causal;
      p.dtype = causal ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
      c.name = "H" + std::to_string(hh[0]) + "_" + std::to_string(hh[1]) + "_" + dname(p.dtype) + "_d" +
               std::to_string(p.headdim) + (causal ? "_causal" : "");
      v.push_back(c);
    }
  for (int hkv : {1, 2})
    for (int d : {64, 128}) {
      Case c;
      Problem& p = c.p;
      p.batch = 1; p.seqlen_q = 1024; p.seqlen_k = 1023; p.headdim = d; p.heads_q = 8; p.heads_kv = hkv;
      p.causal = d == 128;
      c.name = "H8_" + std::to_string(hkv) + "_1024x1023_d" + std::to_string(d) + (p.causal ? "_causal" : "");
      v.push_back(c);
    }
  return seeded(v, 102);
}
class GpuBwdGqa : public GpuBwdSweep {};
TEST_P(GpuBwdGqa, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdGqa, ::testing::ValuesIn(gqa_cases()), case_name);

// ---- strided layouts -----------------------------------------------------------
std::vector<Case> layout_cases() {
  std::vector<Case> v;
  int i = 0;
  for (Layout l : {Layout::kPackedQKV, Layout::kHeadMajor, Layout::kPadded})
    for (int d : {64, 128}) {
      Case c;
      Problem& p = c.p;
      p.batch = 2; p.seqlen_q = 257; p.seqlen_k = 257; p.headdim = d; p.heads_q = 4;
      p.heads_kv = l == Layout::kPackedQKV ? 4 : 2;
      p.causal = (i++ % 2) == 1;
      p.layout = l;
      p.dtype = d == 64 ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
      c.name = std::string(l == Layout::kPackedQKV ? "packed" : l == Layout::kHeadMajor ? "headmajor" : "padded") +
               "_d" + std::to_string(d) + (p.causal ? "_causal" : "");
      v.push_back(c);
    }
  return seeded(v, 103);
}
class GpuBwdLayout : public GpuBwdSweep {};
TEST_P(GpuBwdLayout, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdLayout, ::testing::ValuesIn(layout_cases()), case_name);

// ---- options and degenerate sizes ---------------------------------------------
std::vector<Case> option_cases() {
  std::vector<Case> v;
  auto add = [&](const std::string& name, Problem p) {
    Case c;
    c.name = name;
    c.p = p;
    v.push_back(c);
  };
  Problem p;
  p.batch = 2; p.seqlen_q = 300; p.seqlen_k = 190; p.heads_q = 4; p.heads_kv = 2; p.headdim = 128;
  Problem q = p;
  q.softmax_scale = 0.3; add("scale_0p3", q);
  q.softmax_scale = -0.2; q.causal = true; add("scale_neg_causal", q);
  q = p; q.input_std = 3.0; q.headdim = 64; add("std3_d64", q);
  q.causal = true; q.dtype = FLASH4_DTYPE_FP16; add("std3_d64_fp16_causal", q);
  q = p; q.seqlen_q = 0; add("sq0", q);          // dk = dv = 0
  q = p; q.seqlen_k = 0; q.causal = true; add("sk0", q);  // dq = 0
  q = p; q.seqlen_q = 5; q.seqlen_k = 700; q.causal = true; q.headdim = 64; add("sq5_sk700_causal", q);
  q = p; q.seqlen_q = 700; q.seqlen_k = 5; q.causal = true; add("sq700_sk5_causal", q);  // empty rows
  return seeded(v, 104);
}
class GpuBwdOptions : public GpuBwdSweep {};
TEST_P(GpuBwdOptions, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdOptions, ::testing::ValuesIn(option_cases()), case_name);

// ---- local windows ---------------------------------------------------------------
std::vector<Case> window_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0xb1));
  int n = 0;
  auto add = [&](int B, int sq, int sk, int d, bool causal, int left, int right, flash4_dtype dt, int hq, int hkv) {
    Case c;
    Problem& p = c.p;
    p.batch = B; p.seqlen_q = sq; p.seqlen_k = sk; p.headdim = d; p.causal = causal;
    p.window_left = left; p.window_right = right; p.dtype = dt; p.heads_q = hq; p.heads_kv = hkv;
    c.name = "w" + std::to_string(n++) + "_" + dname(dt) + "_" + std::to_string(sq) + "x" + std::to_string(sk) +
             "_d" + std::to_string(d) + (causal ? "_causal" : "") + "_l" + std::to_string(left + 1) + "_r" +
             std::to_string(right + 1);
    v.push_back(c);
  };
  const int shapes[][2] = {{1, 1}, {113, 203}, {239, 517}, {1023, 1024}, {1024, 700}};
  for (auto& s : shapes)
    for (int d : {64, 128}) {
      // Random windows as FlashAttention draws them: left, right uniform in [0, Sk).
      std::uniform_int_distribution<int> u(0, s[1] - 1);
      const bool big = s[0] >= 1000;
      const flash4_dtype dt = d == 64 ? FLASH4_DTYPE_BF16 : FLASH4_DTYPE_FP16;
      add(big ? 1 : 2, s[0], s[1], d, false, u(rng), u(rng), dt, big ? 2 : 4, big ? 1 : 2);
      add(big ? 1 : 2, s[0], s[1], d, true, u(rng), 0, dt, big ? 2 : 4, 2);  // sliding-window causal
    }
  // One-sided windows, narrow bands (keys nobody sees, rows that see nothing).
  add(2, 300, 190, 128, false, -1, 17, FLASH4_DTYPE_BF16, 4, 2);
  add(2, 300, 190, 64, false, 5, -1, FLASH4_DTYPE_BF16, 4, 2);
  add(1, 700, 300, 64, false, 0, 0, FLASH4_DTYPE_FP16, 8, 1);
  add(1, 200, 900, 128, true, 3, 0, FLASH4_DTYPE_BF16, 2, 2);
  add(1, 2100, 2100, 128, false, 256, 256, FLASH4_DTYPE_BF16, 2, 1);
  return seeded(v, 106);
}
class GpuBwdWindow : public GpuBwdSweep {};
TEST_P(GpuBwdWindow, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdWindow, ::testing::ValuesIn(window_cases()), case_name);

// ---- softcap ---------------------------------------------------------------------
std::vector<Case> softcap_cases() {
  std::vector<Case> v;
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16})
    for (int d : {64, 128, 256})
      for (int causal = 0; causal < 2; ++causal) {
        Case c;
        Problem& p = c.p;
        p.batch = 2; p.seqlen_q = 239; p.seqlen_k = 517; p.heads_q = 4; p.heads_kv = 2; p.headdim = d;
        p.dtype = dt; p.causal = causal; p.softcap = dt == FLASH4_DTYPE_BF16 ? 15.0 : 30.0; p.input_std = 2.0;
        c.name = dname(dt) + "_d" + std::to_string(d) + (causal ? "_causal" : "");
        v.push_back(c);
      }
  Case c;
  c.name = "bf16_d128_1023x1024_window";
  c.p.batch = 1; c.p.seqlen_q = 1023; c.p.seqlen_k = 1024; c.p.heads_q = 2; c.p.heads_kv = 1; c.p.headdim = 128;
  c.p.softcap = 10.0; c.p.input_std = 2.0; c.p.window_left = 100; c.p.window_right = 40;
  v.push_back(c);
  return seeded(v, 107);
}
class GpuBwdSoftcap : public GpuBwdSweep {};
TEST_P(GpuBwdSoftcap, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdSoftcap, ::testing::ValuesIn(softcap_cases()), case_name);

// ---- varlen and seqused_k -------------------------------------------------------------
std::vector<Case> varlen_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0xb2));
  int n = 0;
  auto add = [&](int B, int mq, int mk, int d, bool causal, int left, int right, bool seqused, flash4_dtype dt,
                 int hq, int hkv, double cap) {
    Case c;
    Problem& p = c.p;
    h::random_lengths(&p, B, mq, mk, false, seqused, rng);
    p.headdim = d; p.causal = causal; p.window_left = left; p.window_right = right; p.dtype = dt;
    p.heads_q = hq; p.heads_kv = hkv; p.softcap = cap;
    if (cap > 0) p.input_std = 2.0;
    c.name = "v" + std::to_string(n++) + "_" + dname(dt) + "_d" + std::to_string(d) + (causal ? "_causal" : "") +
             (left >= 0 || right >= 0 ? "_window" : "") + (seqused ? "_seqused" : "") + (cap > 0 ? "_softcap" : "");
    v.push_back(c);
  };
  for (int d : {64, 128}) {
    add(6, 300, 400, d, false, -1, -1, false, FLASH4_DTYPE_BF16, 4, 2, 0);
    add(6, 300, 400, d, true, -1, -1, true, FLASH4_DTYPE_FP16, 4, 1, 0);
    add(5, 500, 300, d, false, 40, 70, true, FLASH4_DTYPE_BF16, 2, 2, 0);
    add(4, 700, 700, d, true, 100, 0, false, FLASH4_DTYPE_BF16, 4, 2, 20.0);
  }
  {  // one long sequence with seqused_k, and sequences with no keys at all
    Case c;
    c.name = "long_seqused_d128";
    c.p.varlen = true; c.p.batch = 2; c.p.seqlens_q = {1500, 3}; c.p.seqlens_k = {1700, 0}; c.p.seqused_k = {1234, 0};
    c.p.headdim = 128; c.p.heads_q = 2; c.p.heads_kv = 1;
    v.push_back(c);
    c.name = "no_keys_d64";
    c.p.seqlens_q = {5, 17, 1}; c.p.seqlens_k = {0, 0, 0}; c.p.seqused_k.clear(); c.p.batch = 3; c.p.headdim = 64;
    v.push_back(c);
  }
  {  // batched with seqused_k (K / V through ragged maps, dK / dV plain)
    Case c;
    c.name = "seqused_batched_d64";
    c.p.batch = 2; c.p.seqlen_q = 300; c.p.seqlen_k = 190; c.p.heads_q = 4; c.p.heads_kv = 2; c.p.headdim = 64;
    c.p.seqused_k = {0, 150};
    v.push_back(c);
    c.name = "seqused_batched_causal_d128";
    c.p.seqused_k = {190, 37}; c.p.causal = true; c.p.headdim = 128;
    v.push_back(c);
  }
  return seeded(v, 108);
}
class GpuBwdVarlen : public GpuBwdSweep {};
TEST_P(GpuBwdVarlen, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdVarlen, ::testing::ValuesIn(varlen_cases()), case_name);

// ---- head dims between the kernels' (TMA zero-fills the extra columns) ----------
std::vector<Case> headdim_cases() {
  std::vector<Case> v;
  for (int d : {8, 40, 72, 96, 120, 136, 192, 200, 256})
    for (int causal = 0; causal < 2; ++causal) {
      Case c;
      Problem& p = c.p;
      p.batch = 2; p.seqlen_q = 113; p.seqlen_k = 203; p.heads_q = 4; p.heads_kv = 2; p.headdim = d;
      p.causal = causal; p.dtype = causal ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
      c.name = dname(p.dtype) + "_d" + std::to_string(d) + (causal ? "_causal" : "");
      v.push_back(c);
    }
  Case c;
  c.name = "bf16_d96_1023x1024_gqa";
  c.p.batch = 1; c.p.seqlen_q = 1023; c.p.seqlen_k = 1024; c.p.heads_q = 4; c.p.heads_kv = 1; c.p.headdim = 96;
  v.push_back(c);
  c.name = "bf16_d96_padded_window";
  c.p.layout = Layout::kPadded; c.p.seqlen_q = 300; c.p.seqlen_k = 300; c.p.window_left = 30; c.p.window_right = 10;
  v.push_back(c);
  // The head-dim-256 kernel (80 keys per CTA, transposed dK / dV / dQ GEMMs).
  auto base = [](int sq, int sk, int d, int hq, int hkv) {
    Case k;
    k.p.batch = 1; k.p.seqlen_q = sq; k.p.seqlen_k = sk; k.p.headdim = d; k.p.heads_q = hq; k.p.heads_kv = hkv;
    return k;
  };
  c = base(1023, 1024, 256, 4, 1); c.name = "bf16_d256_1023x1024_gqa"; v.push_back(c);
  c = base(1024, 700, 256, 2, 2); c.name = "fp16_d256_1024x700_causal"; c.p.causal = true;
  c.p.dtype = FLASH4_DTYPE_FP16; v.push_back(c);  // rows that see no key
  c = base(1, 1, 256, 2, 1); c.name = "bf16_d256_1x1"; v.push_back(c);
  c = base(239, 517, 192, 4, 2); c.name = "bf16_d192_239x517_window"; c.p.batch = 2;
  c.p.window_left = 77; c.p.window_right = 130; v.push_back(c);
  c = base(700, 700, 256, 2, 1); c.name = "fp16_d256_700_causal_left100"; c.p.causal = true;
  c.p.window_left = 100; c.p.dtype = FLASH4_DTYPE_FP16; v.push_back(c);
  c = base(300, 190, 256, 4, 2); c.name = "bf16_d256_padded_std3_scale_neg"; c.p.batch = 2;
  c.p.layout = Layout::kPadded; c.p.input_std = 3.0; c.p.softmax_scale = -0.08; v.push_back(c);
  c = base(4224, 4224, 256, 1, 1); c.name = "bf16_d256_4224_causal"; c.p.causal = true; v.push_back(c);
  c = base(239, 517, 256, 4, 2); c.name = "bf16_d256_softcap_causal"; c.p.batch = 2; c.p.causal = true;
  c.p.softcap = 15.0; c.p.input_std = 2.0; v.push_back(c);
  c = base(1023, 1024, 192, 2, 1); c.name = "fp16_d192_softcap_window"; c.p.dtype = FLASH4_DTYPE_FP16;
  c.p.softcap = 30.0; c.p.input_std = 2.0; c.p.window_left = 100; c.p.window_right = 40; v.push_back(c);
  c = base(300, 0, 256, 2, 1); c.name = "bf16_d256_sk0"; v.push_back(c);  // dq = 0
  c = base(0, 300, 256, 2, 1); c.name = "bf16_d256_sq0"; v.push_back(c);  // dk = dv = 0
  {
    std::mt19937_64 rng(h::mix_seed(base_seed(), 0xb3));
    c = Case{}; c.name = "varlen_bf16_d256_seqused";
    h::random_lengths(&c.p, 5, 400, 500, false, true, rng);
    c.p.headdim = 256; c.p.heads_q = 4; c.p.heads_kv = 2;
    v.push_back(c);
    c = Case{}; c.name = "varlen_fp16_d192_causal";
    h::random_lengths(&c.p, 4, 300, 300, false, false, rng);
    c.p.headdim = 192; c.p.heads_q = 2; c.p.heads_kv = 1; c.p.causal = true; c.p.dtype = FLASH4_DTYPE_FP16;
    v.push_back(c);
  }
  return seeded(v, 109);
}
class GpuBwdHeadDim : public GpuBwdSweep {};
TEST_P(GpuBwdHeadDim, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdHeadDim, ::testing::ValuesIn(headdim_cases()), case_name);

bool all_u16(const std::vector<uint16_t>& v, uint16_t x) {
  for (uint16_t e : v)
    if (e != x) return false;
  return true;
}

// ---- batch 0 ------------------------------------------------------------------
TEST(GpuBwdEmpty, BatchZeroWritesNothing) {
  FLASH4_REQUIRE_BWD_GPU();
  Problem p;
  p.batch = 0; p.seqlen_q = 64; p.seqlen_k = 64; p.headdim = 64;
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc);
  h::Stream stream;
  dc.poison(stream.get());
  std::string msg;
  EXPECT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdRawOutput raw = dc.download();
  EXPECT_TRUE(all_u16(raw.dq_alloc, h::kPoison16) && all_u16(raw.dk_alloc, h::kPoison16) &&
              all_u16(raw.dv_alloc, h::kPoison16));
}

// ---- repeat: same inputs twice --------------------------------------------------
// dq is summed over key blocks by fp32 reduce-adds in arrival order, so two
// runs may differ by fp32 reordering noise, which the rounding to 16 bits can
// turn into one unit in the last place, or (on elements much smaller than the
// partial sums they come from) into a few units of that small element. The
// bound per element: 1 ulp of the element + 2^-16 * max|dq| (about 256 fp32
// roundings at the tensor's scale). A missed or doubled partial sum is of the
// order of dq itself and fails it by orders of magnitude.
struct RepeatStats {
  bool dk_equal = true, dv_equal = true;
  int64_t dq_diff = 0;          // elements that differ
  int64_t dq_over = 0;          // elements over the bound
  double dq_max_ulp = 0;        // largest difference in ulps of the element
  double dq_max_rel = 0;        // largest difference / max|dq|
};
RepeatStats compare_runs(flash4_dtype dt, const h::BwdRawOutput& a, const h::BwdRawOutput& b) {
  RepeatStats s;
  s.dk_equal = a.dk_alloc == b.dk_alloc;
  s.dv_equal = a.dv_alloc == b.dv_alloc;
  if (a.dq_alloc.size() != b.dq_alloc.size()) {
    s.dq_over = 1;
    return s;
  }
  double scale = 0;
  for (uint16_t x : a.dq_alloc) {
    const double v = h::half_to_float(dt, x);
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  }
  for (size_t i = 0; i < a.dq_alloc.size(); ++i) {
    if (a.dq_alloc[i] == b.dq_alloc[i]) continue;
    ++s.dq_diff;
    const double x = h::half_to_float(dt, a.dq_alloc[i]), y = h::half_to_float(dt, b.dq_alloc[i]);
    const double ulps = h::ulp_distance(dt, a.dq_alloc[i], b.dq_alloc[i]);
    const double diff = std::fabs(x - y);
    s.dq_max_ulp = std::max(s.dq_max_ulp, ulps);
    if (scale > 0) s.dq_max_rel = std::max(s.dq_max_rel, diff / scale);
    const double one_ulp = ulps > 0 ? diff / ulps : 0;
    if (!(diff <= one_ulp + std::ldexp(scale, -16))) ++s.dq_over;
  }
  return s;
}

void expect_same(const RepeatStats& s, const std::string& what) {
  std::printf("  %s: dk %s, dv %s, dq: %lld elements differ, max %.1f ulp, max |diff|/max|dq| = %.2e\n",
              what.c_str(), s.dk_equal ? "equal" : "DIFFER", s.dv_equal ? "equal" : "DIFFER", (long long)s.dq_diff,
              s.dq_max_ulp, s.dq_max_rel);
  EXPECT_TRUE(s.dk_equal) << what << ": dk differs";
  EXPECT_TRUE(s.dv_equal) << what << ": dv differs";
  EXPECT_EQ(s.dq_over, 0) << what << ": dq differs by more than reordered fp32 sums can";
}

void expect_repeatable(const Problem& p) {
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc);
  h::Stream stream;
  std::vector<h::BwdRawOutput> runs;
  for (int r = 0; r < 3; ++r) {
    dc.poison(stream.get());
    std::string msg;
    ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    runs.push_back(dc.download());
  }
  const h::BwdResult res = h::evaluate_bwd(bc, h::run_bwd_reference(bc), runs[0], FLASH4_OK, "");
  print_result(res);
  EXPECT_TRUE(res.pass) << res.summary();
  for (int r = 1; r < 3; ++r)
    expect_same(compare_runs(p.dtype, runs[0], runs[size_t(r)]),
                "run " + std::to_string(r) + " vs 0 [" + h::describe(p) + "]");
}

TEST(GpuBwdRepeat, SameInputsSameGradients) {
  FLASH4_REQUIRE_BWD_GPU();
  Problem p;
  p.batch = 2; p.seqlen_q = 1023; p.seqlen_k = 1024; p.heads_q = 4; p.heads_kv = 2; p.headdim = 128;
  p.seed = h::mix_seed(base_seed(), 2001);
  expect_repeatable(p);
  p.headdim = 64; p.causal = true; p.heads_kv = 1; p.dtype = FLASH4_DTYPE_FP16;
  p.seed = h::mix_seed(base_seed(), 2002);
  expect_repeatable(p);
}

// ---- CUDA graph capture ------------------------------------------------------------
TEST(GpuBwdGraph, CaptureAndReplay) {
  FLASH4_REQUIRE_BWD_GPU();
  Problem p;
  p.batch = 2; p.seqlen_q = 777; p.seqlen_k = 1000; p.heads_q = 4; p.heads_kv = 2; p.headdim = 128;
  p.causal = true; p.seed = h::mix_seed(base_seed(), 2101);
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc);
  h::Stream stream;
  dc.poison(stream.get());
  std::string msg;
  ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdRawOutput direct = dc.download();
  const h::BwdResult r = h::evaluate_bwd(bc, h::run_bwd_reference(bc), direct, FLASH4_OK, "");
  EXPECT_TRUE(r.pass) << r.summary();

  // Global capture mode: a synchronizing or allocating call inside flash4_bwd
  // invalidates the capture.
  h::Graph graph;
  FLASH4_HARNESS_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flash4_status st = dc.launch(stream.get(), &msg);
  const cudaError_t end = cudaStreamEndCapture(stream.get(), graph.graph_ptr());
  ASSERT_EQ(st, FLASH4_OK) << "flash4_bwd during capture: " << msg;
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  size_t nodes = 0;
  FLASH4_HARNESS_CUDA(cudaGraphGetNodes(graph.graph(), nullptr, &nodes));
  EXPECT_EQ(nodes, 3u) << "expected preprocess, main and postprocess kernels";
  graph.instantiate();
  for (int replay = 0; replay < 2; ++replay) {
    dc.poison(stream.get());
    graph.launch(stream.get());
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    expect_same(compare_runs(p.dtype, direct, dc.download()), "graph replay " + std::to_string(replay));
  }
}

// ---- deterministic mode -------------------------------------------------------------
// deterministic = 1 sums dq's fp32 partials in a fixed order of key blocks
// (src/sm90/bwd_kernel.cuh), so every run gives the same bits (FlashAttention's
// test: 50 runs). Shapes: GQA and MQA, causal with Sq < Sk and Sq > Sk (query
// blocks no key reaches), odd lengths, and more CTAs than SMs.
std::vector<Case> deterministic_cases() {
  std::vector<Case> v;
  auto add = [&](const std::string& name, int B, int sq, int sk, int hq, int hkv, int d, bool causal,
                 flash4_dtype dt) {
    Case c;
    c.name = name;
    Problem& p = c.p;
    p.batch = B; p.seqlen_q = sq; p.seqlen_k = sk; p.heads_q = hq; p.heads_kv = hkv; p.headdim = d;
    p.causal = causal; p.dtype = dt;
    v.push_back(c);
  };
  add("bf16_d64_gqa_1023x1024", 2, 1023, 1024, 4, 2, 64, false, FLASH4_DTYPE_BF16);
  add("fp16_d128_gqa_causal_777x1000", 2, 777, 1000, 4, 2, 128, true, FLASH4_DTYPE_FP16);
  add("bf16_d64_mqa_causal_700x300", 1, 700, 300, 8, 1, 64, true, FLASH4_DTYPE_BF16);
  add("bf16_d128_causal_1x1000", 2, 1, 1000, 2, 2, 128, true, FLASH4_DTYPE_BF16);
  add("bf16_d128_gqa_2100x2100", 1, 2100, 2100, 4, 1, 128, false, FLASH4_DTYPE_BF16);
  // 8 key blocks x 40 (b, h_kv) = 320 CTAs: more than the SMs of one GPU.
  add("fp16_d64_gqa_causal_many_ctas", 4, 513, 1000, 20, 10, 64, true, FLASH4_DTYPE_FP16);
  add("bf16_d64_sq0", 2, 0, 190, 4, 2, 64, false, FLASH4_DTYPE_BF16);  // dk = dv = 0
  add("bf16_d128_sk0_causal", 2, 300, 0, 4, 2, 128, true, FLASH4_DTYPE_BF16);  // dq = 0
  // Windows: the key blocks adding into a query block start after block 0.
  add("bf16_d128_window_2100x2100", 1, 2100, 2100, 4, 2, 128, false, FLASH4_DTYPE_BF16);
  v.back().p.window_left = 300; v.back().p.window_right = 200;
  add("fp16_d64_causal_left_1000x1300", 2, 1000, 1300, 4, 2, 64, true, FLASH4_DTYPE_FP16);
  v.back().p.window_left = 257;
  add("bf16_d96_softcap_700x900", 2, 700, 900, 2, 1, 96, false, FLASH4_DTYPE_BF16);
  v.back().p.softcap = 20.0; v.back().p.input_std = 2.0;
  // Unmasked: rotated order (nm >= nk: integer and non-integer ratios, varlen), and not (nm < nk).
  add("fp16_d128_gqa_300x1000", 2, 300, 1000, 4, 2, 128, false, FLASH4_DTYPE_FP16);
  add("bf16_d64_1100x1024", 2, 1100, 1024, 4, 2, 64, false, FLASH4_DTYPE_BF16);  // nm = nk + 1
  // Head dim 256 kernel (consumers wait for their turn; 80-key blocks): rotated and ascending
  // order, causal, a window with softcap, d192 (a panel without data).
  add("bf16_d256_gqa_300x1000", 2, 300, 1000, 4, 2, 256, false, FLASH4_DTYPE_BF16);
  add("fp16_d256_causal_1023x1024", 1, 1023, 1024, 2, 1, 256, true, FLASH4_DTYPE_FP16);
  add("bf16_d192_window_softcap_700x900", 2, 700, 900, 2, 1, 192, false, FLASH4_DTYPE_BF16);
  v.back().p.window_left = 200; v.back().p.window_right = 100; v.back().p.softcap = 20.0;
  v.back().p.input_std = 2.0;
  add("bf16_d256_mqa_2100x2100", 1, 2100, 2100, 4, 1, 256, false, FLASH4_DTYPE_BF16);
  // 80-key d256 kernel with softcap and a causal left window (first adder not block 0).
  add("fp16_d256_causal_left_softcap_900x1100", 2, 900, 1100, 2, 1, 256, true, FLASH4_DTYPE_FP16);
  v.back().p.window_left = 300; v.back().p.softcap = 30.0; v.back().p.input_std = 2.0;
  {
    Case c;
    c.name = "bf16_d128_varlen_seqused";
    std::mt19937_64 rng(h::mix_seed(base_seed(), 0xb4));
    h::random_lengths(&c.p, 5, 1300, 700, false, true, rng);
    c.p.heads_q = 4; c.p.heads_kv = 1; c.p.headdim = 128;
    v.push_back(c);
  }
  {
    // Sequence 0 empty: the preprocess CTA that resets the CTA ticket counter
    // has no rows of its own (a stale counter sent CTAs out of range).
    Case c;
    c.name = "bf16_d128_varlen_first_empty";
    c.p.varlen = true; c.p.batch = 3; c.p.seqlens_q = {0, 300, 129}; c.p.seqlens_k = {200, 400, 0};
    c.p.heads_q = 4; c.p.heads_kv = 2; c.p.headdim = 128;
    v.push_back(c);
  }
  {
    Case c;
    c.name = "bf16_d64_varlen_seqused_causal";
    std::mt19937_64 rng(h::mix_seed(base_seed(), 0xb3));
    h::random_lengths(&c.p, 6, 900, 1100, false, true, rng);
    c.p.heads_q = 4; c.p.heads_kv = 2; c.p.headdim = 64; c.p.causal = true;
    v.push_back(c);
  }
  return seeded(v, 105);
}

std::string first_difference(const h::BwdRawOutput& a, const h::BwdRawOutput& b) {
  const std::vector<uint16_t>* x[3] = {&a.dq_alloc, &a.dk_alloc, &a.dv_alloc};
  const std::vector<uint16_t>* y[3] = {&b.dq_alloc, &b.dk_alloc, &b.dv_alloc};
  const char* names[3] = {"dq", "dk", "dv"};
  std::string out;
  for (int t = 0; t < 3; ++t) {
    if (x[t]->size() != y[t]->size()) {
      out += std::string(" ") + names[t] + ": sizes differ";
      continue;
    }
    int64_t n = 0, first = -1;
    for (size_t i = 0; i < x[t]->size(); ++i)
      if ((*x[t])[i] != (*y[t])[i]) {
        if (first < 0) first = int64_t(i);
        ++n;
      }
    if (n > 0)
      out += std::string(" ") + names[t] + ": " + std::to_string(n) + " elements differ (first at " +
             std::to_string(first) + ")";
  }
  return out;
}

class GpuBwdDeterministic : public GpuBwdSweep {};
TEST_P(GpuBwdDeterministic, BitwiseOver50RunsAndAccurate) {
  const Problem& p = GetParam().p;
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc, /*deterministic=*/true);
  ASSERT_EQ(dc.args.deterministic, 1);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  ASSERT_EQ(flash4_bwd_supported(&dc.args, -1, &info), FLASH4_OK) << flash4_last_error();
  ASSERT_NE(info.path, FLASH4_PATH_NONE) << "deterministic backward refused: " << info.reason;
  EXPECT_TRUE(contains(info.reason, "deterministic")) << info.reason;
  h::Stream stream;
  constexpr int kRuns = 50;
  h::BwdRawOutput first;
  int differing = 0;
  for (int r = 0; r < kRuns; ++r) {
    dc.poison(stream.get());
    std::string msg;
    ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << "run " << r << ": " << msg;
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    h::BwdRawOutput raw = dc.download();
    if (r == 0) {
      first = std::move(raw);
      continue;
    }
    const std::string diff = first_difference(first, raw);
    if (!diff.empty() && differing++ < 3) ADD_FAILURE() << "run " << r << " vs run 0:" << diff;
  }
  std::printf("  %s: %d of %d runs differ from run 0\n", h::describe(p).c_str(), differing, kRuns - 1);
  EXPECT_EQ(differing, 0) << "deterministic mode is not bitwise reproducible";
  const h::BwdReference ref = h::run_bwd_reference(bc);
  const h::BwdResult res = h::evaluate_bwd(bc, ref, first, FLASH4_OK, "");
  print_result(res);
  EXPECT_TRUE(res.pass) << res.summary();

  // The default mode on the same inputs still passes.
  h::BwdDeviceCase plain(bc, /*deterministic=*/false);
  plain.poison(stream.get());
  std::string msg;
  ASSERT_EQ(plain.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdRawOutput plain_raw = plain.download();
  const h::BwdResult plain_res = h::evaluate_bwd(bc, ref, plain_raw, FLASH4_OK, "");
  print_result(plain_res);
  EXPECT_TRUE(plain_res.pass) << "default mode: " << plain_res.summary();
  // (Deterministic CTAs may walk the query blocks in another order than the
  // default's, rotated or descending: dk / dv sums reordered, so no bitwise
  // comparison between the modes.)
}
INSTANTIATE_TEST_SUITE_P(GpuBwd, GpuBwdDeterministic, ::testing::ValuesIn(deterministic_cases()), case_name);

// Replays of a captured deterministic call give the run's bits: the
// semaphores are reset by each call's own preprocess, not by the caller.
TEST(GpuBwdDeterministicGraph, ReplaysGiveTheRunsBitsAndWorkspaceErrors) {
  FLASH4_REQUIRE_BWD_GPU();
  Problem p;
  p.batch = 2; p.seqlen_q = 555; p.seqlen_k = 901; p.heads_q = 6; p.heads_kv = 2; p.headdim = 128;
  p.causal = true; p.seed = h::mix_seed(base_seed(), 2301);
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc, /*deterministic=*/true);
  h::Stream stream;
  dc.poison(stream.get());
  std::string msg;
  ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdRawOutput direct = dc.download();
  const h::BwdResult r = h::evaluate_bwd(bc, h::run_bwd_reference(bc), direct, FLASH4_OK, "");
  EXPECT_TRUE(r.pass) << r.summary();

  h::Graph graph;
  FLASH4_HARNESS_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flash4_status st = dc.launch(stream.get(), &msg);
  const cudaError_t end = cudaStreamEndCapture(stream.get(), graph.graph_ptr());
  ASSERT_EQ(st, FLASH4_OK) << "flash4_bwd during capture: " << msg;
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  size_t nodes = 0;
  FLASH4_HARNESS_CUDA(cudaGraphGetNodes(graph.graph(), nullptr, &nodes));
  EXPECT_EQ(nodes, 3u) << "expected preprocess, main and postprocess kernels";
  graph.instantiate();
  for (int replay = 0; replay < 3; ++replay) {
    dc.poison(stream.get());
    graph.launch(stream.get());
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    const std::string diff = first_difference(direct, dc.download());
    EXPECT_TRUE(diff.empty()) << "graph replay " << replay << " vs direct run:" << diff;
  }

  // The deterministic workspace is larger; one byte short is refused.
  h::BwdDeviceCase plain(bc, /*deterministic=*/false);
  ASSERT_GT(dc.workspace_bytes(), plain.workspace_bytes());
  dc.poison(stream.get());
  EXPECT_EQ(dc.launch(stream.get(), &msg, int64_t(dc.workspace_bytes()) - 1), FLASH4_ERROR_WORKSPACE) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdRawOutput raw = dc.download();
  EXPECT_TRUE(all_u16(raw.dq_alloc, h::kPoison16) && all_u16(raw.dk_alloc, h::kPoison16) &&
              all_u16(raw.dv_alloc, h::kPoison16))
      << "a refused call wrote gradients";
}

// The workspace of deterministic = 1 (no GPU needed): the default layout,
// then at the next multiple of 16 bytes a 16-byte ticket word group and one
// int32 per 32 padded query rows of each head (2 semaphores per 64 rows).
TEST(GpuBwdDeterministicWorkspace, HoldsTheSemaphores) {
  for (int sq : {1, 128, 129, 1000}) {
    Problem p;
    p.batch = 3; p.seqlen_q = sq; p.seqlen_k = 77; p.heads_q = 6; p.heads_kv = 2; p.headdim = 64;
    p.causal = true;
    h::BwdHostCase bc = h::make_bwd_case(p);
    std::vector<void*> bases;
    for (auto& a : bc.hc.allocs) bases.push_back(a.data());
    flash4_bwd_args a = h::make_bwd_args(bc, bases, bc.lse.data(), nullptr, nullptr, nullptr);
    size_t plain = 0, det = 0;
    ASSERT_EQ(flash4_bwd_workspace_size(&a, &plain), FLASH4_OK) << flash4_last_error();
    a.deterministic = 1;
    ASSERT_EQ(flash4_bwd_workspace_size(&a, &det), FLASH4_OK) << flash4_last_error();
    const size_t sq_pad = (size_t(sq) + 127) / 128 * 128;
    EXPECT_EQ(det, (plain + 15) / 16 * 16 + 16 + 4 * size_t(p.batch) * size_t(p.heads_q) * (sq_pad / 32))
        << "Sq=" << sq;
  }
}

// ---- unsupported options and workspace errors ------------------------------------
TEST(GpuBwdUnsupported, SaysWhyAndWritesNothing) {
  FLASH4_REQUIRE_BWD_GPU();
  struct Variant {
    const char* what;
    const char* reason_part;  // expected in the message
    void (*apply)(Problem*);
    void (*apply_args)(flash4_bwd_args*);
  };
  const Variant variants[] = {
      {"forced portable path", "portable", [](Problem* p) { p->path = FLASH4_PATH_PORTABLE; }, nullptr},
  };
  h::Stream stream;
  for (const Variant& v : variants) {
    Problem p;
    p.batch = 2; p.seqlen_q = 100; p.seqlen_k = 120; p.heads_q = 2; p.heads_kv = 1; p.headdim = 64;
    p.seed = h::mix_seed(base_seed(), 2201);
    if (v.apply) v.apply(&p);
    h::BwdHostCase bc = h::make_bwd_case(p);
    h::BwdDeviceCase dc(bc);
    if (v.apply_args) v.apply_args(&dc.args);
    flash4_support info;
    std::memset(&info, 0, sizeof info);
    ASSERT_EQ(flash4_bwd_supported(&dc.args, -1, &info), FLASH4_OK) << v.what << ": " << flash4_last_error();
    EXPECT_EQ(info.path, FLASH4_PATH_NONE) << v.what << ": " << info.reason;
    EXPECT_TRUE(contains(info.reason, v.reason_part)) << v.what << ": " << info.reason;
    dc.poison(stream.get());
    std::string msg;
    const flash4_status st = dc.launch(stream.get(), &msg);
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    std::printf("  %s -> %s: %s\n", v.what, flash4_status_string(st), msg.c_str());
    EXPECT_EQ(st, FLASH4_ERROR_NOT_SUPPORTED) << v.what << ": " << msg;
    EXPECT_TRUE(contains(msg, v.reason_part)) << v.what << ": " << msg;
    const h::BwdRawOutput raw = dc.download();
    EXPECT_TRUE(all_u16(raw.dq_alloc, h::kPoison16) && all_u16(raw.dk_alloc, h::kPoison16) &&
                all_u16(raw.dv_alloc, h::kPoison16))
        << v.what << ": a NOT_SUPPORTED call wrote gradients";
  }

  // Workspace: too small, NULL, misaligned -> FLASH4_ERROR_WORKSPACE, nothing written;
  // then the right workspace on the same buffers runs and passes (the control).
  Problem p;
  p.batch = 1; p.seqlen_q = 200; p.seqlen_k = 130; p.heads_q = 2; p.heads_kv = 2; p.headdim = 128;
  p.seed = h::mix_seed(base_seed(), 2202);
  h::BwdHostCase bc = h::make_bwd_case(p);
  h::BwdDeviceCase dc(bc);
  ASSERT_GT(dc.workspace_bytes(), 0u);
  const size_t need = dc.workspace_bytes();
  struct WsCase {
    const char* what;
    void* ptr;
    size_t bytes;
  };
  const WsCase ws_cases[] = {
      {"one byte short", dc.workspace(), need - 1},
      {"zero bytes", dc.workspace(), 0},
      {"NULL pointer", nullptr, need},
      {"misaligned pointer", static_cast<char*>(dc.workspace()) + 4, need},
  };
  for (const WsCase& w : ws_cases) {
    dc.poison(stream.get());
    const flash4_status st = flash4_bwd(&dc.args, w.ptr, w.bytes, reinterpret_cast<flash4_stream>(stream.get()));
    const std::string msg = flash4_last_error();
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    EXPECT_EQ(st, FLASH4_ERROR_WORKSPACE) << w.what << ": " << msg;
    EXPECT_TRUE(contains(msg, "workspace")) << w.what << ": " << msg;
    const h::BwdRawOutput raw = dc.download();
    EXPECT_TRUE(all_u16(raw.dq_alloc, h::kPoison16) && all_u16(raw.dk_alloc, h::kPoison16) &&
                all_u16(raw.dv_alloc, h::kPoison16))
        << w.what << ": a refused call wrote gradients";
  }
  dc.poison(stream.get());
  std::string msg;
  ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::BwdResult r = h::evaluate_bwd(bc, h::run_bwd_reference(bc), dc.download(), FLASH4_OK, "");
  EXPECT_TRUE(r.pass) << r.summary();
}

// ---------------------------------------------------------------------------
// GpuBwdHarness: the backward rule on the CPU (no GPU needed). Correct
// simulated gradients pass, each kind of defect fails.
// ---------------------------------------------------------------------------
std::vector<Problem> harness_problems() {
  std::vector<Problem> v;
  Problem p;
  p.batch = 2; p.seqlen_q = 67; p.seqlen_k = 91; p.heads_q = 4; p.heads_kv = 2; p.headdim = 40;
  v.push_back(p);  // dense, GQA
  p.layout = Layout::kPadded; p.dtype = FLASH4_DTYPE_FP16; p.causal = true;
  v.push_back(p);
  // Keys nobody sees (window), rows that see nothing are not possible here.
  p.layout = Layout::kHeadMajor; p.dtype = FLASH4_DTYPE_BF16; p.causal = false; p.window_left = 5;
  p.window_right = 0; p.seqlen_q = 20; p.seqlen_k = 60;
  v.push_back(p);
  // Rows that see nothing (Sq > Sk, causal).
  Problem q;
  q.batch = 1; q.seqlen_q = 90; q.seqlen_k = 30; q.heads_q = 2; q.heads_kv = 1; q.headdim = 32; q.causal = true;
  v.push_back(q);
  for (size_t i = 0; i < v.size(); ++i) v[i].seed = h::mix_seed(base_seed(), 6000 + i);
  return v;
}

std::vector<uint16_t> rounded(flash4_dtype dt, const std::vector<double>& x) {
  std::vector<uint16_t> o(x.size());
  for (size_t i = 0; i < x.size(); ++i) o[i] = h::float_to_half(dt, float(x[i]));
  return o;
}

TEST(GpuBwdHarness, CorrectGradientsPass) {
  for (const Problem& p : harness_problems()) {
    h::BwdHostCase bc = h::make_bwd_case(p);
    const h::BwdReference ref = h::run_bwd_reference(bc);
    // The LOWP reference as the kernel: ratio 1 for every gradient.
    h::BwdResult r = h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, ref.dq_lowp, ref.dk_lowp, ref.dv_lowp),
                                     FLASH4_OK, "");
    EXPECT_TRUE(r.pass) << r.summary();
    EXPECT_EQ(r.dq.err_kernel, r.dq.err_lowp) << r.summary();
    EXPECT_GT(r.dk.err_lowp, 0.0) << r.summary();
    // The correctly rounded FP64 gradients.
    r = h::evaluate_bwd(bc, ref,
                        h::simulated_bwd_output(bc, rounded(p.dtype, ref.dq64), rounded(p.dtype, ref.dk64),
                                                rounded(p.dtype, ref.dv64)),
                        FLASH4_OK, "");
    EXPECT_TRUE(r.pass) << r.summary();
    EXPECT_LE(r.dv.err_kernel, r.dv.err_lowp) << r.summary();
  }
}

TEST(GpuBwdHarness, DefectsFail) {
  int saw_empty_rows = 0, saw_unseen_keys = 0;
  for (const Problem& p : harness_problems()) {
    h::BwdHostCase bc = h::make_bwd_case(p);
    const h::BwdReference ref = h::run_bwd_reference(bc);
    const std::vector<uint16_t> dq = rounded(p.dtype, ref.dq64), dk = rounded(p.dtype, ref.dk64),
                                dv = rounded(p.dtype, ref.dv64);
    const h::BwdResult base = h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, dq, dk, dv), FLASH4_OK, "");
    ASSERT_TRUE(base.pass) << base.summary();
    // One element of each gradient just over its tolerance.
    for (int t = 0; t < 3; ++t) {
      std::vector<uint16_t> g[3] = {dq, dk, dv};
      const std::vector<double>& r64 = t == 0 ? ref.dq64 : t == 1 ? ref.dk64 : ref.dv64;
      const double tol = t == 0 ? base.dq.tol : t == 1 ? base.dk.tol : base.dv.tol;
      size_t i = 0;
      while (i < r64.size() && r64[i] == 0.0) ++i;
      ASSERT_LT(i, r64.size());
      g[t][i] = h::float_to_half(p.dtype, float(r64[i] + 1.5 * tol + 1e-3));
      const h::BwdResult r = h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, g[0], g[1], g[2]), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << "gradient " << t << " perturbed: " << r.summary();
    }
    // One element never written, one write past the end of a view.
    {
      h::BwdRawOutput raw = h::simulated_bwd_output(bc, dq, dk, dv);
      raw.dk_alloc[size_t(bc.dk.at(bc.hc.rows_k - 1, p.heads_kv - 1, p.headdim - 1, bc.hc.k_rows_per_batch()))] =
          h::kPoison16;
      h::BwdResult r = h::evaluate_bwd(bc, ref, raw, FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.dk.nan, 1) << r.summary();
      raw = h::simulated_bwd_output(bc, dq, dk, dv);
      raw.dq_alloc.back() = 0;
      raw.dv_alloc.front() = 0;
      r = h::evaluate_bwd(bc, ref, raw, FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.dq.guard, 1) << r.summary();
      EXPECT_EQ(r.dv.guard, 1) << r.summary();
    }
    // A tiny non-zero gradient where nothing is seen.
    if (base.dq.empty > 0) {
      ++saw_empty_rows;
      std::vector<uint16_t> g = dq;
      for (int64_t i = 0; i < bc.hc.sq[0]; ++i) {
        const double l = bc.lse64[size_t(bc.hc.lse_index(0, i, 0))];
        if (std::isinf(l)) {
          g[size_t(bc.hc.out_index(bc.hc.q_start[0] + i, 0, 0))] = h::float_to_half(p.dtype, 1e-6f);
          break;
        }
      }
      const h::BwdResult r = h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, g, dk, dv), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.dq.empty_bad, 1) << r.summary();
    }
    if (base.dv.empty > 0) {
      ++saw_unseen_keys;
      const std::vector<uint8_t> seen = h::keys_seen(bc.hc);
      size_t j = 0;
      while (seen[j]) ++j;
      std::vector<uint16_t> g = dv;
      g[size_t(bc.k_index(int64_t(j), 0, 0))] = h::float_to_half(p.dtype, 1e-6f);
      const h::BwdResult r = h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, dq, dk, g), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.dv.empty_bad, 1) << r.summary();
    }
    // A failed status fails whatever the gradients.
    EXPECT_FALSE(h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, dq, dk, dv), FLASH4_ERROR_CUDA, "boom").pass);
  }
  EXPECT_GT(saw_empty_rows, 0) << "no harness problem has rows that see nothing";
  EXPECT_GT(saw_unseen_keys, 0) << "no harness problem has keys nobody sees";
}

// The repeat bound (compare_runs): 1-ulp and fp32-noise differences pass, a
// missing partial sum or a NaN does not.
TEST(GpuBwdHarness, RepeatBound) {
  const flash4_dtype dt = FLASH4_DTYPE_BF16;
  h::BwdRawOutput a;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 7001));
  a.dq_alloc = h::random_halves(4096, dt, 1.0, rng);
  a.dk_alloc = a.dv_alloc = a.dq_alloc;
  double scale = 0;
  for (uint16_t x : a.dq_alloc) scale = std::max(scale, std::fabs(double(h::half_to_float(dt, x))));
  h::BwdRawOutput b = a;
  EXPECT_EQ(compare_runs(dt, a, b).dq_diff, 0);
  b.dq_alloc[5] = uint16_t(b.dq_alloc[5] + 1);  // one ulp (same sign, same binade or the next)
  b.dq_alloc[9] = h::float_to_half(dt, float(scale * 1e-7));
  a.dq_alloc[9] = h::float_to_half(dt, float(scale * 2e-7));  // tiny element, fp32 noise
  RepeatStats s = compare_runs(dt, a, b);
  EXPECT_EQ(s.dq_diff, 2);
  EXPECT_EQ(s.dq_over, 0);
  b.dq_alloc[17] = h::float_to_half(dt, h::half_to_float(dt, b.dq_alloc[17]) + float(0.05 * scale));
  EXPECT_EQ(compare_runs(dt, a, b).dq_over, 1);
  b.dq_alloc[17] = a.dq_alloc[17];
  b.dq_alloc[33] = h::kPoison16;
  EXPECT_EQ(compare_runs(dt, a, b).dq_over, 1);
  b.dq_alloc[33] = a.dq_alloc[33];
  b.dk_alloc[0] = uint16_t(b.dk_alloc[0] ^ 1);
  EXPECT_FALSE(compare_runs(dt, a, b).dk_equal);
}

TEST(GpuBwdHarness, WrongAnswersFail) {
  for (const Problem& p : harness_problems()) {
    h::BwdHostCase bc = h::make_bwd_case(p);
    const h::BwdReference ref = h::run_bwd_reference(bc);
    // Same inputs, a different problem: scale * 1.05, the other mask, kv heads
    // 0 and 1 swapped (a wrong GQA mapping). The wrong problem's LOWP
    // gradients must fail against the right problem's reference.
    for (int variant = 0; variant < 3; ++variant) {
      Problem w = p;
      std::vector<uint16_t> k = bc.hc.k_log, v = bc.hc.v_log;
      if (variant == 0) {
        w.softmax_scale = 1.05 * p.scale();
      } else if (variant == 1) {
        const bool masked = p.causal || p.window_left >= 0 || p.window_right >= 0;
        w.causal = !masked;
        w.window_left = w.window_right = -1;
      } else {
        if (p.heads_kv < 2) continue;
        const size_t D = size_t(p.headdim), Hk = size_t(p.heads_kv);
        for (size_t r = 0; r < size_t(bc.hc.rows_k); ++r)
          for (size_t d = 0; d < D; ++d) {
            std::swap(k[(r * Hk + 0) * D + d], k[(r * Hk + 1) * D + d]);
            std::swap(v[(r * Hk + 0) * D + d], v[(r * Hk + 1) * D + d]);
          }
      }
      h::BwdHostCase bw = h::make_bwd_case_from(h::make_case_from(w, bc.hc.q_log, k, v));
      ASSERT_EQ(bw.dout_log, bc.dout_log);  // same seed, same dout
      const h::BwdReference rw = h::run_bwd_reference(bw);
      const h::BwdResult r =
          h::evaluate_bwd(bc, ref, h::simulated_bwd_output(bc, rw.dq_lowp, rw.dk_lowp, rw.dv_lowp), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << "variant " << variant << " passed: " << r.summary();
    }
  }
}

}  // namespace
