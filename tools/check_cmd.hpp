// `flash4 check [--cpu] [--quick] [--seed N] [--json FILE]`
//
// GPU mode (default): a random grid of forward problems (odd shapes, head
// dims incl. padded ones, fp16/bf16, causal, local windows, softcap, GQA,
// varlen with empty sequences, seqused_k, non-contiguous layouts) runs
// through flash4_fwd and is compared with the CPU reference under the
// tolerance rule (tools/harness.hpp). One row per case; exit status 1 if any
// case fails, 2 on a usage error or when no GPU is there.
//
// --cpu: checks the CPU reference itself, no GPU needed:
//   lowp-range    err(FLASH4_REF_LOWP vs FP64) lies in the range the dtype
//                 implies: at least half the worst output rounding of the FP64
//                 result (the LOWP output is rounded), at most the error of
//                 rounding P and the output plus fp32 accumulation bounds;
//   naive         FP64 reference equals an independent float64 two-pass softmax;
//   lse-identity  sum_j exp(s_ij - lse_i) = 1 and sum_j exp(s_ij - lse_i) v_j = out_i;
//   gqa=mha       GQA equals MHA with the kv heads repeated;
//   varlen=batch  each varlen sequence equals the same sequence run batched;
//   layout=dense  strided / packed inputs equal dense inputs;
//   causal=window causal equals window (left, 0).
//
// Usage from the CLI main: `return flash4_cli_check(argc - 1, argv + 1);`
// (argv[0] is then "check").
#pragma once

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "harness.hpp"

