// The C ABI of include/flash4/flash4.h (all but flash4_reference_*, which
// live in src/reference.cpp): validation, path choice and launch.
//
// Order of every GPU call: validate (so a malformed call is reported the same
// way on any machine, GPU or not) -> query the current device (cheap
// attribute reads: no allocation, no synchronization) -> choose a path ->
// check the workspace -> launch on the caller's stream.
#include <cuda_runtime.h>

#include <cstdio>
#include <exception>
#include <string>

#include "common/error.hpp"
#include "common/kernels.hpp"
#include "common/validate.hpp"
#include "flash4/flash4.h"

namespace flash4 {
namespace {
thread_local std::string t_last_error;
}  // namespace

void set_last_error(const std::string& message) { t_last_error = message; }
void clear_last_error() { t_last_error.clear(); }

namespace {

constexpr const char* kNoKernels = "flash4 was built without GPU kernels (FLASH4_KERNELS=OFF)";

// Status of a call that went through: the last error is cleared.
flash4_status ok() {
  clear_last_error();
  return FLASH4_OK;
}

// The C ABI must not let exceptions (std::bad_alloc from a message) escape.
template <typename Body>
flash4_status guarded(const char* function, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    try {
      set_last_error(std::string(function) + ": internal error: " + e.what());
    } catch (...) {
    }
    return FLASH4_ERROR_INTERNAL;
  } catch (...) {
    return FLASH4_ERROR_INTERNAL;
  }
}

struct DeviceInfo {
  int ordinal = -1;
  int cc_major = 0, cc_minor = 0;
  int num_sms = 0;
};

// Reads what dispatch needs about `device` (-1: the current one). Attribute
// reads do not create a context, allocate or synchronize. A failed query's
// error is also taken off the runtime's last-error slot so that it cannot be
// mistaken later for a launch failure.
flash4_status query_device(int device, DeviceInfo* info) {
  if (device < -1)
    return fail(FLASH4_ERROR_INVALID_ARGUMENT,
                "device=" + std::to_string(device) + ": must be -1 (current) or a device ordinal");
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return fail(FLASH4_ERROR_NO_DEVICE,
                std::string("no usable CUDA device: ") +
                    (e != cudaSuccess ? cudaGetErrorString(e) : "no device found"));
  }
  if (device >= count)
    return fail(FLASH4_ERROR_INVALID_ARGUMENT, "device=" + std::to_string(device) + ": only " +
                                                   std::to_string(count) + " CUDA device(s)");
  int ordinal = device;
  if (ordinal == -1 && (e = cudaGetDevice(&ordinal)) != cudaSuccess) {
    cudaGetLastError();
    return fail(FLASH4_ERROR_NO_DEVICE,
                std::string("cannot get the current CUDA device: ") + cudaGetErrorString(e));
  }
  DeviceInfo d;
  d.ordinal = ordinal;
  const cudaDeviceAttr attrs[3] = {cudaDevAttrComputeCapabilityMajor,
                                   cudaDevAttrComputeCapabilityMinor,
                                   cudaDevAttrMultiProcessorCount};
  int* out[3] = {&d.cc_major, &d.cc_minor, &d.num_sms};
  for (int i = 0; i < 3; ++i) {
    if ((e = cudaDeviceGetAttribute(out[i], attrs[i], ordinal)) != cudaSuccess) {
      cudaGetLastError();
      return fail(FLASH4_ERROR_CUDA, "cudaDeviceGetAttribute on device " +
                                         std::to_string(ordinal) + ": " + cudaGetErrorString(e));
    }
  }
  *info = d;
  return FLASH4_OK;
}

[[maybe_unused]] std::string cc_text(const DeviceInfo& d) {
  return std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor);
}

