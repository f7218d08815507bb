// GPU forward against the CPU reference, under the tolerance rule of
// docs/design.md (see tools/harness.hpp):
//   pass iff no NaN / unwritten / out-of-bounds output and
//   max|out - ref_fp64| <= 2 * max|out_lowp - ref_fp64| + atol, LSE likewise.
//
// Without a CUDA device every test here is skipped (GTEST_SKIP).
//
// Suites (all GpuFwd*):
//   GpuFwdBase         {bf16, fp16} x (Sq,Sk) x d x {non-causal, causal}
//   GpuFwdDtype        small head dims 8..48, large-magnitude inputs
//   GpuFwdGqa          Hq/Hkv in {1,2,8}
//   GpuFwdWindow       random local windows, causal+window, empty rows
//   GpuFwdSoftcap      softcap in both dtypes
//   GpuFwdVarlen       varlen with zero-length q/k sequences, seqused_k
//   GpuFwdLayout       packed qkv, head-major and padded strides
//   GpuFwdOptions      custom softmax_scale, no LSE, Sk = 0, batched seqused_k
//   GpuFwdExp2Emulation  exp2_emulation = 1 (FA4's software exp2 on 1/4 of the exponentials)
//   GpuFwdPortable     a mixed grid forced onto the portable path
//   GpuFwdSm90         the same grid forced onto the Hopper path (skipped where
//                      flash4_fwd_supported says it cannot run there)
//   GpuFwdEmpty        batch 0, seqlen_q 0, varlen total_q 0: no crash, nothing written
//   GpuFwdDeterminism  repeated forwards are bitwise equal
//   GpuFwdPath         forced portable / sm90 paths agree with flash4_fwd_supported
//   GpuFwdInvalid      rejected calls launch nothing
//   GpuFwdGraph        flash4_fwd captured in a CUDA graph replays identically
//   GpuFwdHarness      the rule itself on the CPU (runs without a GPU): correct
//                      simulated outputs pass, every kind of defect fails
//
// Inputs are fresh normal random values from a seed per case; the base seed
// is FLASH4_TEST_SEED (environment, default 20240917) and every case prints
// its seed, so a failure can be reproduced exactly.
#include <gtest/gtest.h>

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

// Skips the current test (from SetUp or a test body) when no GPU can run it.
#define FLASH4_REQUIRE_GPU()                                                                          \
  do {                                                                                                \
    std::string why_;                                                                                 \
    if (!h::cuda_device_available(&why_))                                                             \
      GTEST_SKIP() << "no CUDA device: GPU test skipped (run scripts/gpu-check.sh on a GPU machine) [" \
                   << why_ << "]";                                                                    \
    std::string nokern_;                                                                              \
    if (built_without_kernels(&nokern_)) GTEST_SKIP() << nokern_;                                    \
  } while (0)

// A library configured with FLASH4_KERNELS=OFF says so in flash4_fwd_supported;
// only that exact configuration skips (any other "no path" is a failure).
bool built_without_kernels_query(std::string* why) {
  Problem p;
  p.seqlen_q = p.seqlen_k = 8;
  p.heads_q = p.heads_kv = 1;
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  if (flash4_fwd_supported(&dc.args, -1, &info) != FLASH4_OK) return false;
  if (info.path == FLASH4_PATH_NONE && std::strstr(info.reason, "FLASH4_KERNELS=OFF")) {
    *why = std::string("flash4 was built without GPU kernels: ") + info.reason;
    return true;
  }
  return false;
}

bool built_without_kernels(std::string* why) {
  static const std::string cached = [] {
    std::string w;
    return built_without_kernels_query(&w) ? w : std::string();
  }();
  *why = cached;
  return !cached.empty();
}

// ---------------------------------------------------------------------------
// Parameterized sweeps: every case is a named Problem.
// ---------------------------------------------------------------------------

struct Case {
  std::string name;  // gtest-safe ([A-Za-z0-9_])
  Problem p;
};
void PrintTo(const Case& c, std::ostream* os) { *os << h::describe(c.p); }
std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

std::string dname(flash4_dtype t) { return t == FLASH4_DTYPE_FP16 ? "fp16" : "bf16"; }

// Gives each case of a suite its own seed (suite salt + index).
std::vector<Case> seeded(std::vector<Case> cases, uint64_t salt) {
  for (size_t i = 0; i < cases.size(); ++i) cases[i].p.seed = h::mix_seed(base_seed() ^ (salt << 32), i);
  return cases;
}

void run_and_expect_pass(const Problem& p) {
  h::FwdResult r = h::run_gpu_fwd(p);
  std::printf("  %s %s ratio=%.3f err_kernel=%.3e err_lowp=%.3e lse_err=%.3e\n", r.pass ? "PASS" : "FAIL",
              r.desc.c_str(), r.ratio, r.err_kernel, r.err_lowp, r.err_lse_kernel);
  EXPECT_EQ(r.status, FLASH4_OK) << r.summary();
  EXPECT_TRUE(r.pass) << r.summary();
}

class GpuFwdSweep : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { FLASH4_REQUIRE_GPU(); }
};

// ---- base sweep ------------------------------------------------------------
std::vector<Case> base_cases() {
  const int shapes[][2] = {{1, 1}, {113, 203}, {239, 1}, {1023, 1024}, {1024, 1023}, {4224, 4224}};
  const int dims[] = {64, 96, 128, 192, 256, 40, 72, 136, 248};
  std::vector<Case> v;
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16})
  for (auto& s : shapes)
    for (int d : dims)
      for (int causal = 0; causal < 2; ++causal) {
        const bool huge = s[0] == 4224;
        if (huge && (dt == FLASH4_DTYPE_FP16 || (d != 64 && d != 128 && d != 256))) continue;
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
        c.name = (dt == FLASH4_DTYPE_FP16 ? "fp16_" : "") + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "_d" + std::to_string(d) +
                 (causal ? "_causal" : "");
        v.push_back(c);
      }
  return seeded(v, 1);
}
class GpuFwdBase : public GpuFwdSweep {};
TEST_P(GpuFwdBase, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdBase, ::testing::ValuesIn(base_cases()), case_name);

