// `flash4 bench`: TFLOP/s of the forward (or backward) over a sweep of
// shapes, and the environment facts that go with each record (device,
// driver, CUDA, commit, date). Used by tools/flash4_cli.cpp only.
//
// Method: inputs are seeded random normals (never zeros) uploaded once;
// enough input sets are allocated to exceed 100 MB in total and the timed
// calls rotate among them, so repeated calls do not run from L2. Each call
// is bracketed by CUDA events on one stream; after a warm-up, the median
// of the per-call times is reported.
// FLOPs: 4*B*H*Sq*Sk*D (two matmuls), halved for causal, x2.5 for backward.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "flash4/flash4.h"
#include "harness.hpp"

#ifndef FLASH4_GIT_COMMIT
#define FLASH4_GIT_COMMIT "unknown"
#endif

namespace flash4 {
namespace cli {

namespace hn = ::flash4::harness;

// ---- environment facts ------------------------------------------------

// "13.0" from a CUDA version integer such as 13000.
inline std::string cuda_version_text(int v) {
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

// NVIDIA driver release (e.g. "580.159.04") from /proc/driver/nvidia/version,
// or "unknown".
inline std::string driver_release() {
  std::ifstream f("/proc/driver/nvidia/version");
  std::string line;
  if (!f || !std::getline(f, line)) return "unknown";
  std::istringstream words(line);
  std::string w;
  bool after_module = false;
  while (words >> w) {
    if (w == "Module") after_module = true;
    if (!after_module || w.empty() || !std::isdigit(static_cast<unsigned char>(w[0]))) continue;
    if (w.find('.') != std::string::npos) return w;
  }
  return "unknown";
}

// Commit baked in at configure time; the environment variable
// FLASH4_GIT_COMMIT fills it in when the build tree had no git metadata.
inline std::string git_commit() {
  std::string c = FLASH4_GIT_COMMIT;
  const char* env = std::getenv("FLASH4_GIT_COMMIT");
  if ((c.empty() || c == "unknown") && env && *env) c = env;
  return c.empty() ? "unknown" : c;
}

inline std::string utc_now_iso() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o;
}

// ---- command-line helpers -----------------------------------------------

inline bool parse_int_list(const std::string& text, std::vector<int>* out) {
  out->clear();
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v > (1L << 30)) return false;
    out->push_back(int(v));
  }
  return !out->empty();
}

// ---- bench ------------------------------------------------------------------

struct BenchOptions {
  std::vector<int> headdims{64, 128};
  std::vector<int> seqlens{512, 1024, 2048, 4096, 8192, 16384};
  std::vector<int> causal{0, 1};
  std::vector<int> deterministic{0};  // bwd: 0, 1 or both (rows side by side)
  double softcap = 0;                 // 0: off
  flash4_dtype dtype = FLASH4_DTYPE_BF16;
  flash4_path path = FLASH4_PATH_AUTO;
  bool backward = false;
  long tokens = 16384;
  long hidden = 2048;
  int warmup = 10;
  int iters = 30;
  int device = 0;
  std::string json;
};

inline void bench_usage(FILE* f) {
  std::fprintf(f,
      "usage: flash4 bench [options]\n"
      "Times the forward (or backward) over a sweep of shapes and prints TFLOP/s.\n"
      "Shapes: layout (batch, seqlen, heads, headdim), Sq = Sk = seqlen,\n"
      "batch = tokens/seqlen, heads = hidden/headdim (Hq = Hkv).\n"
      "  --headdim LIST     head dims (default 64,128)\n"
      "  --seqlen LIST      sequence lengths (default 512,1024,2048,4096,8192,16384)\n"
      "  --causal LIST      0, 1 or 0,1 (default 0,1)\n"
      "  --dtype bf16|fp16  (default bf16)\n"
      "  --path auto|portable|sm90   (default auto)\n"
      "  --mode fwd|bwd     (default fwd)\n"
      "  --deterministic LIST  bwd only: 0, 1 or 0,1 (default 0); 1 = bitwise\n"
      "                     reproducible dq (impl gets a -det suffix)\n"
      "  --softcap X        scores through X*tanh(s/X) (default 0: off; impl gets a\n"
      "                     -softcap suffix)\n"
      "  --tokens N         total tokens per call (default 16384)\n"
      "  --hidden N         heads * headdim (default 2048)\n"
      "  --warmup N         untimed calls per shape (default 10)\n"
      "  --iters N          timed calls per shape; the median is reported (default 30)\n"
      "  --device N         CUDA device ordinal (default 0)\n"
      "  --json FILE        append one JSON line per shape to FILE\n"
      "Timing: CUDA events around each call, inputs seeded random normals rotated\n"
      "among enough sets to exceed 100 MB. FLOPs 4*B*H*Sq*Sk*D, /2 causal, x2.5 bwd.\n"
      "Exit status: 0 all shapes measured, 1 a call failed, 2 no CUDA device,\n"
      "3 some shapes not supported (none failed), 4 bad usage.\n");
}

