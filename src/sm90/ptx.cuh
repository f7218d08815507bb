// Thin wrappers over the Hopper (sm_90a) instructions the forward kernel uses:
// one function per instruction, no policy. TMA, mbarrier and proxy fences go
// through CCCL's cuda::ptx where it has them; wgmma, setmaxnreg and named
// barriers are raw inline PTX (CCCL 3.0 has no wrappers for them).
//
// Everything here is device code for sm_90a only: compile with
// -gencode=arch=compute_90a,code=sm_90a.
#pragma once
#include <cuda/ptx>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

namespace flash4 {
namespace sm90 {

// ---------------------------------------------------------------------------
// Shared-memory addresses
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The 1024-byte aligned base of the dynamic shared memory (the launch asks
// for 1024 bytes of slack). Aligned by pointer arithmetic on the __shared__
// array: a round trip through an integer loses the address space, and every
// shared-memory access through the result became a generic LD.E / ST.E
// (slower, and tracked by the long scoreboard) instead of LDS / STS.
__device__ __forceinline__ uint8_t* smem_aligned_1024(uint8_t* smem_raw) {
  return smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
}

// ---------------------------------------------------------------------------
// 128-byte swizzle (the pattern TMA SWIZZLE_128B writes and wgmma's
// layout type 1 reads). A "panel" is rows x 64 16-bit elements, each row
// 128 bytes, the panel base 1024-byte aligned. Within each 1024-byte group
// of 8 rows, the 16-byte chunk index (address bits 4..6) is XORed with the
// row index within the group (address bits 7..9): sw128_byte_offset in
// sm90/fragments.hpp.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// wgmma shared-memory matrix descriptor (64 bits):
//   bits  0..13  start address >> 4 (shared window, 18-bit address)
//   bits 16..29  leading-dimension byte offset (LBO) >> 4
//   bits 32..45  stride-dimension byte offset (SBO) >> 4
//   bits 49..51  base offset (0: every tile here is 1024-byte aligned)
//   bits 62..63  layout: 0 none, 1 = 128B swizzle, 2 = 64B, 3 = 32B
// For 128B swizzle and 16-bit data:
//   K-major operand (rows of the MN dim, K contiguous): 8-row groups are
//     SBO = 1024 bytes apart; LBO is unused (set to 16). A k16 step inside a
//     64-wide panel adds 32 bytes to the start address; the next 64-wide
//     panel starts rows*128 bytes later.
//   MN-major operand (rows of K, MN contiguous): 8-row groups of K are
//     SBO = 1024 bytes apart; 64-wide MN panels are LBO = rows*128 bytes
//     apart; a k16 step adds 16*128 = 2048 bytes.
// ---------------------------------------------------------------------------
__device__ __forceinline__ uint64_t make_sw128_desc(uint32_t smem_addr, uint32_t lbo_bytes,
                                                    uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4);
  d |= static_cast<uint64_t>((lbo_bytes & 0x3FFFFu) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo_bytes & 0x3FFFFu) >> 4) << 32;
  d |= 1ull << 62;
  return d;
}
// Advance a descriptor's start address by `bytes` (multiple of 16; stays in
// the 14-bit field because shared addresses are below 256 KB).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + static_cast<uint64_t>(bytes >> 4);
}

// ---------------------------------------------------------------------------
// wgmma: fence / commit / wait
// ---------------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Compiler-only fence on a register: forces the value to be (re)defined at
// this point, so accesses are not moved across wgmma issue/wait points.
__device__ __forceinline__ void reg_fence(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }
template <int N>
__device__ __forceinline__ void reg_fence_array(float (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) reg_fence(a[i]);
}