// ---- dtype -----------------------------------------------------------------
std::vector<Case> dtype_cases() {
  std::vector<Case> v;
  auto add = [&](flash4_dtype dt, int sq, int sk, int d, bool causal, double stdv) {
    Case c;
    Problem& p = c.p;
    p.dtype = dt; p.seqlen_q = sq; p.seqlen_k = sk; p.headdim = d; p.causal = causal; p.input_std = stdv;
    p.batch = sq * sk > 300000 ? 1 : 2;
    p.heads_q = 2; p.heads_kv = 1;
    c.name = dname(dt) + "_" + std::to_string(sq) + "x" + std::to_string(sk) + "_d" + std::to_string(d) +
             (causal ? "_causal" : "") + (stdv != 1.0 ? "_std" + std::to_string(int(stdv)) : "");
    v.push_back(c);
  };
  // Small head dims (the API allows any multiple of 8 from 8).
  for (flash4_dtype dt : {FLASH4_DTYPE_FP16, FLASH4_DTYPE_BF16})
    for (int d : {8, 16, 32, 48}) {
      add(dt, 113, 203, d, d == 16 || d == 48, 1.0);
      add(dt, 1024, 1023, d, d == 8 || d == 32, 1.0);
    }
  // Large scores (std 4: |s| up to ~50): the online max / rescaling paths.
  for (flash4_dtype dt : {FLASH4_DTYPE_FP16, FLASH4_DTYPE_BF16})
    for (int causal = 0; causal < 2; ++causal) add(dt, 517, 1031, 128, causal, 4.0);
  return seeded(v, 2);
}
class GpuFwdDtype : public GpuFwdSweep {};
TEST_P(GpuFwdDtype, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdDtype, ::testing::ValuesIn(dtype_cases()), case_name);

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
      c.name = "H" + std::to_string(hh[0]) + "_" + std::to_string(hh[1]) + "_" + dname(p.dtype) +
               (causal ? "_causal" : "");
      v.push_back(c);
    }
  for (int hkv : {1, 2}) {
    Case c;
    Problem& p = c.p;
    p.batch = 1; p.seqlen_q = 1024; p.seqlen_k = 1023; p.headdim = 128; p.heads_q = 8; p.heads_kv = hkv;
    p.causal = true;
    c.name = "H8_" + std::to_string(hkv) + "_1024x1023_causal";
    v.push_back(c);
  }
  return seeded(v, 3);
}
class GpuFwdGqa : public GpuFwdSweep {};
TEST_P(GpuFwdGqa, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdGqa, ::testing::ValuesIn(gqa_cases()), case_name);

// ---- many tiles per CTA -----------------------------------------------------------
// The persistent grid (one CTA per SM) gives a CTA several tiles only when
// tiles outnumber SMs, which the sweeps above never do: these cases have
// 200-800 tiles (many (batch, head) pairs of short rows), so K/V rings, Q and
// O staging (over V at head dim 256) carry over from tile to tile. Causal
// Sq > Sk has tiles whose rows see no key (their zero O is staged too);
// varlen mixes sequences with and without work; a window adds masked blocks.
std::vector<Case> many_tile_cases() {
  std::vector<Case> v;
  for (int d : {64, 128, 256, 192})
    for (int variant = 0; variant < 4; ++variant) {
      Case c;
      Problem& p = c.p;
      p.headdim = d;
      p.batch = 24; p.heads_q = 8; p.heads_kv = 4;
      p.dtype = variant == 2 ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
      std::string tag;
      switch (variant) {
        case 0: p.seqlen_q = 200; p.seqlen_k = 160; tag = "200x160"; break;
        case 1: p.seqlen_q = 300; p.seqlen_k = 100; p.causal = true; tag = "300x100_causal"; break;
        case 2: p.seqlen_q = 129; p.seqlen_k = 257; p.window_left = 40; p.window_right = 7;
                tag = "129x257_window"; break;
        default:
          p.varlen = true; p.batch = 40; p.causal = true; tag = "varlen_causal";
          for (int b = 0; b < p.batch; ++b) {
            p.seqlens_q.push_back(b % 5 == 0 ? 0 : 37 + 61 * (b % 7));
            p.seqlens_k.push_back(b % 3 == 0 ? 11 : 29 + 53 * (b % 6));
          }
      }
      c.name = "d" + std::to_string(d) + "_" + tag + (p.dtype == FLASH4_DTYPE_FP16 ? "_fp16" : "");
      v.push_back(c);
    }
  return seeded(v, 11);
}
class GpuFwdManyTiles : public GpuFwdSweep {};
TEST_P(GpuFwdManyTiles, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdManyTiles, ::testing::ValuesIn(many_tile_cases()), case_name);

// ---- local windows -----------------------------------------------------------
std::vector<Case> window_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0x77));
  int n = 0;
  auto add = [&](int sq, int sk, int d, int left, int right, bool causal, flash4_dtype dt, int B, int hq, int hkv) {
    Case c;
    Problem& p = c.p;
    p.batch = B; p.seqlen_q = sq; p.seqlen_k = sk; p.headdim = d; p.window_left = left; p.window_right = right;
    p.causal = causal; p.dtype = dt; p.heads_q = hq; p.heads_kv = hkv;
    c.name = "w" + std::to_string(n++) + "_" + std::to_string(sq) + "x" + std::to_string(sk) + "_d" +
             std::to_string(d) + "_" + dname(dt) + (causal ? "_causal" : "");
    v.push_back(c);
  };
  // Random windows as FlashAttention draws them: left, right uniform in [0, Sk).
  const int shapes[][2] = {{113, 203}, {203, 113}, {239, 1}, {1, 1}, {1023, 1024}, {1024, 1023}, {300, 100}};
  for (auto& s : shapes)
    for (int rep = 0; rep < 2; ++rep) {
      std::uniform_int_distribution<int> u(0, std::max(0, s[1] - 1));
      const bool big = s[0] >= 1000;
      add(s[0], s[1], rep ? 128 : 64, u(rng), u(rng), false, rep ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16,
          big ? 1 : 2, big ? 2 : 4, big ? 1 : 2);
    }
  // Causal with a left window (sliding-window causal).
  add(1024, 1024, 128, 100, -1, true, FLASH4_DTYPE_BF16, 1, 2, 1);
  add(203, 113, 64, 17, 0, true, FLASH4_DTYPE_FP16, 2, 4, 4);
  // One side only.
  add(517, 1031, 96, 33, -1, false, FLASH4_DTYPE_BF16, 1, 2, 2);
  add(517, 1031, 96, -1, 33, false, FLASH4_DTYPE_BF16, 1, 2, 2);
  // Empty rows: Sq > Sk, (0, 0): rows i < Sq - Sk see no key.
  add(300, 100, 64, 0, 0, false, FLASH4_DTYPE_BF16, 2, 2, 1);
  // Causal with Sq > Sk: bottom-right alignment leaves the first Sq - Sk rows empty.
  add(239, 113, 128, -1, -1, true, FLASH4_DTYPE_BF16, 2, 2, 2);
  add(1024, 129, 64, -1, -1, true, FLASH4_DTYPE_FP16, 1, 2, 1);
  return seeded(v, 4);
}
class GpuFwdWindow : public GpuFwdSweep {};
TEST_P(GpuFwdWindow, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdWindow, ::testing::ValuesIn(window_cases()), case_name);