// The forward path for `forced` (AUTO: the fastest that supports the call):
// Hopper kernels on cc 9.0 (sm_90a runs there only), else the portable
// kernels on cc >= 8.0. `reason` says which path and why, or why none.
flash4_path choose_fwd_path(const FwdParams& p, flash4_path forced, const DeviceInfo& d,
                            std::string* reason) {
#if !defined(FLASH4_HAVE_SM80) && !defined(FLASH4_HAVE_SM90)
  (void)p, (void)forced, (void)d;
  *reason = kNoKernels;
  return FLASH4_PATH_NONE;
#else
  std::string why_not;
  auto add = [&](const std::string& s) { why_not += (why_not.empty() ? "" : "; ") + s; };
  if (forced == FLASH4_PATH_AUTO || forced == FLASH4_PATH_SM90) {
#if defined(FLASH4_HAVE_SM90)
    if (d.cc_major == 9 && d.cc_minor == 0) {
      std::string why;
      if (sm90_fwd_supported(p, d.cc_major, d.cc_minor, &why)) {
        *reason = "sm90: Hopper kernels (sm_90a) on a cc 9.0 device";
        return FLASH4_PATH_SM90;
      }
      add("sm90: " + why);
    } else {
      add("sm90: needs compute capability 9.0 (sm_90a), device has " + cc_text(d));
    }
#else
    add("sm90: not built (FLASH4_SM90=OFF)");
#endif
  }
  if (forced == FLASH4_PATH_AUTO || forced == FLASH4_PATH_PORTABLE) {
#if defined(FLASH4_HAVE_SM80)
    if (d.cc_major >= 8) {
      std::string why;
      if (sm80_fwd_supported(p, d.cc_major, d.cc_minor, &why)) {
        *reason = std::string("portable: sm80-class kernels on a cc ") + cc_text(d) + " device" +
                  (why_not.empty() ? "" : " (" + why_not + ")");
        return FLASH4_PATH_PORTABLE;
      }
      add("portable: " + why);
    } else {
      add("portable: needs compute capability >= 8.0, device has " + cc_text(d));
    }
#else
    add("portable: not built");
#endif
  }
  *reason = (forced == FLASH4_PATH_AUTO ? "" : "forced by opt.path: ") + why_not;
  return FLASH4_PATH_NONE;
#endif
}

void fill_support(flash4_support* info, flash4_path path, const std::string& reason) {
  info->path = path;
  std::snprintf(info->reason, sizeof(info->reason), "%s", reason.c_str());
}

// The backward path for `forced` (AUTO: the fastest that supports the call):
// the Hopper kernels on cc 9.0; the portable path has no backward yet.
flash4_path choose_bwd_path(const BwdParams& p, flash4_path forced, const DeviceInfo& d,
                            std::string* reason) {
#if !defined(FLASH4_HAVE_SM80) && !defined(FLASH4_HAVE_SM90)
  (void)p, (void)forced, (void)d;
  *reason = kNoKernels;
  return FLASH4_PATH_NONE;
#else
  std::string why_not;
  auto add = [&](const std::string& s) { why_not += (why_not.empty() ? "" : "; ") + s; };
  if (forced == FLASH4_PATH_AUTO || forced == FLASH4_PATH_SM90) {
#if defined(FLASH4_HAVE_SM90)
    if (d.cc_major == 9 && d.cc_minor == 0) {
      std::string why;
      if (sm90_bwd_supported(p, d.cc_major, d.cc_minor, &why)) {
        *reason = "sm90: " + why;
        return FLASH4_PATH_SM90;
      }
      add("sm90: " + why);
    } else {
      add("sm90: needs compute capability 9.0 (sm_90a), device has " + cc_text(d));
    }
#else
    (void)p, (void)d;
    add("sm90: not built (FLASH4_SM90=OFF)");
#endif
  }
  if (forced == FLASH4_PATH_AUTO || forced == FLASH4_PATH_PORTABLE)
    add("portable: no backward kernel yet");
  *reason = (forced == FLASH4_PATH_AUTO ? "" : "forced by opt.path: ") + why_not +
            " (the CPU reference flash4_reference_bwd covers every option)";
  return FLASH4_PATH_NONE;
#endif
}