// ---------------------------------------------------------------------------
// wgmma.mma_async m64nNk16, f32 accumulators, 16-bit inputs.
// d: N/2 f32 registers per thread; fragment (warp w of the warpgroup, lane l,
//   register i): row = 16w + l/4 + 8*((i>>1)&1), col = 8*(i>>2) + 2*(l%4) + (i&1).
// SS form: A and B from shared memory (descriptors), both K-major here.
// RS form: A from registers (4 x b32 = 8 elements: (r, 2q..2q+1),
//   (r+8, 2q..), (r, 2q+8..), (r+8, 2q+8..) with r = 16w + l/4, q = l%4),
//   B from shared memory; kTransB = 1 reads B MN-major.
// scale_d == 0: D = A*B (accumulator input ignored); else D += A*B.
// ---------------------------------------------------------------------------
// Operand lists of the inline asm, in chunks of 8 accumulators: FLASH4_WGMMA_P<k>
// are the placeholders %8k..%8k+7, FLASH4_WGMMA_O<k>(d) the "+f" operands d[8k..8k+7]
// (chunks after the first begin with a comma).
#define FLASH4_WGMMA_P0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define FLASH4_WGMMA_P1 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define FLASH4_WGMMA_P2 ", %16, %17, %18, %19, %20, %21, %22, %23"
#define FLASH4_WGMMA_P3 ", %24, %25, %26, %27, %28, %29, %30, %31"
#define FLASH4_WGMMA_P4 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define FLASH4_WGMMA_P5 ", %40, %41, %42, %43, %44, %45, %46, %47"
#define FLASH4_WGMMA_P6 ", %48, %49, %50, %51, %52, %53, %54, %55"
#define FLASH4_WGMMA_P7 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define FLASH4_WGMMA_P8 ", %64, %65, %66, %67, %68, %69, %70, %71"
#define FLASH4_WGMMA_P9 ", %72, %73, %74, %75, %76, %77, %78, %79"
#define FLASH4_WGMMA_P10 ", %80, %81, %82, %83, %84, %85, %86, %87"
#define FLASH4_WGMMA_P11 ", %88, %89, %90, %91, %92, %93, %94, %95"
#define FLASH4_WGMMA_P12 ", %96, %97, %98, %99, %100, %101, %102, %103"
#define FLASH4_WGMMA_P13 ", %104, %105, %106, %107, %108, %109, %110, %111"
#define FLASH4_WGMMA_P14 ", %112, %113, %114, %115, %116, %117, %118, %119"
#define FLASH4_WGMMA_P15 ", %120, %121, %122, %123, %124, %125, %126, %127"
#define FLASH4_WGMMA_O0(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), \
  "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define FLASH4_WGMMA_O1(d) \
  , "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
  "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define FLASH4_WGMMA_O2(d) \
  , "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), \
  "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define FLASH4_WGMMA_O3(d) \
  , "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
  "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FLASH4_WGMMA_O4(d) \
  , "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
  "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define FLASH4_WGMMA_O5(d) \
  , "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
  "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define FLASH4_WGMMA_O6(d) \
  , "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), \
  "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55])
#define FLASH4_WGMMA_O7(d) \
  , "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
  "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FLASH4_WGMMA_O8(d) \
  , "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), \
  "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])
#define FLASH4_WGMMA_O9(d) \
  , "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), \
  "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define FLASH4_WGMMA_O10(d) \
  , "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), \
  "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define FLASH4_WGMMA_O11(d) \
  , "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), \
  "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define FLASH4_WGMMA_O12(d) \
  , "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), \
  "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103])
#define FLASH4_WGMMA_O13(d) \
  , "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), \
  "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define FLASH4_WGMMA_O14(d) \
  , "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), \
  "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119])
#define FLASH4_WGMMA_O15(d) \
  , "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), \
  "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
// m64n40 (20 accumulators: two chunks and a half one).
#define FLASH4_WGMMA_D20_STR FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 ", %16, %17, %18, %19"
#define FLASH4_WGMMA_D20_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19])
#define FLASH4_WGMMA_D32_STR FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3
#define FLASH4_WGMMA_D32_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d)
#define FLASH4_WGMMA_D40_STR \
  FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3 \
  FLASH4_WGMMA_P4
#define FLASH4_WGMMA_D40_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d) \
  FLASH4_WGMMA_O4(d)