// ---- softcap -------------------------------------------------------------------
std::vector<Case> softcap_cases() {
  std::vector<Case> v;
  for (flash4_dtype dt : {FLASH4_DTYPE_BF16, FLASH4_DTYPE_FP16})
    for (double cap : {5.0, 30.0})
      for (int causal = 0; causal < 2; ++causal) {
        Case c;
        Problem& p = c.p;
        p.dtype = dt; p.softcap = cap; p.causal = causal; p.input_std = 2.0;
        p.batch = 2; p.seqlen_q = 113; p.seqlen_k = 203; p.heads_q = 4; p.heads_kv = 2;
        p.headdim = causal ? 128 : 64;
        c.name = dname(dt) + "_cap" + std::to_string(int(cap)) + (causal ? "_causal" : "");
        v.push_back(c);
      }
  for (int d : {64, 256}) {
    Case c;
    Problem& p = c.p;
    p.softcap = 15.0; p.input_std = 2.0; p.seqlen_q = 1023; p.seqlen_k = 1024; p.heads_q = 2; p.heads_kv = 1;
    p.headdim = d;
    c.name = "bf16_cap15_1023x1024_d" + std::to_string(d);
    v.push_back(c);
  }
  {
    Case c;
    Problem& p = c.p;
    p.softcap = 10.0; p.window_left = 50; p.window_right = 20; p.seqlen_q = 239; p.seqlen_k = 517;
    p.heads_q = 2; p.heads_kv = 2; p.headdim = 72;
    c.name = "bf16_cap10_window_d72";
    v.push_back(c);
  }
  return seeded(v, 5);
}
class GpuFwdSoftcap : public GpuFwdSweep {};
TEST_P(GpuFwdSoftcap, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdSoftcap, ::testing::ValuesIn(softcap_cases()), case_name);

// ---- varlen ----------------------------------------------------------------------
using h::random_lengths;

std::vector<Case> varlen_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0x7a));
  int n = 0;
  auto add = [&](int B, int mq, int mk, int d, bool causal, int left, int right, bool seqused, flash4_dtype dt,
                 int hq, int hkv, double cap) {
    Case c;
    Problem& p = c.p;
    random_lengths(&p, B, mq, mk, false, seqused, rng);
    p.headdim = d; p.causal = causal; p.window_left = left; p.window_right = right; p.dtype = dt;
    p.heads_q = hq; p.heads_kv = hkv; p.softcap = cap;
    c.name = "v" + std::to_string(n++) + "_B" + std::to_string(B) + "_d" + std::to_string(d) + "_" + dname(dt) +
             (causal ? "_causal" : "") + (left >= 0 || right >= 0 ? "_window" : "") + (seqused ? "_seqused" : "") +
             (cap > 0 ? "_softcap" : "");
    v.push_back(c);
  };
  add(6, 300, 300, 64, false, -1, -1, false, FLASH4_DTYPE_BF16, 4, 2, 0);
  add(6, 300, 300, 128, true, -1, -1, false, FLASH4_DTYPE_BF16, 4, 2, 0);
  add(7, 257, 129, 96, true, -1, -1, false, FLASH4_DTYPE_FP16, 2, 1, 0);
  add(5, 129, 257, 72, false, 40, 10, false, FLASH4_DTYPE_BF16, 2, 2, 0);
  add(6, 300, 300, 64, false, -1, -1, true, FLASH4_DTYPE_BF16, 2, 1, 0);
  add(6, 300, 300, 128, true, -1, -1, true, FLASH4_DTYPE_FP16, 8, 2, 0);
  add(4, 200, 600, 256, false, -1, -1, true, FLASH4_DTYPE_BF16, 2, 1, 0);
  add(5, 300, 300, 136, true, 64, -1, false, FLASH4_DTYPE_BF16, 2, 2, 20.0);
  add(3, 1100, 1100, 128, true, -1, -1, false, FLASH4_DTYPE_BF16, 2, 1, 0);
  add(16, 64, 64, 64, false, -1, -1, true, FLASH4_DTYPE_FP16, 1, 1, 0);
  // Single sequence, and one that is all empty key sides but has queries.
  {
    Case c;
    Problem& p = c.p;
    p.varlen = true; p.batch = 1; p.seqlens_q = {333}; p.seqlens_k = {777}; p.headdim = 64;
    c.name = "v_single";
    v.push_back(c);
  }
  {
    Case c;
    Problem& p = c.p;
    p.varlen = true; p.batch = 3; p.seqlens_q = {5, 17, 1}; p.seqlens_k = {0, 0, 0}; p.headdim = 128;
    c.name = "v_no_keys";
    v.push_back(c);
  }
  return seeded(v, 6);
}
class GpuFwdVarlen : public GpuFwdSweep {};
TEST_P(GpuFwdVarlen, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdVarlen, ::testing::ValuesIn(varlen_cases()), case_name);

// ---- non-contiguous layouts ---------------------------------------------------------
std::vector<Case> layout_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0x1a));
  int n = 0;
  auto add = [&](Layout l, bool varlen, int d, bool causal, int hq, int hkv, flash4_dtype dt) {
    Case c;
    Problem& p = c.p;
    p.layout = l; p.headdim = d; p.causal = causal; p.heads_q = hq; p.heads_kv = hkv; p.dtype = dt;
    const bool packed = l == Layout::kPackedQKV;
    if (varlen) {
      random_lengths(&p, 5, 257, 257, packed, false, rng);
    } else {
      p.batch = 2; p.seqlen_q = packed ? 203 : 113; p.seqlen_k = 203;
    }
    c.name = std::string("l") + std::to_string(n++) + "_" +
             (l == Layout::kPackedQKV ? "packed" : l == Layout::kHeadMajor ? "headmajor" : "padded") +
             (varlen ? "_varlen" : "") + "_d" + std::to_string(d) + (causal ? "_causal" : "");
    v.push_back(c);
  };
  for (Layout l : {Layout::kPackedQKV, Layout::kHeadMajor, Layout::kPadded})
    for (int varlen = 0; varlen < 2; ++varlen) {
      const bool packed = l == Layout::kPackedQKV;
      add(l, varlen, 64, false, 4, packed ? 4 : 2, FLASH4_DTYPE_BF16);
      add(l, varlen, varlen ? 72 : 128, true, 2, packed ? 2 : 1, FLASH4_DTYPE_FP16);
    }
  {
    Case c;
    Problem& p = c.p;
    p.layout = Layout::kPadded; p.batch = 1; p.seqlen_q = 1023; p.seqlen_k = 1024; p.headdim = 256;
    p.heads_q = 2; p.heads_kv = 1;
    c.name = "padded_1023x1024_d256";
    v.push_back(c);
  }
  return seeded(v, 7);
}
class GpuFwdLayout : public GpuFwdSweep {};
TEST_P(GpuFwdLayout, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdLayout, ::testing::ValuesIn(layout_cases()), case_name);