namespace flash4 {
namespace check_cli {

namespace h = ::flash4::harness;

struct Options {
  bool cpu = false;
  bool quick = false;
  uint64_t seed = 1;
  std::string json;
};

// One table row (a GPU case, or one check of the CPU reference).
struct Row {
  std::string desc;
  std::string check;     // "fwd" (GPU) or the CPU check's name
  double err = 0;        // GPU: err_kernel; CPU: the check's error
  double ref_err = 0;    // GPU: err_lowp; CPU: the bound
  double ratio = 0;      // GPU: err_kernel/err_lowp; CPU: err/bound
  double lse_err = 0;    // GPU: LSE error
  bool pass = false;
  std::string why;
};

inline void print_usage(std::FILE* f) {
  std::fprintf(f,
               "usage: flash4 check [--cpu] [--quick] [--seed N] [--json FILE]\n"
               "  (default)  GPU forward vs the CPU reference on a random grid of problems\n"
               "  --cpu      check the CPU reference itself (no GPU needed)\n"
               "  --quick    fewer cases\n"
               "  --seed N   base seed of the random grid (default 1)\n"
               "  --json F   also write the rows and the summary to F as JSON\n"
               "Pass rule: no NaN / unwritten / out-of-bounds output and\n"
               "  max|out - ref_fp64| <= 2 * max|out_lowp - ref_fp64| + atol  (LSE likewise).\n");
}

inline std::string fmt_e(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3e", x);
  return b;
}

// ---- random problems ----------------------------------------------------------

// GPU grid: shapes as FlashAttention tests them, random features on top.
inline h::Problem random_gpu_problem(std::mt19937_64& rng, uint64_t seed) {
  static const int shapes[][2] = {{1, 1},     {113, 203},   {239, 1},     {128, 217},   {799, 3},
                                  {3, 799},   {640, 128},   {108, 256},   {256, 512},   {512, 256},
                                  {1023, 1024}, {1024, 1023}, {2048, 2048}, {4224, 4224}};
  static const int dims[] = {8, 32, 40, 64, 72, 96, 128, 136, 192, 248, 256};
  auto pick = [&](int n) { return int(std::uniform_int_distribution<int>(0, n - 1)(rng)); };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  h::Problem p;
  p.seed = seed;
  p.dtype = chance(0.5) ? FLASH4_DTYPE_BF16 : FLASH4_DTYPE_FP16;
  p.headdim = dims[pick(int(sizeof dims / sizeof dims[0]))];
  const int hq_choices[] = {1, 2, 4, 8};
  p.heads_q = hq_choices[pick(4)];
  const int ratio_choices[] = {1, 2, 4, 8};
  int r = ratio_choices[pick(4)];
  while (p.heads_q % r) r /= 2;
  p.heads_kv = p.heads_q / r;
  const int si = pick(int(sizeof shapes / sizeof shapes[0]));
  int sq = shapes[si][0], sk = shapes[si][1];
  if (chance(0.25)) {  // varlen
    p.varlen = true;
    p.batch = 1 + pick(6);
    for (int b = 0; b < p.batch; ++b) {
      int lq = std::uniform_int_distribution<int>(0, std::max(1, sq))(rng);
      int lk = std::uniform_int_distribution<int>(0, std::max(1, sk))(rng);
      if (chance(0.15)) lq = 0;
      if (chance(0.15)) lk = 0;
      p.seqlens_q.push_back(lq);
      p.seqlens_k.push_back(lk);
    }
  } else {
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.batch = 1 + pick(3);
  }
  const int mode = pick(6);  // 0,1,2: none; 3: causal; 4: window; 5: causal + left
  if (mode == 3 || mode == 5) p.causal = true;
  if (mode == 4 || mode == 5) {
    const int maxk = std::max(1, p.varlen ? sk : sk);
    p.window_left = std::uniform_int_distribution<int>(0, maxk - 1)(rng);
    if (mode == 4) p.window_right = chance(0.2) ? -1 : std::uniform_int_distribution<int>(0, maxk - 1)(rng);
  }
  if (chance(0.2)) { p.softcap = chance(0.5) ? 5.0 : 30.0; p.input_std = 2.0; }
  if (chance(0.15)) {
    p.seqused_k.resize(size_t(p.batch));
    for (int b = 0; b < p.batch; ++b) {
      const int skb = p.varlen ? p.seqlens_k[size_t(b)] : p.seqlen_k;
      p.seqused_k[size_t(b)] = std::uniform_int_distribution<int>(0, skb)(rng);
    }
  }
  const int lay = pick(8);
  if (lay == 0) p.layout = h::Layout::kHeadMajor;
  if (lay == 1) p.layout = h::Layout::kPadded;
  if (lay == 2 && p.heads_q == p.heads_kv) {
    p.layout = h::Layout::kPackedQKV;
    if (p.varlen) p.seqlens_k = p.seqlens_q;
    else p.seqlen_k = p.seqlen_q;
    if (!p.seqused_k.empty())
      for (int b = 0; b < p.batch; ++b)
        p.seqused_k[size_t(b)] = std::min(p.seqused_k[size_t(b)], p.varlen ? p.seqlens_k[size_t(b)] : p.seqlen_k);
  }
  if (chance(0.1)) p.softmax_scale = 0.5 / std::sqrt(double(p.headdim));
  // Keep the CPU reference affordable: about 4e9 multiply-adds at most.
  auto work = [&]() {
    double w = 0;
    if (p.varlen) {
      for (int b = 0; b < p.batch; ++b) w += double(p.seqlens_q[size_t(b)]) * p.seqlens_k[size_t(b)];
    } else {
      w = double(p.batch) * p.seqlen_q * p.seqlen_k;
    }
    return w * p.heads_q * p.headdim;
  };
  while (work() > 4e9 && p.heads_q > 1) {
    p.heads_q /= 2;
    if (p.heads_kv > p.heads_q) p.heads_kv = p.heads_q;
    if (p.heads_q % p.heads_kv) p.heads_kv = 1;
  }
  while (work() > 4e9 && !p.varlen && p.batch > 1) {
    --p.batch;
    if (!p.seqused_k.empty()) p.seqused_k.resize(size_t(p.batch));
  }
  return p;
}

// CPU grid: the same features on small shapes (the naive check is O(Sq*Sk*D) per head).
inline h::Problem random_cpu_problem(std::mt19937_64& rng, uint64_t seed) {
  h::Problem p = random_gpu_problem(rng, seed);
  auto clamp = [](int x) { return std::min(x, 191); };
  if (p.varlen) {
    for (auto& x : p.seqlens_q) x = clamp(x);
    for (auto& x : p.seqlens_k) x = clamp(x);
    if (p.layout == h::Layout::kPackedQKV) p.seqlens_k = p.seqlens_q;
  } else {
    p.seqlen_q = clamp(p.seqlen_q);
    p.seqlen_k = clamp(p.seqlen_k);
    if (p.layout == h::Layout::kPackedQKV) p.seqlen_k = p.seqlen_q;
  }
  for (int b = 0; b < int(p.seqused_k.size()); ++b)
    p.seqused_k[size_t(b)] = std::min(p.seqused_k[size_t(b)], p.varlen ? p.seqlens_k[size_t(b)] : p.seqlen_k);
  if (p.window_left >= 0) p.window_left = std::min(p.window_left, 200);
  if (p.window_right >= 0) p.window_right = std::min(p.window_right, 200);
  return p;
}

// ---- output --------------------------------------------------------------------------

inline void print_row(const Row& r, bool gpu) {
  if (gpu) {
    std::printf("%-4s %8.3f %10.3e %10.3e %10.3e  %s\n", r.pass ? "PASS" : "FAIL", r.ratio, r.err, r.ref_err,
                r.lse_err, r.desc.c_str());
  } else {
    std::printf("%-4s %8.3f %10.3e %10.3e  %-13s %s\n", r.pass ? "PASS" : "FAIL", r.ratio, r.err, r.ref_err,
                r.check.c_str(), r.desc.c_str());
  }
  if (!r.pass && !r.why.empty()) std::printf("     -> %s\n", r.why.c_str());
  std::fflush(stdout);
}

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') { o += '\\'; o += c; }
    else if (static_cast<unsigned char>(c) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += c;
  }
  return o;
}
inline std::string json_num(double x) {
  if (!std::isfinite(x)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.6e", x);
  return b;
}

inline bool write_json(const std::string& path, const Options& o, const std::vector<Row>& rows, int passed,
                       int failed) {
  std::ofstream f(path);
  if (!f) return false;
  f << "{\n  \"mode\": \"" << (o.cpu ? "cpu" : "gpu") << "\", \"seed\": " << o.seed
    << ", \"quick\": " << (o.quick ? "true" : "false") << ",\n  \"flash4_version\": \"" << flash4_version()
    << "\",\n  \"passed\": " << passed << ", \"failed\": " << failed << ",\n  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    f << "    {\"case\": \"" << json_escape(r.desc) << "\", \"check\": \"" << json_escape(r.check) << "\", ";
    if (o.cpu) {
      f << "\"err\": " << json_num(r.err) << ", \"bound\": " << json_num(r.ref_err);
    } else {
      f << "\"err_kernel\": " << json_num(r.err) << ", \"err_lowp\": " << json_num(r.ref_err)
        << ", \"err_lse\": " << json_num(r.lse_err);
    }
    f << ", \"ratio\": " << json_num(r.ratio) << ", \"pass\": " << (r.pass ? "true" : "false")
      << ", \"why\": \"" << json_escape(r.why) << "\"}" << (i + 1 < rows.size() ? "," : "") << "\n";
  }
  f << "  ]\n}\n";
  return bool(f);
}

// ---- CPU checks -----------------------------------------------------------------------

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

// Data of a derived case: the logical inputs of `hc` rearranged.
inline h::HostCase derived_gqa_as_mha(const h::HostCase& hc) {
  h::Problem p = hc.p;
  const int H = p.heads_q, Hk = p.heads_kv, G = H / Hk, D = p.headdim;
  p.heads_kv = H;
  if (p.layout == h::Layout::kPackedQKV) p.layout = h::Layout::kContiguous;
  std::vector<uint16_t> k(size_t(hc.rows_k) * H * D), v(k.size());
  for (int64_t r = 0; r < hc.rows_k; ++r)
    for (int hh = 0; hh < H; ++hh)
      for (int d = 0; d < D; ++d) {
        const size_t src = size_t((r * Hk + hh / G) * D + d), dst = size_t((r * H + hh) * D + d);
        k[dst] = hc.k_log[src];
        v[dst] = hc.v_log[src];
      }
  return h::make_case_from(p, hc.q_log, std::move(k), std::move(v));
}

inline h::HostCase derived_dense(const h::HostCase& hc) {
  h::Problem p = hc.p;
  p.layout = h::Layout::kContiguous;
  return h::make_case_from(p, hc.q_log, hc.k_log, hc.v_log);
}

inline h::HostCase derived_window(const h::HostCase& hc) {
  h::Problem p = hc.p;
  p.causal = false;
  p.window_right = 0;
  return h::make_case_from(p, hc.q_log, hc.k_log, hc.v_log);
}

// Sequence b of a varlen case as a batched B=1 problem.
inline h::HostCase derived_sequence(const h::HostCase& hc, int b) {
  h::Problem p = hc.p;
  const int H = p.heads_q, Hk = p.heads_kv, D = p.headdim;
  p.varlen = false;
  p.batch = 1;
  p.seqlen_q = hc.sq[size_t(b)];
  p.seqlen_k = hc.sk[size_t(b)];
  p.seqlens_q.clear();
  p.seqlens_k.clear();
  if (!p.seqused_k.empty()) p.seqused_k = {hc.p.seqused_k[size_t(b)]};
  auto slice = [&](const std::vector<uint16_t>& src, int64_t start, int64_t rows, int heads) {
    return std::vector<uint16_t>(src.begin() + start * heads * D, src.begin() + (start + rows) * heads * D);
  };
  return h::make_case_from(p, slice(hc.q_log, hc.q_start[size_t(b)], hc.sq[size_t(b)], H),
                           slice(hc.k_log, hc.k_start[size_t(b)], hc.sk[size_t(b)], Hk),
                           slice(hc.v_log, hc.k_start[size_t(b)], hc.sk[size_t(b)], Hk));
}

// Expected range of err(LOWP vs FP64); see the header comment.
inline void lowp_range(const h::HostCase& hc, const h::Reference& ref, double* lo, double* hi, double* lse_hi) {
  const h::Problem& p = hc.p;
  const double u = h::unit_roundoff(p.dtype), u32 = h::kEps32;
  double rho = 0;
  for (double x : ref.out64)
    if (std::isfinite(x)) rho = std::max(rho, std::fabs(double(h::round_to(p.dtype, float(x))) - x));
  *lo = 0.5 * rho;
  double vmax = 0;
  for (uint16_t x : hc.v_log) vmax = std::max(vmax, std::fabs(double(h::half_to_float(p.dtype, x))));
  const double omax = max_abs(ref.out64);
  // Largest |score| bound: scale * max|q| * max|k| (2-norms).
  double qmax = 0, kmax = 0;
  const int D = p.headdim;
  for (size_t r = 0; r < hc.q_log.size() / size_t(D); ++r) {
    double s = 0;
    for (int d = 0; d < D; ++d) { const double x = h::half_to_float(p.dtype, hc.q_log[r * size_t(D) + size_t(d)]); s += x * x; }
    qmax = std::max(qmax, std::sqrt(s));
  }
  for (size_t r = 0; r < hc.k_log.size() / size_t(D); ++r) {
    double s = 0;
    for (int d = 0; d < D; ++d) { const double x = h::half_to_float(p.dtype, hc.k_log[r * size_t(D) + size_t(d)]); s += x * x; }
    kmax = std::max(kmax, std::sqrt(s));
  }
  const double smax = std::fabs(p.scale()) * qmax * kmax;
  const double max_sk = double(hc.max_sk);
  // Score error (fp32 dot product, scaling, softcap's tanh): relative error
  // of each P_j; the output (a ratio of sums of P_j) moves by twice that.
  const double ds = D * u32 * smax + 16 * u32 * (smax + p.softcap);
  const double fp32 = 2.0 * ds * vmax * 2.0 + 2.0 * (max_sk + 8) * u32 * (vmax + omax);
  // P rounded to the dtype (relative u each): a weighted mean with weights
  // off by a factor (1 +- u) moves by <= u/(1-u) * max|v - out|; the output
  // rounding adds u * |out|.
  *hi = 1.01 * u * (vmax + 2.0 * omax) + fp32;
  *lse_hi = ds + (max_sk + 8) * u32 + 8 * u32 * (1 + std::fabs(smax) + std::log1p(max_sk));
}

inline void cpu_checks(const h::Problem& p, std::vector<Row>* rows) {
  const std::string desc = h::describe(p);
  auto add = [&](const std::string& check, double err, double bound, bool ok, const std::string& why) {
    Row r;
    r.desc = desc;
    r.check = check;
    r.err = err;
    r.ref_err = bound;
    r.ratio = bound > 0 ? err / bound : (err == 0 ? 0 : INFINITY);
    r.pass = ok;
    r.why = ok ? "" : why;
    rows->push_back(r);
    print_row(r, false);
  };
  try {
    h::HostCase hc = h::make_case(p);
    h::Reference ref = h::run_reference(hc);
    h::NaiveResult nr = h::naive_fwd64(hc, &ref.out64, &ref.lse64);

    // lowp-range
    double lo = 0, hi = 0, lse_hi = 0;
    lowp_range(hc, ref, &lo, &hi, &lse_hi);
    double e_l = 0, e_lse = 0;
    int64_t bad_inf = 0;
    for (size_t i = 0; i < ref.out64.size(); ++i) {
      const double l = h::half_to_float(p.dtype, ref.out_lowp[i]);
      const double d = std::fabs(l - ref.out64[i]);
      e_l = std::isfinite(d) ? std::max(e_l, d) : INFINITY;
    }
    for (size_t i = 0; i < ref.lse64.size(); ++i) {
      const double a = ref.lse64[i], b = ref.lse_lowp[i];
      if (std::isinf(a) || std::isinf(b)) { if (a != b) ++bad_inf; continue; }
      const double d = std::fabs(a - b);
      e_lse = std::isfinite(d) ? std::max(e_lse, d) : INFINITY;
    }
    {
      std::string why;
      if (!(e_l <= hi)) why = "err(lowp) " + fmt_e(e_l) + " above the bound " + fmt_e(hi);
      else if (!(e_l >= lo)) why = "err(lowp) " + fmt_e(e_l) + " below half the output rounding " + fmt_e(lo) +
                                  ": LOWP does not round its output";
      else if (!(e_lse <= lse_hi)) why = "LSE err(lowp) " + fmt_e(e_lse) + " above " + fmt_e(lse_hi);
      else if (bad_inf) why = std::to_string(bad_inf) + " LSE -inf mismatches between LOWP and FP64";
      add("lowp-range", e_l, hi, why.empty(), why);
    }
    // naive
    {
      const double eo = h::max_abs_diff(ref.out64, nr.out), el = h::max_abs_diff(ref.lse64, nr.lse);
      const double e = std::max(eo, el), bound = 1e-10;
      add("naive", e, bound, e <= bound, "FP64 reference differs from the naive float64 attention (out " +
                                             fmt_e(eo) + ", lse " + fmt_e(el) + ")");
    }
    // lse-identity
    {
      const double e = std::max(nr.identity_sum_err, nr.identity_out_err), bound = 1e-10;
      add("lse-identity", e, bound, e <= bound,
          "sum exp(s - lse) - 1 = " + fmt_e(nr.identity_sum_err) + ", sum exp(s - lse) v - out = " +
              fmt_e(nr.identity_out_err));
    }
    // Derived cases: FP64 must agree to rounding noise, LOWP to one unit of the dtype at the output scale.
    auto compare = [&](const char* name, const h::HostCase& other_hc, const h::Reference& other,
                       const std::vector<size_t>* out_map, const std::vector<size_t>* lse_map) {
      double e64 = 0, el = 0;
      for (size_t i = 0; i < other.out64.size(); ++i) {
        const size_t j = out_map ? (*out_map)[i] : i;
        const double d = std::fabs(other.out64[i] - ref.out64[j]);
        e64 = std::isfinite(d) ? std::max(e64, d) : INFINITY;
        const double dl = std::fabs(double(h::half_to_float(p.dtype, other.out_lowp[i])) -
                                    double(h::half_to_float(p.dtype, ref.out_lowp[j])));
        el = std::isfinite(dl) ? std::max(el, dl) : INFINITY;
      }
      for (size_t i = 0; i < other.lse64.size(); ++i) {
        const size_t j = lse_map ? (*lse_map)[i] : i;
        const double a = other.lse64[i], b = ref.lse64[j];
        const double d = (std::isinf(a) || std::isinf(b)) ? (a == b ? 0.0 : INFINITY) : std::fabs(a - b);
        e64 = std::isnan(d) ? INFINITY : std::max(e64, d);
      }
      (void)other_hc;
      const double bound = 1e-12, lbound = 2 * h::unit_roundoff(p.dtype) * std::max(1.0, max_abs(ref.out64));
      add(name, e64, bound, e64 <= bound && el <= lbound,
          std::string("FP64 differs by ") + fmt_e(e64) + ", LOWP by " + fmt_e(el) + " (bound " + fmt_e(lbound) + ")");
    };
    if (p.heads_q != p.heads_kv) {
      h::HostCase m = derived_gqa_as_mha(hc);
      compare("gqa=mha", m, h::run_reference(m), nullptr, nullptr);
    }
    if (p.layout != h::Layout::kContiguous) {
      h::HostCase d = derived_dense(hc);
      compare("layout=dense", d, h::run_reference(d), nullptr, nullptr);
    }
    if (p.causal) {
      h::HostCase w = derived_window(hc);
      compare("causal=window", w, h::run_reference(w), nullptr, nullptr);
    }
    if (p.varlen) {
      // All sequences, one row for the whole batch.
      double worst64 = 0;
      bool ok = true;
      std::string why;
      for (int b = 0; b < hc.batch; ++b) {
        h::HostCase s = derived_sequence(hc, b);
        h::Reference rs = h::run_reference(s);
        const int H = p.heads_q, D = p.headdim;
        for (int64_t i = 0; i < hc.sq[size_t(b)]; ++i)
          for (int hh = 0; hh < H; ++hh) {
            for (int d = 0; d < D; ++d) {
              const double a = rs.out64[size_t(s.out_index(i, hh, d))];
              const double c = ref.out64[size_t(hc.out_index(hc.q_start[size_t(b)] + i, hh, d))];
              const double dd = std::fabs(a - c);
              worst64 = std::isfinite(dd) ? std::max(worst64, dd) : INFINITY;
              if (rs.out_lowp[size_t(s.out_index(i, hh, d))] !=
                  ref.out_lowp[size_t(hc.out_index(hc.q_start[size_t(b)] + i, hh, d))] &&
                  std::fabs(double(h::half_to_float(p.dtype, rs.out_lowp[size_t(s.out_index(i, hh, d))])) -
                            double(h::half_to_float(p.dtype, ref.out_lowp[size_t(hc.out_index(hc.q_start[size_t(b)] + i, hh, d))]))) >
                      2 * h::unit_roundoff(p.dtype) * std::max(1.0, std::fabs(c))) {
                ok = false;
                why = "LOWP of sequence " + std::to_string(b) + " differs from the batched run";
              }
            }
            const double a = rs.lse64[size_t(s.lse_index(0, i, hh))], c = ref.lse64[size_t(hc.lse_index(b, i, hh))];
            const double dd = (std::isinf(a) || std::isinf(c)) ? (a == c ? 0.0 : INFINITY) : std::fabs(a - c);
            worst64 = std::isnan(dd) ? INFINITY : std::max(worst64, dd);
          }
      }
      if (!(worst64 <= 1e-12)) { ok = false; why = "FP64 of a sequence differs from the batched run by " + fmt_e(worst64); }
      add("varlen=batch", worst64, 1e-12, ok, why);
    }
  } catch (const std::exception& e) {
    add("error", INFINITY, 0, false, e.what());
  }
}

// ---- GPU case -----------------------------------------------------------------------

inline Row gpu_case(const h::Problem& p) {
  Row r;
  r.desc = h::describe(p);
  r.check = "fwd";
  try {
    h::FwdResult res = h::run_gpu_fwd(p);
    r.err = res.err_kernel;
    r.ref_err = res.err_lowp;
    r.ratio = res.ratio;
    r.lse_err = res.err_lse_kernel;
    r.pass = res.pass;
    if (!res.pass) r.why = res.why + (res.status != FLASH4_OK ? ": " + res.message : "") + " | " + res.numbers();
  } catch (const std::exception& e) {
    r.err = r.ref_err = r.ratio = INFINITY;
    r.pass = false;
    r.why = e.what();
  }
  print_row(r, true);
  return r;
}

inline bool parse_args(int argc, char** argv, Options* o, std::string* err, bool* help) {
  int i = 0;
  if (argc > 0 && argv[0] && std::strcmp(argv[0], "check") == 0) i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cpu") o->cpu = true;
    else if (a == "--quick") o->quick = true;
    else if (a == "--help" || a == "-h") *help = true;
    else if (a == "--seed" || a == "--json") {
      if (i + 1 >= argc) { *err = a + " needs a value"; return false; }
      const std::string val = argv[++i];
      if (a == "--json") { o->json = val; continue; }
      char* end = nullptr;
      errno = 0;
      const unsigned long long s = std::strtoull(val.c_str(), &end, 0);
      if (val.empty() || *end != '\0' || errno != 0 || val[0] == '-') { *err = "--seed: not a number: " + val; return false; }
      o->seed = s;
    } else {
      *err = "unknown argument: " + a;
      return false;
    }
  }
  return true;
}

}  // namespace check_cli
}  // namespace flash4