#define FLASH4_WGMMA_D64_STR \
  FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3 \
  FLASH4_WGMMA_P4 FLASH4_WGMMA_P5 FLASH4_WGMMA_P6 FLASH4_WGMMA_P7
#define FLASH4_WGMMA_D64_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d) \
  FLASH4_WGMMA_O4(d) FLASH4_WGMMA_O5(d) FLASH4_WGMMA_O6(d) FLASH4_WGMMA_O7(d)
#define FLASH4_WGMMA_D80_STR \
  FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3 \
  FLASH4_WGMMA_P4 FLASH4_WGMMA_P5 FLASH4_WGMMA_P6 FLASH4_WGMMA_P7 \
  FLASH4_WGMMA_P8 FLASH4_WGMMA_P9
#define FLASH4_WGMMA_D80_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d) \
  FLASH4_WGMMA_O4(d) FLASH4_WGMMA_O5(d) FLASH4_WGMMA_O6(d) FLASH4_WGMMA_O7(d) \
  FLASH4_WGMMA_O8(d) FLASH4_WGMMA_O9(d)
#define FLASH4_WGMMA_D88_STR \
  FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3 \
  FLASH4_WGMMA_P4 FLASH4_WGMMA_P5 FLASH4_WGMMA_P6 FLASH4_WGMMA_P7 \
  FLASH4_WGMMA_P8 FLASH4_WGMMA_P9 FLASH4_WGMMA_P10
#define FLASH4_WGMMA_D88_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d) \
  FLASH4_WGMMA_O4(d) FLASH4_WGMMA_O5(d) FLASH4_WGMMA_O6(d) FLASH4_WGMMA_O7(d) \
  FLASH4_WGMMA_O8(d) FLASH4_WGMMA_O9(d) FLASH4_WGMMA_O10(d)
#define FLASH4_WGMMA_D128_STR \
  FLASH4_WGMMA_P0 FLASH4_WGMMA_P1 FLASH4_WGMMA_P2 FLASH4_WGMMA_P3 \
  FLASH4_WGMMA_P4 FLASH4_WGMMA_P5 FLASH4_WGMMA_P6 FLASH4_WGMMA_P7 \
  FLASH4_WGMMA_P8 FLASH4_WGMMA_P9 FLASH4_WGMMA_P10 FLASH4_WGMMA_P11 \
  FLASH4_WGMMA_P12 FLASH4_WGMMA_P13 FLASH4_WGMMA_P14 FLASH4_WGMMA_P15
#define FLASH4_WGMMA_D128_OPS(d) \
  FLASH4_WGMMA_O0(d) FLASH4_WGMMA_O1(d) FLASH4_WGMMA_O2(d) FLASH4_WGMMA_O3(d) \
  FLASH4_WGMMA_O4(d) FLASH4_WGMMA_O5(d) FLASH4_WGMMA_O6(d) FLASH4_WGMMA_O7(d) \
  FLASH4_WGMMA_O8(d) FLASH4_WGMMA_O9(d) FLASH4_WGMMA_O10(d) FLASH4_WGMMA_O11(d) \
  FLASH4_WGMMA_O12(d) FLASH4_WGMMA_O13(d) FLASH4_WGMMA_O14(d) FLASH4_WGMMA_O15(d)

// One function per (form, shape): NAME<T>(d, ...) with T = __nv_bfloat16 or
// __half, N = 2 R. The operand numbers after the R accumulators are passed
// in (the preprocessor cannot add): SS A_ = desc_a, B_ = desc_b, P_ = scale_d;
// RS A0..A3 = the A registers, B_ = desc_b, P_ = scale_d. TA / TB: transpose
// (MN-major) A / B. The instruction string is written once per dtype.
#define FLASH4_WGMMA_SS_ASM(TY, N, R, A_, B_, P_, TA, TB)                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P_ ", 0;\n"                            \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {"             \
               FLASH4_WGMMA_D##R##_STR "}, %" #A_ ", %" #B_ ", p, 1, 1, " #TA ", " #TB ";\n}\n" \
               : FLASH4_WGMMA_D##R##_OPS(d)                                                \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d))