// ---- other options ----------------------------------------------------------------------
std::vector<Case> option_cases() {
  std::vector<Case> v;
  auto base = [](const std::string& name) {
    Case c;
    c.name = name;
    c.p.batch = 2; c.p.seqlen_q = 113; c.p.seqlen_k = 203; c.p.heads_q = 4; c.p.heads_kv = 2; c.p.headdim = 64;
    return c;
  };
  { Case c = base("scale_0p5"); c.p.softmax_scale = 0.5; v.push_back(c); }
  { Case c = base("scale_0p01_fp16"); c.p.softmax_scale = 0.01; c.p.dtype = FLASH4_DTYPE_FP16; v.push_back(c); }
  { Case c = base("scale_neg_causal"); c.p.softmax_scale = -0.2; c.p.causal = true; v.push_back(c); }
  { Case c = base("no_lse"); c.p.with_lse = false; c.p.causal = true; v.push_back(c); }
  { Case c = base("no_lse_varlen"); c.p.with_lse = false; c.p.varlen = true; c.p.batch = 3;
    c.p.seqlens_q = {10, 0, 77}; c.p.seqlens_k = {0, 5, 130}; v.push_back(c); }
  { Case c = base("sk0"); c.p.seqlen_k = 0; v.push_back(c); }
  { Case c = base("sk0_causal_d128"); c.p.seqlen_k = 0; c.p.causal = true; c.p.headdim = 128; v.push_back(c); }
  { Case c = base("seqused_batched"); c.p.seqused_k = {0, 150}; v.push_back(c); }
  { Case c = base("seqused_batched_causal"); c.p.seqused_k = {203, 37}; c.p.causal = true; c.p.headdim = 96; v.push_back(c); }
  { Case c = base("sq1_decode"); c.p.seqlen_q = 1; c.p.seqlen_k = 4097; c.p.heads_q = 8; c.p.heads_kv = 1;
    c.p.headdim = 128; v.push_back(c); }
  return seeded(v, 8);
}
class GpuFwdOptions : public GpuFwdSweep {};
TEST_P(GpuFwdOptions, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdOptions, ::testing::ValuesIn(option_cases()), case_name);

// ---- FA4 software exp2 (exp2_emulation = 1) ---------------------------------------------
// The Hopper kernels with 1/4 of the exponentials on the FMA pipe (head dims <= 128, no
// softcap); elsewhere the call runs on the portable path (hardware exp2), which must be
// just as accurate.
std::vector<Case> exp2_cases() {
  std::vector<Case> v;
  const int shapes[][2] = {{1, 1}, {113, 203}, {1023, 1024}, {2048, 2048}};
  int n = 0;
  for (auto& s : shapes)
    for (int d : {64, 96, 128})
      for (int causal = 0; causal < 2; ++causal) {
        Case c;
        Problem& p = c.p;
        p.seqlen_q = s[0]; p.seqlen_k = s[1]; p.headdim = d; p.causal = causal; p.exp2_emulation = 1;
        const bool big = s[0] >= 1000;
        p.batch = big ? 1 : 2; p.heads_q = big ? 2 : 4; p.heads_kv = big ? 1 : 2;
        p.dtype = (n++ % 2) ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
        p.input_std = causal ? 3.0 : 1.0;  // large scores: exponents far from 0
        c.name = dname(p.dtype) + "_" + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "_d" +
                 std::to_string(d) + (causal ? "_causal" : "");
        v.push_back(c);
      }
  Case c;  // windows and varlen through the emulated kernels; softcap falls back
  c.name = "window_varlen_d128";
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0xe2));
  random_lengths(&c.p, 5, 300, 400, false, true, rng);
  c.p.headdim = 128; c.p.window_left = 60; c.p.window_right = 10; c.p.exp2_emulation = 1;
  v.push_back(c);
  c = Case();
  c.name = "softcap_portable_d64";
  c.p.batch = 2; c.p.seqlen_q = 239; c.p.seqlen_k = 517; c.p.headdim = 64; c.p.softcap = 20; c.p.input_std = 2;
  c.p.exp2_emulation = 1;
  v.push_back(c);
  return seeded(v, 0xe2);
}
class GpuFwdExp2Emulation : public GpuFwdSweep {};
TEST_P(GpuFwdExp2Emulation, MatchesReference) { run_and_expect_pass(GetParam().p); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdExp2Emulation, ::testing::ValuesIn(exp2_cases()), case_name);

