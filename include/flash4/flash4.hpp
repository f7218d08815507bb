// flash4 C++ layer: the C ABI of flash4.h with exceptions and small helpers.
// Header-only; every function forwards to the C ABI and throws flash4::Error
// (status + the message of flash4_last_error()) when the call fails.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "flash4/flash4.h"

namespace flash4 {

class Error : public std::runtime_error {
 public:
  Error(flash4_status status, const std::string& message)
      : std::runtime_error(std::string(flash4_status_string(status)) + ": " + message),
        status_(status) {}
  flash4_status status() const noexcept { return status_; }

 private:
  flash4_status status_;
};

inline void check(flash4_status status) {
  if (status != FLASH4_OK) throw Error(status, flash4_last_error());
}

// A tensor view from a pointer, a shape and optional strides (elements);
// no strides: contiguous row-major. Inputs may be const: views never write
// through a pointer the API treats as an input.
inline flash4_tensor make_tensor(const void* data, flash4_dtype dtype,
                                 std::initializer_list<int64_t> shape,
                                 std::initializer_list<int64_t> strides = {}) {
  if (shape.size() > FLASH4_MAX_DIMS)
    throw Error(FLASH4_ERROR_INVALID_ARGUMENT, "make_tensor: at most 4 dimensions");
  if (strides.size() != 0 && strides.size() != shape.size())
    throw Error(FLASH4_ERROR_INVALID_ARGUMENT,
                "make_tensor: strides must be empty or have one entry per dimension");
  return flash4_make_tensor(const_cast<void*>(data), dtype, static_cast<int32_t>(shape.size()),
                            shape.begin(), strides.size() ? strides.begin() : nullptr);
}

// Options with the library's defaults: no mask (windows -1), default scale,
// no softcap, batched layout, automatic path.
class Options {
 public:
  Options() {
    opt_.window_left = -1;
    opt_.window_right = -1;
    opt_.path = FLASH4_PATH_AUTO;
  }
  Options& softmax_scale(double scale) { opt_.softmax_scale = scale; return *this; }
  Options& causal(bool on = true) { opt_.causal = on ? 1 : 0; return *this; }
  Options& window(int32_t left, int32_t right) {
    opt_.use_window = 1;
    opt_.window_left = left;
    opt_.window_right = right;
    return *this;
  }
  Options& softcap(double cap) { opt_.softcap = cap; return *this; }
  Options& varlen(const flash4_tensor& cu_seqlens_q, const flash4_tensor& cu_seqlens_k,
                  int64_t max_seqlen_q, int64_t max_seqlen_k) {
    opt_.cu_seqlens_q = cu_seqlens_q;
    opt_.cu_seqlens_k = cu_seqlens_k;
    opt_.max_seqlen_q = max_seqlen_q;
    opt_.max_seqlen_k = max_seqlen_k;
    return *this;
  }
  Options& seqused_k(const flash4_tensor& used) { opt_.seqused_k = used; return *this; }
  Options& path(flash4_path p) { opt_.path = p; return *this; }
  Options& exp2_emulation(int32_t mode) { opt_.exp2_emulation = mode; return *this; }

  const flash4_attn_options& get() const { return opt_; }
  operator const flash4_attn_options&() const { return opt_; }

 private:
  flash4_attn_options opt_{};
};

struct Support {
  flash4_path path = FLASH4_PATH_NONE;
  std::string reason;
  bool supported() const { return path != FLASH4_PATH_NONE; }
};

inline size_t fwd_workspace_size(const flash4_fwd_args& args) {
  size_t bytes = 0;
  check(flash4_fwd_workspace_size(&args, &bytes));
  return bytes;
}

inline Support fwd_supported(const flash4_fwd_args& args, int device = -1) {
  flash4_support info{};
  check(flash4_fwd_supported(&args, device, &info));
  return Support{info.path, info.reason};
}

// cudaStream_t and flash4_stream are the same type (struct CUstream_st*).
inline void fwd(const flash4_fwd_args& args, void* workspace = nullptr, size_t workspace_bytes = 0,
                cudaStream_t stream = nullptr) {
  check(flash4_fwd(&args, workspace, workspace_bytes, static_cast<flash4_stream>(stream)));
}

inline size_t bwd_workspace_size(const flash4_bwd_args& args) {
  size_t bytes = 0;
  check(flash4_bwd_workspace_size(&args, &bytes));
  return bytes;
}

inline Support bwd_supported(const flash4_bwd_args& args, int device = -1) {
  flash4_support info{};
  check(flash4_bwd_supported(&args, device, &info));
  return Support{info.path, info.reason};
}

inline void bwd(const flash4_bwd_args& args, void* workspace = nullptr, size_t workspace_bytes = 0,
                cudaStream_t stream = nullptr) {
  check(flash4_bwd(&args, workspace, workspace_bytes, static_cast<flash4_stream>(stream)));
}

// CPU reference (host pointers), float64 by default.
inline void reference_fwd(const flash4_fwd_args& args,
                          flash4_ref_precision precision = FLASH4_REF_FP64, int num_threads = 0) {
  check(flash4_reference_fwd(&args, precision, num_threads));
}

inline void reference_bwd(const flash4_bwd_args& args,
                          flash4_ref_precision precision = FLASH4_REF_FP64, int num_threads = 0) {
  check(flash4_reference_bwd(&args, precision, num_threads));
}

inline std::string version() { return flash4_version(); }

}  // namespace flash4