#define FLASH4_DEFINE_WGMMA_SS(NAME, N, R, A_, B_, P_, TA, TB)                             \
  template <typename T>                                                                    \
  __device__ __forceinline__ void NAME(float (&d)[R], uint64_t desc_a, uint64_t desc_b,    \
                                       int scale_d) {                                      \
    if constexpr (std::is_same<T, __nv_bfloat16>::value)                                   \
      FLASH4_WGMMA_SS_ASM("bf16", N, R, A_, B_, P_, TA, TB);                               \
    else                                                                                   \
      FLASH4_WGMMA_SS_ASM("f16", N, R, A_, B_, P_, TA, TB);                                \
  }
#define FLASH4_WGMMA_RS_ASM(TY, N, R, A0, A1, A2, A3, B_, P_, TB)                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P_ ", 0;\n"                            \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {"             \
               FLASH4_WGMMA_D##R##_STR "}, {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #B_ \
               ", p, 1, 1, " #TB ";\n}\n"                                                  \
               : FLASH4_WGMMA_D##R##_OPS(d)                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))
#define FLASH4_DEFINE_WGMMA_RS(NAME, N, R, A0, A1, A2, A3, B_, P_, TB)                     \
  template <typename T>                                                                    \
  __device__ __forceinline__ void NAME(float (&d)[R], const uint32_t (&a)[4],              \
                                       uint64_t desc_b, int scale_d) {                     \
    if constexpr (std::is_same<T, __nv_bfloat16>::value)                                   \
      FLASH4_WGMMA_RS_ASM("bf16", N, R, A0, A1, A2, A3, B_, P_, TB);                       \
    else                                                                                   \
      FLASH4_WGMMA_RS_ASM("f16", N, R, A0, A1, A2, A3, B_, P_, TB);                        \
  }

// SS, both operands K-major: S = Q K^T. N = 64, 128 (head dims 64, 128), 80
// (head dim 256's K/V block), 160 and 176 (wider head-dim-128 blocks, dev
// sweep only, docs/perf.md).
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n64k16, 64, 32, 32, 33, 34, 0, 0)
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n80k16, 80, 40, 40, 41, 42, 0, 0)
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n128k16, 128, 64, 64, 65, 66, 0, 0)
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n160k16, 160, 80, 80, 81, 82, 0, 0)
FLASH4_DEFINE_WGMMA_SS(wgmma_ss_m64n176k16, 176, 88, 88, 89, 90, 0, 0)

// RS, B MN-major (trans-b = 1): O += P V. N = 256 spans four 64-wide MN
// panels of B, LBO bytes apart.
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n64k16_tb, 64, 32, 32, 33, 34, 35, 36, 37, 1)
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n128k16_tb, 128, 64, 64, 65, 66, 67, 68, 69, 1)
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n256k16_tb, 256, 128, 128, 129, 130, 131, 132, 133, 1)

// RS, B K-major (trans-b = 0): S = Q K^T with Q from registers (the A
// fragment layout above) and K from shared memory.
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n64k16_kb, 64, 32, 32, 33, 34, 35, 36, 37, 0)
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n128k16_kb, 128, 64, 64, 65, 66, 67, 68, 69, 0)
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n160k16_kb, 160, 80, 80, 81, 82, 83, 84, 85, 0)
FLASH4_DEFINE_WGMMA_RS(wgmma_rs_m64n176k16_kb, 176, 88, 88, 89, 90, 91, 92, 93, 0)