// ---- forced paths ---------------------------------------------------------------------
// AUTO may send d 64/128 to the Hopper kernels and the rest to the portable
// ones; these run one mixed grid through each path explicitly.
std::vector<Case> forced_cases(flash4_path path) {
  std::vector<Case> v;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 0xf0 + uint64_t(path)));
  int n = 0;
  auto add = [&](Problem p, const std::string& what) {
    p.path = path;
    Case c;
    c.p = p;
    c.name = "f" + std::to_string(n++) + "_" + what;
    v.push_back(c);
  };
  const int shapes[][2] = {{1, 1}, {113, 203}, {239, 1}, {1024, 1023}, {2048, 2048}};
  for (auto& s : shapes)
    for (int d : {64, 128})
      for (int causal = 0; causal < 2; ++causal) {
        Problem p;
        p.seqlen_q = s[0]; p.seqlen_k = s[1]; p.headdim = d; p.causal = causal;
        const bool big = s[0] >= 1000;
        p.batch = big ? 1 : 2; p.heads_q = big ? 2 : 4; p.heads_kv = big ? 1 : 2;
        add(p, std::to_string(s[0]) + "x" + std::to_string(s[1]) + "_d" + std::to_string(d) + (causal ? "_causal" : ""));
      }
  for (int d : {64, 128}) {
    Problem p;
    p.dtype = FLASH4_DTYPE_FP16; p.batch = 2; p.seqlen_q = 517; p.seqlen_k = 1031; p.headdim = d;
    p.heads_q = 8; p.heads_kv = 1;
    add(p, "fp16_mqa_d" + std::to_string(d));
    p.dtype = FLASH4_DTYPE_BF16; p.heads_kv = 8; p.window_left = 100; p.window_right = 30;
    add(p, "window_d" + std::to_string(d));
    p.window_left = p.window_right = -1; p.softcap = 20; p.input_std = 2; p.causal = true;
    add(p, "softcap_causal_d" + std::to_string(d));
    Problem q;
    random_lengths(&q, 6, 400, 400, false, true, rng);
    q.headdim = d; q.heads_q = 4; q.heads_kv = 2; q.causal = d == 128;
    add(q, "varlen_d" + std::to_string(d));
    Problem l;
    l.layout = d == 64 ? Layout::kPadded : Layout::kPackedQKV; l.batch = 2; l.seqlen_q = l.seqlen_k = 333;
    l.headdim = d; l.heads_q = l.heads_kv = 2;
    add(l, std::string(d == 64 ? "padded" : "packed") + "_d" + std::to_string(d));
  }
  // Head dims between the Hopper kernels' (64 / 128 / 256): the next larger
  // kernel with zero-filled columns (136 and 192: a whole 64-column panel of
  // the 256 kernel lies past D).
  for (int d : {8, 40, 96, 136, 192}) {
    Problem p;
    p.batch = 2; p.seqlen_q = 239; p.seqlen_k = 517; p.headdim = d; p.heads_q = 4; p.heads_kv = 2;
    p.causal = d == 96 || d == 192;
    p.dtype = d == 136 ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
    add(p, "hd" + std::to_string(d) + (p.causal ? "_causal" : ""));
  }
  {
    Problem q;
    random_lengths(&q, 5, 300, 300, false, true, rng);
    q.headdim = 96; q.heads_q = 4; q.heads_kv = 1; q.window_left = 50; q.window_right = 20; q.softcap = 20;
    q.input_std = 2;
    add(q, "varlen_window_softcap_d96");
  }
  return seeded(v, 9 + uint64_t(path));
}
void run_forced(const Problem& p, bool skip_if_unsupported) {
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  ASSERT_EQ(flash4_fwd_supported(&dc.args, -1, &info), FLASH4_OK) << flash4_last_error();
  if (info.path == FLASH4_PATH_NONE && skip_if_unsupported)
    GTEST_SKIP() << "path not available here: " << info.reason;
  ASSERT_EQ(info.path, p.path) << info.reason;
  run_and_expect_pass(p);
}
class GpuFwdPortable : public GpuFwdSweep {};
TEST_P(GpuFwdPortable, MatchesReference) { run_forced(GetParam().p, false); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdPortable, ::testing::ValuesIn(forced_cases(FLASH4_PATH_PORTABLE)), case_name);
// Skipped where supported() says the Hopper path cannot run the case (not a
// cc 9.0 device, or not implemented for it); GpuFwdPath.Sm90RunsOrSaysWhyNot
// checks that such an answer is consistent with flash4_fwd.
class GpuFwdSm90 : public GpuFwdSweep {};
TEST_P(GpuFwdSm90, MatchesReference) { run_forced(GetParam().p, true); }
INSTANTIATE_TEST_SUITE_P(GpuFwd, GpuFwdSm90, ::testing::ValuesIn(forced_cases(FLASH4_PATH_SM90)), case_name);

// ---------------------------------------------------------------------------
// Single tests
// ---------------------------------------------------------------------------

class GpuFwdFixture : public ::testing::Test {
 protected:
  void SetUp() override { FLASH4_REQUIRE_GPU(); }
};

bool all_bytes(const std::vector<uint16_t>& v, uint16_t x) {
  for (uint16_t e : v) if (e != x) return false;
  return true;
}
bool all_bytes(const std::vector<float>& v, uint32_t x) {
  for (float f : v) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    if (b != x) return false;
  }
  return true;
}
bool same_bits(const h::RawOutput& a, const h::RawOutput& b) {
  return a.out_alloc.size() == b.out_alloc.size() && a.lse_alloc.size() == b.lse_alloc.size() &&
         std::memcmp(a.out_alloc.data(), b.out_alloc.data(), a.out_alloc.size() * 2) == 0 &&
         std::memcmp(a.lse_alloc.data(), b.lse_alloc.data(), a.lse_alloc.size() * 4) == 0;
}

// ---- empty problems ---------------------------------------------------------------------
class GpuFwdEmpty : public GpuFwdFixture {};

TEST_F(GpuFwdEmpty, BatchZero) {
  Problem p;
  p.batch = 0; p.seqlen_q = 128; p.seqlen_k = 128; p.seed = h::mix_seed(base_seed(), 901);
  run_and_expect_pass(p);
}
TEST_F(GpuFwdEmpty, SeqlenQZero) {
  Problem p;
  p.batch = 2; p.seqlen_q = 0; p.seqlen_k = 77; p.causal = true; p.seed = h::mix_seed(base_seed(), 902);
  run_and_expect_pass(p);
}
TEST_F(GpuFwdEmpty, SeqlenQAndKZero) {
  Problem p;
  p.batch = 2; p.seqlen_q = 0; p.seqlen_k = 0; p.seed = h::mix_seed(base_seed(), 903);
  run_and_expect_pass(p);
}
TEST_F(GpuFwdEmpty, VarlenTotalQZero) {
  Problem p;
  p.varlen = true; p.batch = 3; p.seqlens_q = {0, 0, 0}; p.seqlens_k = {5, 0, 9}; p.seed = h::mix_seed(base_seed(), 904);
  run_and_expect_pass(p);
}
TEST_F(GpuFwdEmpty, VarlenBatchZero) {
  Problem p;
  p.varlen = true; p.batch = 0; p.seed = h::mix_seed(base_seed(), 905);
  run_and_expect_pass(p);
}

// ---- determinism: a moving result means a race ------------------------------------------
class GpuFwdDeterminism : public GpuFwdFixture {};