// Workspace of the backward (bytes): the layout of bwd_workspace_layout in
// src/common/kernels.hpp, with overflow checks.
bool bwd_workspace_bytes(const BwdParams& p, int64_t total_q, size_t* bytes) {
  BwdWorkspace w;
  if (!bwd_workspace_layout(p, total_q, &w)) return false;
  *bytes = size_t(w.total_bytes);
  return true;
}

flash4_status need(const void* pointer, const char* name) {
  if (pointer == nullptr)
    return fail(FLASH4_ERROR_INVALID_ARGUMENT, std::string(name) + " is NULL");
  return FLASH4_OK;
}

// Shared body of flash4_{fwd,bwd}_supported: validate, look at the device,
// and answer with the path `choose` would take (or NONE and why).
template <typename Args, typename Params, typename Validate, typename Choose>
flash4_status answer_supported(const char* fn, const Args* args, int device, flash4_support* info,
                               Validate validate, Choose choose) {
  return guarded(fn, [&]() -> flash4_status {
    flash4_status s;
    if ((s = need(args, "args")) != FLASH4_OK || (s = need(info, "info")) != FLASH4_OK) return s;
    Params p;
    std::string message;
    if ((s = validate(*args, Target::kDevice, &p, &message)) != FLASH4_OK) return fail(s, message);
    DeviceInfo d;
    s = query_device(device, &d);
    if (s == FLASH4_ERROR_NO_DEVICE) {
      // A question, not a run: "nothing can run it here" is the answer.
      fill_support(info, FLASH4_PATH_NONE, t_last_error);
      return ok();
    }
    if (s != FLASH4_OK) return s;
    p.num_sms = d.num_sms;
    std::string reason;
    const flash4_path path = choose(p, args->opt.path, d, &reason);
    fill_support(info, path, reason);
    return ok();
  });
}

// Shared start of flash4_fwd / flash4_bwd: validate, query the current
// device, pick the path (NOT_SUPPORTED with the reason when none runs it).
template <typename Args, typename Params, typename Validate, typename Choose>
flash4_status prepare_launch(const Args* args, Validate validate, Choose choose, Params* p,
                             flash4_path* path) {
  flash4_status s;
  if ((s = need(args, "args")) != FLASH4_OK) return s;
  std::string message;
  if ((s = validate(*args, Target::kDevice, p, &message)) != FLASH4_OK) return fail(s, message);
  DeviceInfo d;
  if ((s = query_device(-1, &d)) != FLASH4_OK) return s;
  p->num_sms = d.num_sms;
  std::string reason;
  *path = choose(*p, args->opt.path, d, &reason);
  if (*path == FLASH4_PATH_NONE) return fail(FLASH4_ERROR_NOT_SUPPORTED, reason);
  return FLASH4_OK;
}

}  // namespace
}  // namespace flash4

using namespace flash4;

