/* flash4: exact attention (FlashAttention-4 style) for NVIDIA GPUs.
 *
 * C ABI. Every function returns a flash4_status; on failure flash4_last_error()
 * gives a message (thread-local) that names the argument and the rule.
 *
 * Tensors are views: pointer, dtype, shape and int64 strides counted in elements.
 *   batched layout: q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D), out like q,
 *                   lse fp32 (B, Hq, Sq)
 *   varlen layout:  q (total_q, Hq, D), k/v (total_k, Hkv, D), out like q,
 *                   lse fp32 (Hq, total_q), with int32 device arrays
 *                   cu_seqlens_q/k of B+1 entries and max_seqlen_q/k.
 * Only the last dimension must be contiguous (stride 1).
 *
 * GPU calls take an explicit cudaStream_t, never allocate and never
 * synchronize: they can be captured in a CUDA graph. Calls that need scratch
 * memory report its size through a *_workspace_size query.
 *
 * The CPU reference (flash4_reference_*) takes host pointers and computes in
 * float64; it is the oracle of the tests and of `flash4 check`.
 */
#ifndef FLASH4_FLASH4_H_
#define FLASH4_FLASH4_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FLASH4_API __declspec(dllexport)
#else
#define FLASH4_API __attribute__((visibility("default")))
#endif

/* Opaque to avoid including cuda_runtime.h: same as cudaStream_t. */
typedef struct CUstream_st* flash4_stream;

#define FLASH4_VERSION_MAJOR 0
#define FLASH4_VERSION_MINOR 1
#define FLASH4_VERSION_PATCH 0

typedef enum flash4_status {
  FLASH4_OK = 0,
  FLASH4_ERROR_INVALID_ARGUMENT = 1, /* the call breaks a documented rule */
  FLASH4_ERROR_NOT_SUPPORTED = 2,    /* valid, but no path implements it here */
  FLASH4_ERROR_WORKSPACE = 3,        /* workspace missing or too small */
  FLASH4_ERROR_CUDA = 4,             /* a CUDA runtime call failed */
  FLASH4_ERROR_NO_DEVICE = 5,        /* no usable CUDA device */
  FLASH4_ERROR_INTERNAL = 6
} flash4_status;

typedef enum flash4_dtype {
  FLASH4_DTYPE_FP16 = 0,
  FLASH4_DTYPE_BF16 = 1,
  FLASH4_DTYPE_FP32 = 2,
  FLASH4_DTYPE_FP64 = 3, /* reference outputs only */
  FLASH4_DTYPE_INT32 = 4
} flash4_dtype;

#define FLASH4_MAX_DIMS 4

typedef struct flash4_tensor {
  void* data;
  flash4_dtype dtype;
  int32_t ndim;
  int64_t shape[FLASH4_MAX_DIMS];
  int64_t stride[FLASH4_MAX_DIMS]; /* in elements */
} flash4_tensor;

/* Which implementation runs a call. */
typedef enum flash4_path {
  FLASH4_PATH_AUTO = 0,     /* fastest path that supports the call */
  FLASH4_PATH_PORTABLE = 1, /* sm80-class kernels (Ampere and newer) */
  FLASH4_PATH_SM90 = 2,     /* Hopper kernels (sm_90a) */
  FLASH4_PATH_NONE = -1     /* supported() answer: nothing can run it */
} flash4_path;

/* Options shared by forward and backward. Zero-initialise, then set: all
 * zeros means no mask, default scale, no softcap, batched, automatic path. */
typedef struct flash4_attn_options {
  double softmax_scale;  /* 0 = default 1/sqrt(headdim); must be finite */
  int32_t causal;        /* bottom-right aligned when Sq != Sk */
  /* Sliding window, only when use_window = 1 (so that zeroed options mean
   * "no window"): query i sees keys [i+Sk-Sq-left, i+Sk-Sq+right], -1 = that
   * side unbounded. With use_window = 0 both must be 0 or -1. */
  int32_t use_window;
  int32_t window_left;
  int32_t window_right;
  double softcap;        /* 0 = off; else s = softcap*tanh(s/softcap) */
  /* varlen: set cu_seqlens_q and cu_seqlens_k (int32, B+1 entries, on the
   * same memory as q: device for GPU calls, host for the reference). */
  flash4_tensor cu_seqlens_q;
  flash4_tensor cu_seqlens_k;
  int64_t max_seqlen_q;  /* varlen only: max over the batch */
  int64_t max_seqlen_k;
  /* optional int32 (B): only the first seqused_k[b] keys of sequence b are
   * used (batched and varlen). data == NULL: unused. */
  flash4_tensor seqused_k;
  flash4_path path;      /* FLASH4_PATH_AUTO unless forcing one */
  /* FA4 software exp2 (polynomial on the FMA pipe) in the Hopper forward:
   * -1 off, 0 default (off: measured slower than the hardware exp2 alone on
   * H100, docs/perf.md), 1 on for 1/4 of the exponentials. The Hopper path
   * has 1 for head dims up to 128 without softcap; elsewhere it refuses it
   * and the call runs on the portable path, which uses the hardware exp2
   * only; flash4_fwd_supported says so. */
  int32_t exp2_emulation;
} flash4_attn_options;