void expect_repeatable(const Problem& p, int repeats) {
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  h::Stream stream;
  h::RawOutput first;
  for (int r = 0; r < repeats; ++r) {
    dc.poison(stream.get());
    std::string msg;
    ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << h::describe(p) << ": " << msg;
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    h::RawOutput raw = dc.download();
    if (r == 0) {
      first = std::move(raw);
      h::Reference ref = h::run_reference(hc);
      h::FwdResult res = h::evaluate(hc, ref, first, FLASH4_OK, "");
      EXPECT_TRUE(res.pass) << res.summary();
    } else {
      ASSERT_TRUE(same_bits(first, raw)) << "run " << r << " differs bitwise from run 0: " << h::describe(p);
    }
  }
}
TEST_F(GpuFwdDeterminism, RepeatedForwardBitwiseEqual) {
  Problem p;
  p.batch = 2; p.seqlen_q = 1024; p.seqlen_k = 1023; p.heads_q = 8; p.heads_kv = 2; p.headdim = 128;
  p.causal = true; p.seed = h::mix_seed(base_seed(), 1001);
  expect_repeatable(p, 10);
}
TEST_F(GpuFwdDeterminism, RepeatedForwardBitwiseEqualVarlenWindow) {
  Problem p;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 1002));
  random_lengths(&p, 6, 500, 700, false, true, rng);
  p.heads_q = 4; p.heads_kv = 1; p.headdim = 72; p.window_left = 64; p.window_right = 32; p.softcap = 20.0;
  p.dtype = FLASH4_DTYPE_FP16; p.seed = h::mix_seed(base_seed(), 1003);
  expect_repeatable(p, 10);
}

// ---- forced paths ---------------------------------------------------------------------------
class GpuFwdPath : public GpuFwdFixture {};

Problem path_problem(flash4_path path, uint64_t salt) {
  Problem p;
  p.batch = 2; p.seqlen_q = 239; p.seqlen_k = 517; p.heads_q = 4; p.heads_kv = 2; p.headdim = 128;
  p.causal = true; p.path = path; p.seed = h::mix_seed(base_seed(), salt);
  return p;
}