// Returns 0 on success, 4 (after a message) on bad usage, -1 for --help.
inline int parse_bench_options(int argc, char** argv, BenchOptions* o) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") return -1;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "flash4 bench: %s needs a value (see flash4 bench --help)\n", a.c_str());
      return 4;
    }
    std::string v = argv[++i];
    bool ok = true;
    auto positive = [&](long* dst) {
      char* end = nullptr;
      long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || x < 0) return false;
      *dst = x;
      return true;
    };
    long n = 0;
    if (a == "--headdim") {
      ok = parse_int_list(v, &o->headdims);
    } else if (a == "--seqlen") {
      ok = parse_int_list(v, &o->seqlens);
    } else if (a == "--causal") {
      ok = parse_int_list(v, &o->causal) &&
           std::all_of(o->causal.begin(), o->causal.end(), [](int c) { return c == 0 || c == 1; });
    } else if (a == "--deterministic") {
      ok = parse_int_list(v, &o->deterministic) &&
           std::all_of(o->deterministic.begin(), o->deterministic.end(), [](int x) { return x == 0 || x == 1; });
    } else if (a == "--softcap") {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      ok = !v.empty() && *end == '\0' && std::isfinite(x) && x >= 0;
      o->softcap = x;
    } else if (a == "--dtype") {
      ok = v == "bf16" || v == "fp16";
      o->dtype = v == "fp16" ? FLASH4_DTYPE_FP16 : FLASH4_DTYPE_BF16;
    } else if (a == "--path") {
      ok = v == "auto" || v == "portable" || v == "sm90";
      o->path = v == "portable" ? FLASH4_PATH_PORTABLE : v == "sm90" ? FLASH4_PATH_SM90 : FLASH4_PATH_AUTO;
    } else if (a == "--mode") {
      ok = v == "fwd" || v == "bwd";
      o->backward = v == "bwd";
    } else if (a == "--tokens") {
      ok = positive(&o->tokens) && o->tokens > 0;
    } else if (a == "--hidden") {
      ok = positive(&o->hidden) && o->hidden > 0;
    } else if (a == "--warmup") {
      ok = positive(&n) && n <= 100000;
      o->warmup = int(n);
    } else if (a == "--iters") {
      ok = positive(&n) && n >= 1 && n <= 100000;
      o->iters = int(n);
    } else if (a == "--device") {
      ok = positive(&n) && n < 1024;
      o->device = int(n);
    } else if (a == "--json") {
      o->json = v;
    } else {
      std::fprintf(stderr, "flash4 bench: unknown option %s (see flash4 bench --help)\n", a.c_str());
      return 4;
    }
    if (!ok) {
      std::fprintf(stderr, "flash4 bench: bad value '%s' for %s (see flash4 bench --help)\n", v.c_str(),
                   a.c_str());
      return 4;
    }
  }
  for (int s : o->seqlens)
    if (s <= 0) { std::fprintf(stderr, "flash4 bench: seqlen must be > 0\n"); return 4; }
  for (int d : o->headdims)
    if (d <= 0) { std::fprintf(stderr, "flash4 bench: headdim must be > 0\n"); return 4; }
  if (!o->backward && std::any_of(o->deterministic.begin(), o->deterministic.end(), [](int x) { return x != 0; })) {
    std::fprintf(stderr, "flash4 bench: --deterministic 1 needs --mode bwd\n");
    return 4;
  }
  return 0;
}

