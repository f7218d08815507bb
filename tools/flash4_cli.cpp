// flash4 command-line tool.
//   flash4 info    version, build, CUDA, the GPUs found and which paths run there
//   flash4 check   GPU forward against the CPU reference (tools/check_cmd.hpp)
//   flash4 bench   TFLOP/s over a sweep of shapes (tools/bench.hpp)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "bench.hpp"
#include "check_cmd.hpp"
#include "flash4/flash4.h"
#include "harness.hpp"

namespace {

namespace hn = ::flash4::harness;
using flash4::cli::cuda_version_text;

#ifndef FLASH4_BUILD_CONFIG
#define FLASH4_BUILD_CONFIG "not recorded in this build"
#endif

void usage(FILE* f) {
  std::fprintf(f,
      "usage: flash4 <command> [options]\n"
      "commands:\n"
      "  info    version, build, CUDA versions, GPUs and the paths that run on each\n"
      "  check   run the GPU forward on many cases and compare with the CPU reference\n"
      "  bench   TFLOP/s of the forward (or backward) over a sweep of shapes\n"
      "  version print the version and commit\n"
      "'flash4 <command> --help' describes each command.\n");
}

void info_usage(FILE* f) {
  std::fprintf(f,
      "usage: flash4 info\n"
      "Prints the flash4 version and commit, the build configuration, the CUDA\n"
      "runtime and driver versions, and for each GPU its name, compute capability,\n"
      "SM count and memory, with the forward path each request would take there\n"
      "(flash4_fwd_supported on a small bf16 problem) and why. Exit status 0, also\n"
      "when no GPU is found.\n");
}

// Which path a small valid problem (bf16, B=1, S=128, H=2, d=headdim) takes
// on `device` when `path` is requested; prints one line.
void print_path(int device, int headdim, flash4_path path, bool backward) {
  const int64_t B = 1, S = 128, H = 2, D = headdim;
  const size_t bytes = size_t(B * S * H * D) * 2;
  hn::DeviceBuffer q(bytes), k(bytes), v(bytes), o(bytes), lse(size_t(B * H * S) * 4);
  flash4_fwd_args a;
  std::memset(&a, 0, sizeof a);
  a.q = hn::dense_tensor(q.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
  a.k = hn::dense_tensor(k.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
  a.v = hn::dense_tensor(v.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
  a.out = hn::dense_tensor(o.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
  a.lse = hn::dense_tensor(lse.data(), FLASH4_DTYPE_FP32, {B, H, S});
  a.opt.window_left = -1;
  a.opt.window_right = -1;
  a.opt.path = path;
  flash4_support sup{};
  flash4_status st;
  if (backward) {
    hn::DeviceBuffer dout(bytes), dq(bytes), dk(bytes), dv(bytes);
    flash4_bwd_args b;
    std::memset(&b, 0, sizeof b);
    b.dout = hn::dense_tensor(dout.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
    b.q = a.q; b.k = a.k; b.v = a.v; b.out = a.out; b.lse = a.lse;
    b.dq = hn::dense_tensor(dq.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
    b.dk = hn::dense_tensor(dk.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
    b.dv = hn::dense_tensor(dv.data(), FLASH4_DTYPE_BF16, {B, S, H, D});
    b.opt = a.opt;
    st = flash4_bwd_supported(&b, device, &sup);
  } else {
    st = flash4_fwd_supported(&a, device, &sup);
  }
  std::printf("    %s d=%-3d %-8s -> ", backward ? "bwd" : "fwd", headdim, flash4_path_name(path));
  if (st != FLASH4_OK)
    std::printf("error %s: %s\n", flash4_status_string(st), flash4_last_error());
  else if (sup.path == FLASH4_PATH_NONE)
    std::printf("none: %s\n", sup.reason);
  else
    std::printf("%s (%s)\n", flash4_path_name(sup.path), sup.reason);
}

int cmd_info(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) { info_usage(stdout); return 0; }
    std::fprintf(stderr, "flash4 info: unknown argument %s\n", argv[i]);
    return 4;
  }
  std::printf("flash4 %s, commit %s\n", flash4_version(), flash4::cli::git_commit().c_str());
  std::printf("build: %s; CLI compiled with CUDA %s, host compiler %s\n", FLASH4_BUILD_CONFIG,
              cuda_version_text(CUDART_VERSION).c_str(), __VERSION__);
  int rt = 0, drv = 0;
  cudaError_t e = cudaRuntimeGetVersion(&rt);
  if (e != cudaSuccess) std::printf("cudaRuntimeGetVersion failed: %s\n", cudaGetErrorString(e));
  e = cudaDriverGetVersion(&drv);
  if (e != cudaSuccess) std::printf("cudaDriverGetVersion failed: %s\n", cudaGetErrorString(e));
  std::printf("CUDA runtime %s, driver API %s, NVIDIA driver %s\n", cuda_version_text(rt).c_str(),
              cuda_version_text(drv).c_str(), flash4::cli::driver_release().c_str());

  std::string why;
  if (!hn::cuda_device_available(&why)) {
    std::printf("GPUs: none found (%s)\n", why.c_str());
    std::printf("Without a GPU the CPU reference and argument validation work ('flash4 check --cpu');\n"
                "'flash4 check' and 'flash4 bench' need a GPU.\n");
    return 0;
  }
  int count = 0;
  FLASH4_HARNESS_CUDA(cudaGetDeviceCount(&count));
  std::printf("GPUs: %d\n", count);
  for (int dev = 0; dev < count; ++dev) {
    cudaDeviceProp p{};
    FLASH4_HARNESS_CUDA(cudaGetDeviceProperties(&p, dev));
    std::printf("  [%d] %s: cc %d.%d, %d SMs, %.1f GiB, L2 %.0f MiB, %zu KiB shared memory per block (opt-in)\n",
                dev, p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0,
                p.l2CacheSize / 1048576.0, p.sharedMemPerBlockOptin / 1024);
    FLASH4_HARNESS_CUDA(cudaSetDevice(dev));
    for (flash4_path path : {FLASH4_PATH_AUTO, FLASH4_PATH_PORTABLE, FLASH4_PATH_SM90}) print_path(dev, 128, path, false);
    print_path(dev, 64, FLASH4_PATH_AUTO, false);
    print_path(dev, 256, FLASH4_PATH_AUTO, false);
    print_path(dev, 128, FLASH4_PATH_AUTO, true);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 4;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      usage(stdout);
      return 0;
    }
    if (cmd == "version" || cmd == "--version") {
      std::printf("flash4 %s, commit %s\n", flash4_version(), flash4::cli::git_commit().c_str());
      return 0;
    }
    if (cmd == "info") return cmd_info(argc - 2, argv + 2);
    if (cmd == "bench") return flash4::cli::bench_main(argc - 2, argv + 2);
    if (cmd == "check") return flash4_cli_check(argc - 1, argv + 1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flash4 %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "flash4: unknown command '%s'\n", cmd.c_str());
  usage(stderr);
  return 4;
}