// Dispatch on N.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d) {
  static_assert(N == 64 || N == 80 || N == 128 || N == 160 || N == 176,
                "instantiated N: 64, 80, 128, 160, 176");
  if constexpr (N == 64) wgmma_ss_m64n64k16<T>(d, desc_a, desc_b, scale_d);
  else if constexpr (N == 80) wgmma_ss_m64n80k16<T>(d, desc_a, desc_b, scale_d);
  else if constexpr (N == 128) wgmma_ss_m64n128k16<T>(d, desc_a, desc_b, scale_d);
  else if constexpr (N == 160) wgmma_ss_m64n160k16<T>(d, desc_a, desc_b, scale_d);
  else wgmma_ss_m64n176k16<T>(d, desc_a, desc_b, scale_d);
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4],
                                            uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated N: 64, 128");
  if constexpr (N == 64) wgmma_rs_m64n64k16_tb<T>(d, a, desc_b, scale_d);
  else wgmma_rs_m64n128k16_tb<T>(d, a, desc_b, scale_d);
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_kb(float (&d)[N / 2], const uint32_t (&a)[4],
                                            uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128 || N == 160 || N == 176, "instantiated N: 64, 128, 160, 176");
  if constexpr (N == 64) wgmma_rs_m64n64k16_kb<T>(d, a, desc_b, scale_d);
  else if constexpr (N == 128) wgmma_rs_m64n128k16_kb<T>(d, a, desc_b, scale_d);
  else if constexpr (N == 160) wgmma_rs_m64n160k16_kb<T>(d, a, desc_b, scale_d);
  else wgmma_rs_m64n176k16_kb<T>(d, a, desc_b, scale_d);
}

// ldmatrix .x4 (16-bit elements): thread t gives the shared address of row
// t % 8 of 8x8 matrix t / 8; r[j] receives matrix j's elements (row l/4,
// columns 2(l%4), 2(l%4)+1) for lane l.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr)
               : "memory");
}

// stmatrix .x4 (16-bit elements), the inverse of ldmatrix: thread t gives the
// shared address of row t % 8 of 8x8 matrix t / 8; r[j] holds matrix j's
// elements (row l/4, columns 2(l%4), 2(l%4)+1) for lane l.
__device__ __forceinline__ void stmatrix_x4(uint32_t smem_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// stmatrix .x4 / .x2 .trans: as above, but row i of matrix j (address from
// thread 8 j + i) receives column i of the fragment (rows 0..7).
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t smem_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                   smem_addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}
__device__ __forceinline__ void stmatrix_x2_trans(uint32_t smem_addr, uint32_t r0, uint32_t r1) {
  asm volatile("stmatrix.sync.aligned.m8n8.x2.trans.shared.b16 [%0], {%1, %2};\n" ::"r"(smem_addr),
               "r"(r0), "r"(r1)
               : "memory");
}

// ---------------------------------------------------------------------------
// Register reconfiguration (whole warpgroup; needs a register cap at entry,
// i.e. __launch_bounds__(threads, 1)).
// ---------------------------------------------------------------------------
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: multiple of 8 in [24, 256]");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: multiple of 8 in [24, 256]");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Volatile 32-bit shared store (used as a scheduling pin, see fwd_kernel.cuh).
__device__ __forceinline__ void st_shared_volatile_f32(uint32_t addr, float v) {
  asm volatile("st.volatile.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}

// ---------------------------------------------------------------------------
// Named barriers (ids 1..15; 0 is __syncthreads). count: threads, multiple of 32.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// ---------------------------------------------------------------------------
// Proxy fence: generic-proxy shared-memory writes made visible to the async
// proxy (TMA store, wgmma operand reads).
// ---------------------------------------------------------------------------
__device__ __forceinline__ void fence_proxy_async_smem() {
  cuda::ptx::fence_proxy_async(cuda::ptx::space_shared);
}

// ---------------------------------------------------------------------------
// mbarrier (CCCL wrappers)
// ---------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  cuda::ptx::mbarrier_init(bar, count);
}
__device__ __forceinline__ void mbar_init_fence() {
  cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  (void)cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta,
                                             cuda::ptx::space_shared, bar, bytes);
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) { (void)cuda::ptx::mbarrier_arrive(bar); }
// Blocks until the phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  while (!cuda::ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}