TEST_F(GpuFwdPath, AutoIsSupported) {
  h::HostCase hc = h::make_case(path_problem(FLASH4_PATH_AUTO, 1101));
  h::DeviceCase dc(hc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  ASSERT_EQ(flash4_fwd_supported(&dc.args, -1, &info), FLASH4_OK) << flash4_last_error();
  EXPECT_NE(info.path, FLASH4_PATH_NONE) << info.reason;
  EXPECT_GT(std::strlen(info.reason), 0u);
  std::printf("  auto path: %s (%s)\n", flash4_path_name(info.path), info.reason);
}

TEST_F(GpuFwdPath, PortableRuns) {
  Problem p = path_problem(FLASH4_PATH_PORTABLE, 1102);
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  ASSERT_EQ(flash4_fwd_supported(&dc.args, -1, &info), FLASH4_OK) << flash4_last_error();
  EXPECT_EQ(info.path, FLASH4_PATH_PORTABLE) << info.reason;
  run_and_expect_pass(p);
  Problem v = p;  // varlen through the forced path as well
  std::mt19937_64 rng(h::mix_seed(base_seed(), 1103));
  random_lengths(&v, 4, 200, 300, false, false, rng);
  run_and_expect_pass(v);
}

// SM90 either runs (and is right) or says NOT_SUPPORTED, consistently with
// flash4_fwd_supported, and then launches nothing.
TEST_F(GpuFwdPath, Sm90RunsOrSaysWhyNot) {
  Problem p = path_problem(FLASH4_PATH_SM90, 1104);
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  flash4_support info;
  std::memset(&info, 0, sizeof info);
  ASSERT_EQ(flash4_fwd_supported(&dc.args, -1, &info), FLASH4_OK) << flash4_last_error();
  EXPECT_GT(std::strlen(info.reason), 0u);
  h::Stream stream;
  dc.poison(stream.get());
  std::string msg;
  const flash4_status st = dc.launch(stream.get(), &msg);
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  h::RawOutput raw = dc.download();
  std::printf("  sm90: supported() -> %s (%s); flash4_fwd -> %s %s\n", flash4_path_name(info.path), info.reason,
              flash4_status_string(st), msg.c_str());
  if (info.path == FLASH4_PATH_SM90) {
    ASSERT_EQ(st, FLASH4_OK) << "supported() said sm90 but flash4_fwd failed: " << msg;
    h::FwdResult r = h::evaluate(hc, h::run_reference(hc), raw, st, msg);
    EXPECT_TRUE(r.pass) << r.summary();
  } else {
    EXPECT_EQ(info.path, FLASH4_PATH_NONE);
    EXPECT_EQ(st, FLASH4_ERROR_NOT_SUPPORTED) << msg;
    EXPECT_FALSE(msg.empty());
    EXPECT_TRUE(all_bytes(raw.out_alloc, h::kPoison16)) << "NOT_SUPPORTED call wrote out";
    EXPECT_TRUE(all_bytes(raw.lse_alloc, h::kPoison32)) << "NOT_SUPPORTED call wrote lse";
  }
}

// ---- invalid calls launch nothing -------------------------------------------------------------
class GpuFwdInvalid : public GpuFwdFixture {};

TEST_F(GpuFwdInvalid, LaunchesNothing) {
  Problem p;
  p.batch = 2; p.seqlen_q = 64; p.seqlen_k = 96; p.heads_q = 4; p.heads_kv = 2; p.headdim = 64;
  p.seed = h::mix_seed(base_seed(), 1201);
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  const flash4_fwd_args good = dc.args;
  struct Mutation {
    const char* what;
    void (*apply)(flash4_fwd_args*);
  };
  const Mutation mutations[] = {
      {"heads_q not a multiple of heads_kv", [](flash4_fwd_args* a) { a->k.shape[2] = 3; a->v.shape[2] = 3; }},
      {"k dtype differs from q", [](flash4_fwd_args* a) { a->k.dtype = FLASH4_DTYPE_FP16; }},
      {"q last dim not contiguous", [](flash4_fwd_args* a) { a->q.stride[3] = 2; }},
      {"out shape differs from q", [](flash4_fwd_args* a) { a->out.shape[1] -= 1; }},
      {"lse dtype fp16", [](flash4_fwd_args* a) { a->lse.dtype = FLASH4_DTYPE_FP16; }},
      {"softmax_scale NaN", [](flash4_fwd_args* a) { a->opt.softmax_scale = std::nan(""); }},
      {"softcap negative", [](flash4_fwd_args* a) { a->opt.softcap = -1.0; }},
      {"window_left < -1", [](flash4_fwd_args* a) { a->opt.window_left = -2; }},
      {"headdim 264", [](flash4_fwd_args* a) {
         a->q.shape[3] = a->k.shape[3] = a->v.shape[3] = a->out.shape[3] = 264; }},
      {"q data NULL", [](flash4_fwd_args* a) { a->q.data = nullptr; }},
      {"q misaligned", [](flash4_fwd_args* a) { a->q.data = static_cast<char*>(a->q.data) + 2; }},
      {"varlen without cu_seqlens_k", [](flash4_fwd_args* a) {
         a->opt.cu_seqlens_q = a->lse; /* any non-NULL pointer */ }},
  };
  h::Stream stream;
  for (const Mutation& m : mutations) {
    dc.args = good;
    m.apply(&dc.args);
    dc.poison(stream.get());
    std::string msg;
    const flash4_status st = dc.launch(stream.get(), &msg);
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    h::RawOutput raw = dc.download();
    EXPECT_EQ(st, FLASH4_ERROR_INVALID_ARGUMENT) << m.what << ": " << flash4_status_string(st) << " " << msg;
    EXPECT_FALSE(msg.empty()) << m.what << ": no message";
    EXPECT_TRUE(all_bytes(raw.out_alloc, h::kPoison16)) << m.what << ": out was written";
    EXPECT_TRUE(all_bytes(raw.lse_alloc, h::kPoison32)) << m.what << ": lse was written";
  }
  // The untouched arguments still work on the same buffers (the test's own control).
  dc.args = good;
  dc.poison(stream.get());
  std::string msg;
  ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  h::FwdResult r = h::evaluate(hc, h::run_reference(hc), dc.download(), FLASH4_OK, "");
  EXPECT_TRUE(r.pass) << r.summary();
}

// ---- CUDA graph capture ------------------------------------------------------------------------
class GpuFwdGraph : public GpuFwdFixture {};

void expect_graph_replay(const Problem& p) {
  h::HostCase hc = h::make_case(p);
  h::DeviceCase dc(hc);
  h::Stream stream;
  // Direct run first (a warm-up, as any graph user does), kept as the expectation.
  dc.poison(stream.get());
  std::string msg;
  ASSERT_EQ(dc.launch(stream.get(), &msg), FLASH4_OK) << msg;
  FLASH4_HARNESS_CUDA(cudaGetLastError());
  stream.sync();
  const h::RawOutput direct = dc.download();
  h::FwdResult r = h::evaluate(hc, h::run_reference(hc), direct, FLASH4_OK, "");
  EXPECT_TRUE(r.pass) << r.summary();

  // Global capture mode: any synchronizing or allocating call inside
  // flash4_fwd invalidates the capture and fails below.
  h::Graph graph;
  FLASH4_HARNESS_CUDA(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  const flash4_status st = dc.launch(stream.get(), &msg);
  const cudaError_t end = cudaStreamEndCapture(stream.get(), graph.graph_ptr());
  ASSERT_EQ(st, FLASH4_OK) << "flash4_fwd during capture: " << msg;
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end)
                              << " (flash4_fwd did something illegal during capture)";
  size_t nodes = 0;
  FLASH4_HARNESS_CUDA(cudaGraphGetNodes(graph.graph(), nullptr, &nodes));
  EXPECT_GE(nodes, 1u) << "captured graph is empty";
  graph.instantiate();
  for (int replay = 0; replay < 3; ++replay) {
    dc.poison(stream.get());  // a replay that does nothing leaves NaN
    graph.launch(stream.get());
    FLASH4_HARNESS_CUDA(cudaGetLastError());
    stream.sync();
    const h::RawOutput replayed = dc.download();
    EXPECT_TRUE(same_bits(direct, replayed)) << "graph replay " << replay << " differs from the direct run: "
                                             << h::describe(p);
  }
}
TEST_F(GpuFwdGraph, CaptureAndReplay) {
  Problem p;
  p.batch = 2; p.seqlen_q = 1023; p.seqlen_k = 1024; p.heads_q = 4; p.heads_kv = 2; p.headdim = 128;
  p.causal = true; p.seed = h::mix_seed(base_seed(), 1301);
  expect_graph_replay(p);
}
TEST_F(GpuFwdGraph, CaptureAndReplayVarlen) {
  Problem p;
  std::mt19937_64 rng(h::mix_seed(base_seed(), 1302));
  random_lengths(&p, 5, 300, 300, false, true, rng);
  p.heads_q = 2; p.heads_kv = 1; p.headdim = 64; p.seed = h::mix_seed(base_seed(), 1303);
  expect_graph_replay(p);
}

// ---------------------------------------------------------------------------
// GpuFwdHarness: the rule itself, on the CPU (no GPU needed). A simulated
// "kernel" output goes through the same evaluate() as a real one: correct
// outputs pass, each kind of defect fails. Guards against a harness that
// cannot fail (or that fails correct kernels).
// ---------------------------------------------------------------------------

std::vector<Problem> harness_problems() {
  std::vector<Problem> v;
  Problem p;
  p.batch = 2; p.seqlen_q = 67; p.seqlen_k = 91; p.heads_q = 4; p.heads_kv = 2; p.headdim = 40;
  v.push_back(p);  // dense, GQA
  p.layout = Layout::kPadded; p.dtype = FLASH4_DTYPE_FP16; p.causal = true;
  v.push_back(p);
  p.layout = Layout::kHeadMajor; p.dtype = FLASH4_DTYPE_BF16; p.causal = false; p.window_left = 5; p.window_right = 0;
  p.seqlen_q = 120; p.seqlen_k = 40;  // empty rows
  v.push_back(p);
  Problem q;
  q.varlen = true; q.batch = 4; q.seqlens_q = {30, 0, 17, 50}; q.seqlens_k = {30, 9, 0, 50}; q.heads_q = 2;
  q.heads_kv = 2; q.headdim = 64; q.layout = Layout::kPackedQKV; q.seqlens_k = q.seqlens_q; q.softcap = 7;
  q.input_std = 2;
  v.push_back(q);
  q.layout = Layout::kPadded; q.seqlens_k = {40, 9, 0, 25}; q.seqused_k = {33, 0, 0, 25}; q.causal = true;
  v.push_back(q);
  for (size_t i = 0; i < v.size(); ++i) v[i].seed = h::mix_seed(base_seed(), 5000 + i);
  return v;
}

std::vector<uint16_t> rounded_fp64(const h::HostCase& hc, const h::Reference& ref) {
  std::vector<uint16_t> o(ref.out64.size());
  for (size_t i = 0; i < o.size(); ++i) o[i] = h::float_to_half(hc.p.dtype, float(ref.out64[i]));
  return o;
}
std::vector<float> float_lse(const h::Reference& ref) {
  return std::vector<float>(ref.lse64.begin(), ref.lse64.end());
}

TEST(GpuFwdHarness, CorrectOutputsPass) {
  for (const Problem& p : harness_problems()) {
    h::HostCase hc = h::make_case(p);
    h::Reference ref = h::run_reference(hc);
    // The LOWP reference as the kernel: err_kernel == err_lowp, ratio 1.
    h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, ref.out_lowp, &ref.lse_lowp), FLASH4_OK, "");
    EXPECT_TRUE(r.pass) << r.summary();
    EXPECT_EQ(r.err_kernel, r.err_lowp) << r.summary();
    EXPECT_GT(r.err_lowp, 0.0) << r.summary();
    // The correctly rounded FP64 result with an fp32 LSE.
    const std::vector<float> l32 = float_lse(ref);
    r = h::evaluate(hc, ref, h::simulated_output(hc, rounded_fp64(hc, ref), &l32), FLASH4_OK, "");
    EXPECT_TRUE(r.pass) << r.summary();
    EXPECT_LE(r.err_kernel, r.err_lowp) << r.summary();
  }
}

