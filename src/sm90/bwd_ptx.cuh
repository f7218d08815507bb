// Hopper (sm_90a) instruction wrappers the backward needs beyond
// src/sm90/ptx.cuh (which it includes and reuses): one function per
// instruction, no policy. Candidates to merge into ptx.cuh.
//
//   wgmma_ss_tatb_m64n64k16  SS wgmma with BOTH operands MN-major
//                            (trans-a = trans-b = 1): dQ = dS K, where dS^T
//                            and K sit in shared memory with the M resp. N
//                            dimension contiguous.
//   bulk_reduce_add_f32      cp.reduce.async.bulk .add.f32 shared -> global
//                            (bulk_group): the dQ accumulation.
//   bulk_store_or_add_f32    either of the two (predicated): the first add
//                            of a deterministic dQ piece stores it.
//   bulk_wait_all            cp.async.bulk.wait_group 0 (writes done, not
//                            only the shared-memory reads).
//   fence_proxy_async_global fence.proxy.async.global: orders the async
//                            proxy's (bulk copies') global accesses with the
//                            generic proxy's.
//   red_add_v4_f32           red.global.add.v4.f32: four fp32 adds to 16
//                            aligned bytes (head dim 256: dQ pieces from
//                            registers).
//   ld_acquire_gpu_s32       ld.acquire.gpu.global.s32
//   red_release_gpu_add_s32  red.release.gpu.global.add.s32
//   sem_wait_eq              spin (ld.acquire.gpu, __nanosleep backoff) until
//                            a global int32 equals a value: the deterministic
//                            dQ order.
#pragma once
#include "sm90/ptx.cuh"

namespace flash4 {
namespace sm90 {

// ---------------------------------------------------------------------------
// wgmma m64n64k16, A and B from shared memory, both MN-major (transposed).
// A descriptor: M (64) contiguous in 128-byte rows, K rows 128 bytes apart
//   (8-row groups SBO = 1024 apart); a k16 step adds 16 * 128 = 2048 bytes.
// B descriptor: the same with N in place of M.
// ---------------------------------------------------------------------------
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_tatb_m64n64k16, 64, 32, 32, 33, 34, 1, 1)

// ---------------------------------------------------------------------------
// Head dim 256 with 80-key blocks (bwd_consumer_d256x80.cuh):
//   wgmma_ss_m64n40k16     both operands K-major: S = Q K_w^T, dP = dO V_w^T
//                          for one consumer's 40 keys.
//   wgmma_ss_ta_m64n80k16  A MN-major (trans-a = 1), B K-major:
//                          dV^T += dO^T P and dK^T += Q^T dS, A the
//                          transposed Q / dO panel (M = 64 head-dim columns
//                          contiguous, a k16 step adds 2048 bytes), B the P /
//                          dS buffer (80 key rows of 64 queries).
// ---------------------------------------------------------------------------
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n40k16, 40, 20, 20, 21, 22, 0, 0)
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_ta_m64n80k16, 80, 40, 40, 41, 42, 1, 0)

// ---------------------------------------------------------------------------
// Bulk (non-tensor) async copies. Addresses 16-byte aligned, sizes multiples
// of 16 bytes.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem_dst, const float* smem_src,
                                                    uint32_t bytes) {
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem_dst),
      "r"(smem_u32(smem_src)), "r"(bytes)
      : "memory");
}

// store ? cp.async.bulk (a plain copy) : cp.reduce.async.bulk .add.f32, as
// two predicated instructions (no branch): the deterministic mode's first add
// of a dQ piece stores it.
__device__ __forceinline__ void bulk_store_or_add_f32(float* gmem_dst, const float* smem_src,
                                                      uint32_t bytes, bool store) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n"
      " @p cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n"
      " @!p cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n}\n" ::"l"(gmem_dst),
      "r"(smem_u32(smem_src)), "r"(bytes), "r"(static_cast<uint32_t>(store))
      : "memory");
}

__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// Relaxed fp32 vector reduction (sm_90): gmem_dst 16-byte aligned.
__device__ __forceinline__ void red_add_v4_f32(float* gmem_dst, float a, float b, float c,
                                               float d) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(gmem_dst), "f"(a), "f"(b),
               "f"(c), "f"(d)
               : "memory");
}

// ---------------------------------------------------------------------------
// Global-memory semaphores (deterministic dQ order).
// ---------------------------------------------------------------------------
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

__device__ __forceinline__ int ld_acquire_gpu_s32(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void red_release_gpu_add_s32(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// Returns once *sem == value (acquire).
__device__ __forceinline__ void sem_wait_eq(const int* sem, int value) {
  uint32_t ns = 32;
  while (ld_acquire_gpu_s32(sem) != value) {
    __nanosleep(ns);
    ns = ns < 256 ? 2 * ns : 256;
  }
}

}  // namespace sm90
}  // namespace flash4