extern "C" {

FLASH4_API const char* flash4_version(void) {
#define FLASH4_STR2(x) #x
#define FLASH4_STR(x) FLASH4_STR2(x)
  return FLASH4_STR(FLASH4_VERSION_MAJOR) "." FLASH4_STR(FLASH4_VERSION_MINOR) "." FLASH4_STR(
      FLASH4_VERSION_PATCH);
#undef FLASH4_STR
#undef FLASH4_STR2
}

FLASH4_API const char* flash4_status_string(flash4_status s) {
  switch (s) {
    case FLASH4_OK: return "FLASH4_OK";
    case FLASH4_ERROR_INVALID_ARGUMENT: return "FLASH4_ERROR_INVALID_ARGUMENT";
    case FLASH4_ERROR_NOT_SUPPORTED: return "FLASH4_ERROR_NOT_SUPPORTED";
    case FLASH4_ERROR_WORKSPACE: return "FLASH4_ERROR_WORKSPACE";
    case FLASH4_ERROR_CUDA: return "FLASH4_ERROR_CUDA";
    case FLASH4_ERROR_NO_DEVICE: return "FLASH4_ERROR_NO_DEVICE";
    case FLASH4_ERROR_INTERNAL: return "FLASH4_ERROR_INTERNAL";
  }
  return "FLASH4_ERROR_UNKNOWN_STATUS";
}

// Informational functions leave the last error alone, so that
// printf("%s: %s", flash4_status_string(s), flash4_last_error()) works.
FLASH4_API const char* flash4_last_error(void) { return t_last_error.c_str(); }

FLASH4_API const char* flash4_path_name(flash4_path p) {
  switch (p) {
    case FLASH4_PATH_AUTO: return "auto";
    case FLASH4_PATH_PORTABLE: return "portable";
    case FLASH4_PATH_SM90: return "sm90";
    case FLASH4_PATH_NONE: return "none";
  }
  return "unknown";
}

FLASH4_API flash4_tensor flash4_make_tensor(void* data, flash4_dtype dtype, int32_t ndim,
                                            const int64_t* shape, const int64_t* strides) {
  flash4_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.ndim = ndim;  // kept as given: validation reports a bad rank
  const int n = (ndim < 0 || ndim > FLASH4_MAX_DIMS || shape == nullptr) ? 0 : ndim;
  for (int i = 0; i < n; ++i) t.shape[i] = shape[i];
  if (strides != nullptr) {
    for (int i = 0; i < n; ++i) t.stride[i] = strides[i];
  } else {
    int64_t s = 1;  // row-major
    for (int i = n - 1; i >= 0; --i) {
      t.stride[i] = s;
      s *= t.shape[i];
    }
  }
  return t;
}

FLASH4_API flash4_status flash4_fwd_workspace_size(const flash4_fwd_args* args, size_t* bytes) {
  return guarded("flash4_fwd_workspace_size", [&]() -> flash4_status {
    flash4_status s;
    if ((s = need(args, "args")) != FLASH4_OK || (s = need(bytes, "bytes")) != FLASH4_OK) return s;
    std::string message;
    if ((s = validate_fwd(*args, Target::kDevice, nullptr, &message)) != FLASH4_OK)
      return fail(s, message);
    *bytes = 0;  // the forward needs no scratch memory today
    return ok();
  });
}

FLASH4_API flash4_status flash4_fwd_supported(const flash4_fwd_args* args, int device,
                                              flash4_support* info) {
  return answer_supported<flash4_fwd_args, FwdParams>("flash4_fwd_supported", args, device, info,
                                                      validate_fwd, choose_fwd_path);
}

FLASH4_API flash4_status flash4_fwd(const flash4_fwd_args* args, void* workspace,
                                    size_t workspace_bytes, flash4_stream stream) {
  return guarded("flash4_fwd", [&]() -> flash4_status {
    FwdParams p;
    flash4_path path;
    flash4_status s = prepare_launch(args, validate_fwd, choose_fwd_path, &p, &path);
    if (s != FLASH4_OK) return s;
    // The forward needs no workspace today; the check stays so that a future
    // need cannot silently run without one.
    const size_t required = 0;
    if (workspace_bytes < required || (required > 0 && workspace == nullptr))
      return fail(FLASH4_ERROR_WORKSPACE, "workspace: " + std::to_string(required) +
                                              " bytes needed, got " +
                                              std::to_string(workspace_bytes));
    // Nothing to write: no query rows. (Sk == 0 is not empty: the kernel
    // writes out = 0 and lse = -inf.)
    const int64_t total_q = p.cu_seqlens_q != nullptr ? args->q.shape[0] : 1;
    if (p.batch == 0 || p.seqlen_q == 0 || total_q == 0) return ok();
    (void)stream;  // unused when built without kernels
    cudaError_t e = cudaSuccess;
    switch (path) {
#if defined(FLASH4_HAVE_SM90)
      case FLASH4_PATH_SM90: e = sm90_fwd_run(p, stream); break;
#endif
#if defined(FLASH4_HAVE_SM80)
      case FLASH4_PATH_PORTABLE: e = sm80_fwd_run(p, stream); break;
#endif
      default:
        return fail(FLASH4_ERROR_INTERNAL,
                    std::string("flash4_fwd: no launcher for path ") + flash4_path_name(path));
    }
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess)
      return fail(FLASH4_ERROR_CUDA, std::string("flash4_fwd (") + flash4_path_name(path) +
                                         " path): " + cudaGetErrorString(e));
    return ok();
  });
}