TEST(GpuFwdHarness, DefectsFail) {
  for (const Problem& p : harness_problems()) {
    h::HostCase hc = h::make_case(p);
    h::Reference ref = h::run_reference(hc);
    const std::vector<uint16_t> good = rounded_fp64(hc, ref);
    const std::vector<float> lse = float_lse(ref);
    const h::FwdResult base = h::evaluate(hc, ref, h::simulated_output(hc, good, &lse), FLASH4_OK, "");
    ASSERT_TRUE(base.pass) << base.summary();
    // First row (b, i, h) with visible keys, and one without (if any).
    int64_t live = -1, dead = -1;
    for (size_t i = 0; i < ref.lse64.size(); ++i) {
      if (std::isfinite(ref.lse64[i]) && live < 0) live = int64_t(i);
      if (std::isinf(ref.lse64[i]) && dead < 0) dead = int64_t(i);
    }
    ASSERT_GE(live, 0);
    // An output element just over the tolerance.
    {
      std::vector<uint16_t> o = good;
      size_t i = 0;
      while (ref.out64[i] == 0.0) ++i;  // a row that has keys
      const float bumped = float(ref.out64[i] + 1.5 * base.tol + 1e-3);
      o[i] = h::float_to_half(p.dtype, bumped);
      h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, o, &lse), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << "perturbed output passed: " << r.summary();
    }
    // One output element never written (still poison).
    {
      h::RawOutput raw = h::simulated_output(hc, good, &lse);
      raw.out_alloc[size_t(hc.out.at(hc.rows_q - 1, p.heads_q - 1, p.headdim - 1, hc.q_rows_per_batch()))] =
          h::kPoison16;
      h::FwdResult r = h::evaluate(hc, ref, raw, FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.out_nan, 1) << r.summary();
    }
    // A write past the end of out / before lse.
    {
      h::RawOutput raw = h::simulated_output(hc, good, &lse);
      raw.out_alloc.back() = 0;
      raw.lse_alloc.front() = 0.0f;
      h::FwdResult r = h::evaluate(hc, ref, raw, FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.out_guard, 1) << r.summary();
      EXPECT_EQ(r.lse_guard, 1) << r.summary();
    }
    // LSE slightly off, LSE -inf on a live row, LSE unwritten.
    {
      std::vector<float> l = lse;
      l[size_t(live)] += 2e-3f;
      h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, good, &l), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << "LSE off by 2e-3 passed: " << r.summary();
      l = lse;
      l[size_t(live)] = -INFINITY;
      r = h::evaluate(hc, ref, h::simulated_output(hc, good, &l), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_EQ(r.lse_inf_mismatch, 1) << r.summary();
      l = lse;
      l[size_t(live)] = flash4::bits_to_float(h::kPoison32);
      r = h::evaluate(hc, ref, h::simulated_output(hc, good, &l), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
    }
    // A row without keys that is not exactly 0 / -inf.
    if (dead >= 0) {
      std::vector<float> l = lse;
      l[size_t(dead)] = 0.0f;
      h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, good, &l), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << r.summary();
      EXPECT_GE(r.empty_row_bad, 1) << r.summary();
    }
    // A failed status fails whatever the outputs.
    {
      h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, good, &lse), FLASH4_ERROR_CUDA, "boom");
      EXPECT_FALSE(r.pass);
    }
  }
}

TEST(GpuFwdHarness, WrongAnswersFail) {
  for (const Problem& p : harness_problems()) {
    h::HostCase hc = h::make_case(p);
    h::Reference ref = h::run_reference(hc);
    // Same inputs, a different problem: scale * 1.05, another mask, kv heads 0 and 1
    // swapped (what a wrong GQA head mapping computes).
    for (int variant = 0; variant < 3; ++variant) {
      Problem w = p;
      std::vector<uint16_t> k = hc.k_log, v = hc.v_log;
      if (variant == 0) {
        w.softmax_scale = 1.05 * p.scale();
      } else if (variant == 1) {
        const bool masked = p.causal || p.window_left >= 0 || p.window_right >= 0;
        w.causal = !masked;
        w.window_left = w.window_right = -1;
      } else {
        if (p.heads_kv < 2) continue;
        const size_t D = size_t(p.headdim), Hk = size_t(p.heads_kv);
        for (size_t r = 0; r < size_t(hc.rows_k); ++r)
          for (size_t d = 0; d < D; ++d) {
            std::swap(k[(r * Hk + 0) * D + d], k[(r * Hk + 1) * D + d]);
            std::swap(v[(r * Hk + 0) * D + d], v[(r * Hk + 1) * D + d]);
          }
      }
      h::HostCase hw = h::make_case_from(w, hc.q_log, k, v);
      h::Reference rw = h::run_reference(hw, 0, /*lowp=*/true);
      h::FwdResult r = h::evaluate(hc, ref, h::simulated_output(hc, rw.out_lowp, &rw.lse_lowp), FLASH4_OK, "");
      EXPECT_FALSE(r.pass) << "variant " << variant << " passed: " << r.summary();
    }
  }
}

}  // namespace