typedef struct flash4_fwd_args {
  flash4_tensor q, k, v;
  flash4_tensor out; /* written */
  flash4_tensor lse; /* written, fp32; data == NULL: not computed */
  flash4_attn_options opt;
} flash4_fwd_args;

typedef struct flash4_bwd_args {
  flash4_tensor dout, q, k, v, out;
  flash4_tensor lse; /* fp32, from the forward */
  flash4_tensor dq, dk, dv; /* written */
  flash4_attn_options opt;
  /* 1: bitwise reproducible dq (its fp32 partial sums added in a fixed
   * order; slower). The workspace then also holds int32 semaphores, about
   * 4 bytes per 32 query rows and head: ask flash4_bwd_workspace_size with
   * the same value. */
  int32_t deterministic;
} flash4_bwd_args;

typedef struct flash4_support {
  flash4_path path;  /* path AUTO would take, or FLASH4_PATH_NONE */
  char reason[256];  /* why not (or which path and why), NUL-terminated */
} flash4_support;

/* ---- library ---------------------------------------------------------- */
FLASH4_API const char* flash4_version(void);
FLASH4_API const char* flash4_status_string(flash4_status s);
/* Message of the last failed call on this thread ("" if none). */
FLASH4_API const char* flash4_last_error(void);
FLASH4_API const char* flash4_path_name(flash4_path p);

/* Helpers to fill a tensor view; strides == NULL means contiguous. */
FLASH4_API flash4_tensor flash4_make_tensor(void* data, flash4_dtype dtype, int32_t ndim,
                                            const int64_t* shape, const int64_t* strides);

/* ---- forward ---------------------------------------------------------- */
FLASH4_API flash4_status flash4_fwd_workspace_size(const flash4_fwd_args* args, size_t* bytes);
/* Which path would run on `device` (-1: current). Returns FLASH4_OK with
 * info->path == FLASH4_PATH_NONE and a reason when nothing can run it, or an
 * INVALID_ARGUMENT status when the call itself is malformed. */
FLASH4_API flash4_status flash4_fwd_supported(const flash4_fwd_args* args, int device,
                                              flash4_support* info);
FLASH4_API flash4_status flash4_fwd(const flash4_fwd_args* args, void* workspace,
                                    size_t workspace_bytes, flash4_stream stream);

/* ---- backward --------------------------------------------------------- */
/* The workspace needs no initialisation and may hold anything: flash4_bwd
 * writes every byte of it that it reads (zeroing its accumulators itself),
 * so one workspace can be reused by calls on the same stream. */
FLASH4_API flash4_status flash4_bwd_workspace_size(const flash4_bwd_args* args, size_t* bytes);
FLASH4_API flash4_status flash4_bwd_supported(const flash4_bwd_args* args, int device,
                                              flash4_support* info);
FLASH4_API flash4_status flash4_bwd(const flash4_bwd_args* args, void* workspace,
                                    size_t workspace_bytes, flash4_stream stream);

/* ---- CPU reference (host pointers) ---------------------------------- */
typedef enum flash4_ref_precision {
  /* float64 throughout: the oracle. */
  FLASH4_REF_FP64 = 0,
  /* same-precision reference for the tolerance rule: scores and row sums
   * in float32, P (and dS) rounded to the input dtype before the second
   * matmul, outputs rounded to their dtype. */
  FLASH4_REF_LOWP = 1
} flash4_ref_precision;

/* Outputs (out, lse / dq, dk, dv) may be FP64, FP32 or the input dtype.
 * num_threads <= 0: use all hardware threads. */
FLASH4_API flash4_status flash4_reference_fwd(const flash4_fwd_args* args,
                                              flash4_ref_precision precision, int num_threads);
FLASH4_API flash4_status flash4_reference_bwd(const flash4_bwd_args* args,
                                              flash4_ref_precision precision, int num_threads);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASH4_FLASH4_H_ */