inline int flash4_cli_check(int argc, char** argv) {
  namespace c = ::flash4::check_cli;
  namespace h = ::flash4::harness;
  c::Options o;
  std::string err;
  bool help = false;
  if (!c::parse_args(argc, argv, &o, &err, &help)) {
    std::fprintf(stderr, "flash4 check: %s\n", err.c_str());
    c::print_usage(stderr);
    return 2;
  }
  if (help) {
    c::print_usage(stdout);
    return 0;
  }
  if (!o.cpu) {
    std::string why;
    if (!h::cuda_device_available(&why)) {
      std::fprintf(stderr,
                   "flash4 check: no CUDA device found (%s).\n"
                   "The GPU check needs a GPU; use `flash4 check --cpu` to check the CPU reference.\n",
                   why.c_str());
      return 2;
    }
  }
  const int n = o.cpu ? (o.quick ? 12 : 40) : (o.quick ? 16 : 64);
  std::printf("flash4 %s check (%s): %d random cases, seed %llu\n", flash4_version(),
              o.cpu ? "CPU reference" : "GPU forward vs CPU reference", n, static_cast<unsigned long long>(o.seed));
  if (o.cpu)
    std::printf("%-4s %8s %10s %10s  %-13s %s\n", "", "err/bnd", "err", "bound", "check", "case");
  else
    std::printf("%-4s %8s %10s %10s %10s  %s\n", "", "ratio", "err_kernel", "err_lowp", "err_lse", "case");
  std::mt19937_64 rng(o.seed);
  std::vector<c::Row> rows;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    const uint64_t seed = h::mix_seed(o.seed, uint64_t(i));
    if (o.cpu) {
      c::cpu_checks(c::random_cpu_problem(rng, seed), &rows);
    } else {
      rows.push_back(c::gpu_case(c::random_gpu_problem(rng, seed)));
    }
  }
  int passed = 0, failed = 0;
  double worst_ratio = 0;
  for (const auto& r : rows) {
    (r.pass ? passed : failed)++;
    if (!o.cpu && std::isfinite(r.ratio)) worst_ratio = std::max(worst_ratio, r.ratio);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.cpu)
    std::printf("%d passed, %d failed (%.1f s)\n", passed, failed, secs);
  else
    std::printf("%d passed, %d failed (worst err_kernel/err_lowp %.3f, %.1f s)\n", passed, failed, worst_ratio, secs);
  if (!o.json.empty() && !c::write_json(o.json, o, rows, passed, failed)) {
    std::fprintf(stderr, "flash4 check: cannot write %s\n", o.json.c_str());
    return 2;
  }
  return failed ? 1 : 0;
}