FLASH4_API flash4_status flash4_bwd_workspace_size(const flash4_bwd_args* args, size_t* bytes) {
  return guarded("flash4_bwd_workspace_size", [&]() -> flash4_status {
    flash4_status s;
    if ((s = need(args, "args")) != FLASH4_OK || (s = need(bytes, "bytes")) != FLASH4_OK) return s;
    BwdParams p;
    std::string message;
    if ((s = validate_bwd(*args, Target::kDevice, &p, &message)) != FLASH4_OK)
      return fail(s, message);
    size_t required = 0;
    if (!bwd_workspace_bytes(p, args->q.shape[0], &required))
      return fail(FLASH4_ERROR_INVALID_ARGUMENT,
                  "q: the backward workspace for this shape overflows size_t");
    *bytes = required;
    return ok();
  });
}

FLASH4_API flash4_status flash4_bwd_supported(const flash4_bwd_args* args, int device,
                                              flash4_support* info) {
  return answer_supported<flash4_bwd_args, BwdParams>("flash4_bwd_supported", args, device, info,
                                                      validate_bwd, choose_bwd_path);
}

// Order: validate -> device -> path (NOT_SUPPORTED with the reason) ->
// workspace (size and 16-byte alignment) -> launch on the caller's stream.
FLASH4_API flash4_status flash4_bwd(const flash4_bwd_args* args, void* workspace,
                                    size_t workspace_bytes, flash4_stream stream) {
  return guarded("flash4_bwd", [&]() -> flash4_status {
    BwdParams p;
    flash4_path path;
    flash4_status s = prepare_launch(args, validate_bwd, choose_bwd_path, &p, &path);
    if (s != FLASH4_OK) return s;
    size_t required = 0;
    if (!bwd_workspace_bytes(p, args->q.shape[0], &required))
      return fail(FLASH4_ERROR_INVALID_ARGUMENT,
                  "q: the backward workspace for this shape overflows size_t");
    if (workspace_bytes < required || (required > 0 && workspace == nullptr))
      return fail(FLASH4_ERROR_WORKSPACE,
                  "workspace: " + std::to_string(required) + " bytes needed (" +
                      "flash4_bwd_workspace_size), got " + std::to_string(workspace_bytes) +
                      (workspace == nullptr && required > 0 ? " and a NULL pointer" : ""));
    if (required > 0 && (reinterpret_cast<uintptr_t>(workspace) & 15u) != 0)
      return fail(FLASH4_ERROR_WORKSPACE,
                  "workspace: the pointer must be 16-byte aligned (cudaMalloc memory is)");
    p.workspace = workspace;
    p.workspace_bytes = workspace_bytes;
    // Nothing to write: no batch, or neither query rows nor keys.
    if (p.batch == 0 || (p.seqlen_q == 0 && p.seqlen_k == 0)) return ok();
    (void)stream;  // unused when built without kernels
    cudaError_t e = cudaSuccess;
    switch (path) {
#if defined(FLASH4_HAVE_SM90)
      case FLASH4_PATH_SM90: e = sm90_bwd_run(p, stream); break;
#endif
      default:
        return fail(FLASH4_ERROR_INTERNAL,
                    std::string("flash4_bwd: no launcher for path ") + flash4_path_name(path));
    }
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess)
      return fail(FLASH4_ERROR_CUDA, std::string("flash4_bwd (") + flash4_path_name(path) +
                                         " path): " + cudaGetErrorString(e));
    return ok();
  });
}

}  // extern "C"