// ---------------------------------------------------------------------------
// TMA (CCCL wrappers), 4-D tiled tensor maps.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void tma_load_4d(void* smem_dst, const void* tmap, uint64_t* bar, int c0,
                                            int c1, int c2, int c3) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem_dst, tmap,
                                  coords, bar);
}
__device__ __forceinline__ void tma_store_4d(const void* tmap, const void* smem_src, int c0, int c1,
                                             int c2, int c3) {
  const int32_t coords[4] = {c0, c1, c2, c3};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_global, cuda::ptx::space_shared, tmap, coords,
                                  smem_src);
}
// 2-D form (the backward's fp32 row arrays: {rows, row groups}).
__device__ __forceinline__ void tma_load_2d(void* smem_dst, const void* tmap, uint64_t* bar, int c0,
                                            int c1) {
  const int32_t coords[2] = {c0, c1};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem_dst, tmap,
                                  coords, bar);
}
// 5-D forms (the forward's tensor maps: {D, rows, heads, batch, ext}, see fwd_sm90.cu).
__device__ __forceinline__ void tma_load_5d(void* smem_dst, const void* tmap, uint64_t* bar, int c0,
                                            int c1, int c2, int c3, int c4) {
  const int32_t coords[5] = {c0, c1, c2, c3, c4};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global, smem_dst, tmap,
                                  coords, bar);
}
__device__ __forceinline__ void tma_store_5d(const void* tmap, const void* smem_src, int c0, int c1,
                                             int c2, int c3, int c4) {
  const int32_t coords[5] = {c0, c1, c2, c3, c4};
  cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_global, cuda::ptx::space_shared, tmap, coords,
                                  smem_src);
}
__device__ __forceinline__ void tma_store_commit() { cuda::ptx::cp_async_bulk_commit_group(); }
__device__ __forceinline__ void tma_store_wait_read_all() {
  cuda::ptx::cp_async_bulk_wait_group_read(cuda::ptx::n32_t<0>{});
}
__device__ __forceinline__ void prefetch_tmap(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

// ---------------------------------------------------------------------------
// Conversions: two floats into one b32 of 16-bit values (lo = first).
// ---------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// tanh(s * pre / (2 log2 e)) for softcap (pre = 2*log2(e)*scale/cap > 0):
// one MUFU.EX2 and ~10 FMA-pipe operations (no MUFU.RCP, so softcap adds one
// MUFU op per score, not two). e = 2^(-|s|*pre) = exp(-2|x|) in (0, 1];
// r = 1/(1 + e) from a quadratic seed in e (relative error <= 0.0102) and two
// Newton steps; tanh|x| = (1 - e)/(1 + e) = 2r - 1, absolute error ~3e-7;
// the sign is that of s. |s| = inf gives +-1.
__device__ __forceinline__ float softcap_tanh(float s, float pre) {
  const float e = ex2_approx(fabsf(s) * -pre);
  const float y = 1.0f + e;
  float r = fmaf(fmaf(0.32322367f, e, -0.80805977f), e, 0.9898907f);
  r = fmaf(r, fmaf(-y, r, 1.0f), r);
  r = fmaf(r, fmaf(-y, r, 1.0f), r);
  return copysignf(fmaf(2.0f, r, -1.0f), s);
}

// exp2 on the FMA/ALU pipes (FA4's software exp2, own coefficients): split
// x = floor(x) + f, f in [0, 1); 2^f by a degree-3 polynomial with p(0) = 1
// (near-minimax for relative error, max 8.6e-5: below bf16/fp16 rounding of
// P); floor(x) added to the exponent field. add.rm with 1.5*2^23 leaves
// floor(x) in the low mantissa bits of xr; shifting xr's bits left by 23
// moves them (mod 2^9, two's complement) into the exponent field.
// x <= -127 (masked scores: -inf) gives exactly +0; assumes x < 128.
__device__ __forceinline__ float ex2_poly3(float x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  x = fmaxf(x, -127.0f);
  const float xr = __fadd_rd(x, kMagic);
  const float f = x - (xr - kMagic);
  const float p = fmaf(fmaf(fmaf(0.07706704f, f, 0.22764499f), f, 0.69511676f), f, 1.0f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(xr) << 23));
}

}  // namespace sm90
}  // namespace flash4