struct Shape {
  int64_t batch, seqlen, heads, headdim;
  int64_t elems() const { return batch * seqlen * heads * headdim; }
  int64_t lse_elems() const { return batch * heads * seqlen; }
};

inline Shape bench_shape(const BenchOptions& o, int seqlen, int headdim) {
  return Shape{std::max<int64_t>(1, o.tokens / seqlen), seqlen, std::max<int64_t>(1, o.hidden / headdim),
               headdim};
}

inline double attention_flops(const Shape& s, bool causal, bool backward) {
  double f = 4.0 * double(s.batch) * double(s.heads) * double(s.seqlen) * double(s.seqlen) * double(s.headdim);
  if (causal) f *= 0.5;
  if (backward) f *= 2.5;
  return f;
}

// One set of device tensors for a call; rotated among to defeat L2.
struct BenchSet {
  hn::DeviceBuffer q, k, v, out, lse, dout, dq, dk, dv;
};

class EventPair {
 public:
  EventPair() {
    FLASH4_HARNESS_CUDA(cudaEventCreate(&start_));
    FLASH4_HARNESS_CUDA(cudaEventCreate(&stop_));
  }
  ~EventPair() {
    if (start_) (void)cudaEventDestroy(start_);
    if (stop_) (void)cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }
  float ms() const {
    float t = 0.f;
    FLASH4_HARNESS_CUDA(cudaEventElapsedTime(&t, start_, stop_));
    return t;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

struct BenchRow {
  std::string impl, status, reason;
  Shape shape{};
  bool causal = false;
  bool deterministic = false;
  double ms = 0, tflops = 0;
};

struct BenchContext {
  std::string device_name, driver, cuda, runtime, commit;
};

inline std::string json_line(const BenchOptions& o, const BenchContext& c, const BenchRow& r) {
  std::ostringstream js;
  char num[64];
  js << "{\"impl\":\"" << json_escape(r.impl) << "\",\"mode\":\"" << (o.backward ? "bwd" : "fwd")
     << "\",\"headdim\":" << r.shape.headdim << ",\"causal\":" << (r.causal ? "true" : "false")
     << ",\"seqlen\":" << r.shape.seqlen << ",\"batch\":" << r.shape.batch << ",\"heads\":" << r.shape.heads
     << ",\"dtype\":\"" << hn::dtype_name(o.dtype) << "\"";
  if (o.backward) js << ",\"deterministic\":" << (r.deterministic ? "true" : "false");
  if (o.softcap > 0) {
    std::snprintf(num, sizeof num, "%g", o.softcap);
    js << ",\"softcap\":" << num;
  }
  if (r.status == "ok") {
    std::snprintf(num, sizeof num, "%.6f", r.ms);
    js << ",\"ms\":" << num;
    std::snprintf(num, sizeof num, "%.3f", r.tflops);
    js << ",\"tflops\":" << num;
  } else {
    js << ",\"ms\":null,\"tflops\":null";
  }
  js << ",\"status\":\"" << r.status << "\"";
  if (!r.reason.empty()) js << ",\"reason\":\"" << json_escape(r.reason) << "\"";
  js << ",\"device\":\"" << json_escape(c.device_name) << "\",\"driver\":\"" << json_escape(c.driver)
     << "\",\"cuda\":\"" << c.cuda << "\",\"cuda_runtime\":\"" << c.runtime << "\",\"commit\":\""
     << json_escape(c.commit) << "\",\"date\":\"" << utc_now_iso() << "\",\"timer\":\"cuda-events median of "
     << o.iters << " after " << o.warmup << " warm-up\"}";
  return js.str();
}

// Fills the args of one call on set `s`.
inline void bench_args(const BenchOptions& o, const Shape& sh, bool causal, bool deterministic, BenchSet& s,
                       flash4_fwd_args* fa, flash4_bwd_args* ba) {
  const flash4_dtype dt = o.dtype;
  std::initializer_list<int64_t> shape = {sh.batch, sh.seqlen, sh.heads, sh.headdim};
  std::initializer_list<int64_t> lse_shape = {sh.batch, sh.heads, sh.seqlen};
  flash4_attn_options opt;
  std::memset(&opt, 0, sizeof opt);
  opt.causal = causal ? 1 : 0;
  opt.window_left = -1;
  opt.window_right = -1;
  opt.path = o.path;
  opt.softcap = o.softcap;
  std::memset(fa, 0, sizeof *fa);
  fa->q = hn::dense_tensor(s.q.data(), dt, shape);
  fa->k = hn::dense_tensor(s.k.data(), dt, shape);
  fa->v = hn::dense_tensor(s.v.data(), dt, shape);
  fa->out = hn::dense_tensor(s.out.data(), dt, shape);
  fa->lse = hn::dense_tensor(s.lse.data(), FLASH4_DTYPE_FP32, lse_shape);
  fa->opt = opt;
  if (ba) {
    std::memset(ba, 0, sizeof *ba);
    ba->dout = hn::dense_tensor(s.dout.data(), dt, shape);
    ba->q = fa->q;
    ba->k = fa->k;
    ba->v = fa->v;
    ba->out = fa->out;
    ba->lse = fa->lse;
    ba->dq = hn::dense_tensor(s.dq.data(), dt, shape);
    ba->dk = hn::dense_tensor(s.dk.data(), dt, shape);
    ba->dv = hn::dense_tensor(s.dv.data(), dt, shape);
    ba->opt = opt;
    ba->deterministic = deterministic ? 1 : 0;
  }
}

inline std::string status_text(flash4_status st) {
  return std::string(flash4_status_string(st)) + ": " + flash4_last_error();
}

// Measures one shape; fills row.status ("ok", "not_supported", "error").
inline void bench_one(const BenchOptions& o, const Shape& sh, bool causal, bool deterministic,
                      std::vector<BenchSet>& sets, hn::DeviceBuffer& workspace, const hn::Stream& stream,
                      BenchRow* row) {
  const std::string suffix =
      std::string(deterministic ? "-det" : "") + (o.softcap > 0 ? "-softcap" : "");
  row->shape = sh;
  row->causal = causal;
  row->deterministic = deterministic;
  row->impl = std::string("flash4-") + flash4_path_name(o.path) + suffix;
  std::vector<flash4_fwd_args> fa(sets.size());
  std::vector<flash4_bwd_args> ba(sets.size());
  for (size_t i = 0; i < sets.size(); ++i)
    bench_args(o, sh, causal, deterministic, sets[i], &fa[i], o.backward ? &ba[i] : nullptr);

  flash4_support sup{};
  flash4_status st = o.backward ? flash4_bwd_supported(&ba[0], o.device, &sup)
                                : flash4_fwd_supported(&fa[0], o.device, &sup);
  if (st != FLASH4_OK) { row->status = "error"; row->reason = status_text(st); return; }
  if (sup.path == FLASH4_PATH_NONE) { row->status = "not_supported"; row->reason = sup.reason; return; }
  row->impl = std::string("flash4-") + flash4_path_name(sup.path) + suffix;

  size_t ws = 0, fwd_ws = 0;
  st = flash4_fwd_workspace_size(&fa[0], &fwd_ws);
  if (st == FLASH4_OK && o.backward) st = flash4_bwd_workspace_size(&ba[0], &ws);
  if (st != FLASH4_OK) { row->status = "error"; row->reason = status_text(st); return; }
  ws = std::max(ws, fwd_ws);
  if (ws > workspace.bytes()) workspace = hn::DeviceBuffer(ws);

  auto call = [&](size_t i) {
    flash4_stream s = reinterpret_cast<flash4_stream>(stream.get());
    return o.backward ? flash4_bwd(&ba[i], workspace.data(), workspace.bytes(), s)
                      : flash4_fwd(&fa[i], workspace.data(), workspace.bytes(), s);
  };
  if (o.backward) {  // out and lse of each set come from a forward
    for (size_t i = 0; i < sets.size(); ++i) {
      st = flash4_fwd(&fa[i], workspace.data(), workspace.bytes(), reinterpret_cast<flash4_stream>(stream.get()));
      if (st != FLASH4_OK) { row->status = "error"; row->reason = "forward before backward: " + status_text(st); return; }
    }
  }
  for (int i = 0; i < o.warmup; ++i) {
    if ((st = call(size_t(i) % sets.size())) != FLASH4_OK) { row->status = "error"; row->reason = status_text(st); return; }
  }
  stream.sync();
  std::vector<EventPair> ev(size_t(o.iters));
  for (int i = 0; i < o.iters; ++i) {
    FLASH4_HARNESS_CUDA(cudaEventRecord(ev[i].start(), stream.get()));
    if ((st = call(size_t(i) % sets.size())) != FLASH4_OK) { row->status = "error"; row->reason = status_text(st); return; }
    FLASH4_HARNESS_CUDA(cudaEventRecord(ev[i].stop(), stream.get()));
  }
  stream.sync();
  std::vector<double> ms;
  for (auto& e : ev) ms.push_back(e.ms());
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  row->ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  row->tflops = attention_flops(sh, causal, o.backward) / (row->ms * 1e-3) / 1e12;
  row->status = "ok";
}

inline int bench_main(int argc, char** argv) {
  BenchOptions o;
  int rc = parse_bench_options(argc, argv, &o);
  if (rc == -1) { bench_usage(stdout); return 0; }
  if (rc != 0) return rc;

  std::string why;
  if (!hn::cuda_device_available(&why)) {
    std::printf("no CUDA device found: bench needs a GPU\n");
    std::fflush(stdout);
    std::fprintf(stderr, "(%s)\n", why.c_str());
    return 2;
  }
  int count = 0;
  FLASH4_HARNESS_CUDA(cudaGetDeviceCount(&count));
  if (o.device >= count) {
    std::fprintf(stderr, "flash4 bench: --device %d but only %d CUDA device(s)\n", o.device, count);
    return 4;
  }
  FLASH4_HARNESS_CUDA(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  FLASH4_HARNESS_CUDA(cudaGetDeviceProperties(&prop, o.device));
  int rt = 0;
  FLASH4_HARNESS_CUDA(cudaRuntimeGetVersion(&rt));
  BenchContext ctx{prop.name, driver_release(), cuda_version_text(CUDART_VERSION), cuda_version_text(rt),
                   git_commit()};

  // Largest tensor over the sweep; every shape uses the same buffers.
  int64_t max_elems = 0, max_lse = 0;
  for (int d : o.headdims)
    for (int s : o.seqlens) {
      Shape sh = bench_shape(o, s, d);
      max_elems = std::max(max_elems, sh.elems());
      max_lse = std::max(max_lse, sh.lse_elems());
    }
  const size_t tensor_bytes = size_t(max_elems) * 2;
  const size_t n_rand = o.backward ? 4 : 3;   // q k v (dout)
  const size_t n_out = o.backward ? 4 : 1;    // out (dq dk dv)
  const size_t set_bytes = (n_rand + n_out) * tensor_bytes + size_t(max_lse) * 4;
  size_t n_sets = std::min<size_t>(8, std::max<size_t>(1, (100u << 20) / std::max<size_t>(1, set_bytes) + 1));
  if (set_bytes >= (100u << 20)) n_sets = 1;
  size_t free_b = 0, total_b = 0;
  FLASH4_HARNESS_CUDA(cudaMemGetInfo(&free_b, &total_b));
  while (n_sets > 1 && n_sets * set_bytes > free_b * 9 / 10) --n_sets;
  if (set_bytes > free_b * 9 / 10) {
    std::fprintf(stderr, "flash4 bench: one input set needs %.1f MiB, the device has %.1f MiB free\n",
                 set_bytes / 1048576.0, free_b / 1048576.0);
    return 1;
  }

  std::printf("# flash4 bench: %s (cc %d.%d, %d SMs), driver %s, CUDA %s (runtime %s), commit %s\n",
              ctx.device_name.c_str(), prop.major, prop.minor, prop.multiProcessorCount, ctx.driver.c_str(),
              ctx.cuda.c_str(), ctx.runtime.c_str(), ctx.commit.c_str());
  std::string det_list;
  for (int x : o.deterministic) det_list += (det_list.empty() ? "" : ",") + std::to_string(x);
  char softcap_text[48] = "";
  if (o.softcap > 0) std::snprintf(softcap_text, sizeof softcap_text, ", softcap %g", o.softcap);
  std::printf("# mode %s%s%s, dtype %s, path %s, tokens %ld, hidden %ld, %zu input set(s) of %.0f MiB, "
              "median of %d after %d warm-up\n",
              o.backward ? "bwd" : "fwd", o.backward ? (", deterministic " + det_list).c_str() : "", softcap_text,
              hn::dtype_name(o.dtype), flash4_path_name(o.path), o.tokens, o.hidden, n_sets, set_bytes / 1048576.0,
              o.iters, o.warmup);
  std::fflush(stdout);

  std::vector<BenchSet> sets(n_sets);
  std::mt19937_64 rng(0x5eed5eedull);
  for (auto& s : sets) {
    auto fill = [&](hn::DeviceBuffer& b) {
      b = hn::DeviceBuffer(tensor_bytes);
      std::vector<uint16_t> h = hn::random_halves(size_t(max_elems), o.dtype, 1.0, rng);
      b.upload(h.data(), tensor_bytes);
    };
    fill(s.q);
    fill(s.k);
    fill(s.v);
    s.out = hn::DeviceBuffer(tensor_bytes);
    s.lse = hn::DeviceBuffer(size_t(max_lse) * 4);
    if (o.backward) {
      fill(s.dout);
      s.dq = hn::DeviceBuffer(tensor_bytes);
      s.dk = hn::DeviceBuffer(tensor_bytes);
      s.dv = hn::DeviceBuffer(tensor_bytes);
    }
  }
  hn::DeviceBuffer workspace;
  hn::Stream stream;

  std::ofstream json;
  if (!o.json.empty()) {
    json.open(o.json, std::ios::app);
    if (!json) {
      std::fprintf(stderr, "flash4 bench: cannot open %s for appending\n", o.json.c_str());
      return 1;
    }
  }

  std::printf("%-16s %-4s %4s %6s %7s %6s %6s %10s %9s\n", "impl", "mode", "d", "causal", "seqlen", "batch",
              "heads", "ms", "TFLOP/s");
  int failed = 0, unsupported = 0;
  for (int d : o.headdims)
    for (int c : o.causal)
      for (int s : o.seqlens)
        for (int det : o.deterministic) {
          BenchRow row;
          const Shape sh = bench_shape(o, s, d);
          try {
            bench_one(o, sh, c != 0, det != 0, sets, workspace, stream, &row);
          } catch (const hn::Error& e) {
            row.status = "error";
            row.reason = e.what();
          }
          std::printf("%-16s %-4s %4d %6d %7d %6lld %6lld ", row.impl.c_str(), o.backward ? "bwd" : "fwd", d, c, s,
                      static_cast<long long>(sh.batch), static_cast<long long>(sh.heads));
          if (row.status == "ok") {
            std::printf("%10.4f %9.1f\n", row.ms, row.tflops);
          } else {
            std::printf("%10s %9s  %s: %s\n", "-", "-", row.status == "error" ? "ERROR" : "NOT_SUPPORTED",
                        row.reason.c_str());
            (row.status == "error" ? failed : unsupported)++;
          }
          std::fflush(stdout);
          if (json.is_open()) {
            json << json_line(o, ctx, row) << "\n";
            json.flush();
            if (!json) {
              std::fprintf(stderr, "flash4 bench: writing %s failed\n", o.json.c_str());
              return 1;
            }
          }
        }
  if (failed) std::printf("# %d shape(s) failed\n", failed);
  if (unsupported) std::printf("# %d shape(s) not supported on this device/build\n", unsupported);
  return failed ? 1 : unsupported ? 3 : 0;
}

}  // namespace cli
}  // namespace flash4
