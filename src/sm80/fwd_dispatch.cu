// Portable forward: support query and dispatch to the per-head-dim kernels.
#include <cstdint>
#include <string>
#include "common/kernels.hpp"
#include "sm80/fwd_config.cuh"

namespace flash4 {

namespace {

template <template <typename> class Cfg>
cudaError_t run_dtype(const FwdParams& p, cudaStream_t stream) {
  if (p.dtype == DType::kFp16) return sm80::launch_fwd<Cfg<__half>>(p, stream);
  return sm80::launch_fwd<Cfg<__nv_bfloat16>>(p, stream);
}

int block_m_for(int headdim) {
  if (headdim <= 64) return sm80::FwdHd64<__half>::kBlockM;
  if (headdim <= 96) return sm80::FwdHd96<__half>::kBlockM;
  if (headdim <= 128) return sm80::FwdHd128<__half>::kBlockM;
  if (headdim <= 192) return sm80::FwdHd192<__half>::kBlockM;
  return sm80::FwdHd256<__half>::kBlockM;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }
bool stride_ok(int64_t s) { return s % 8 == 0; }  // 8 16-bit elements = 16 bytes

}  // namespace

bool sm80_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why) {
  auto no = [&](const std::string& m) {
    if (why) *why = "portable path: " + m;
    return false;
  };
  if (cc_major < 8) {
    return no("needs compute capability >= 8.0 (device has " + std::to_string(cc_major) + "." +
              std::to_string(cc_minor) + ")");
  }
  if (p.dtype != DType::kFp16 && p.dtype != DType::kBf16) return no("dtype must be fp16 or bf16");
  if (p.headdim < 8 || p.headdim > 256 || p.headdim % 8 != 0) {
    return no("head dim must be a multiple of 8 in [8, 256] (got " + std::to_string(p.headdim) +
              ")");
  }
  if (p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) {
    return no("heads_q must be a positive multiple of heads_kv");
  }
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out)) {
    return no("q, k, v and out must be 16-byte aligned");
  }
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                             p.o_batch_stride, p.o_row_stride, p.o_head_stride};
  for (int64_t s : strides) {
    if (!stride_ok(s)) return no("batch, row and head strides must be multiples of 8 elements");
  }
  const long long grid =
      sm80::fwd_num_m_blocks(p.seqlen_q, block_m_for(p.headdim)) * p.heads_q * p.batch;
  if (grid > 0x7fffffffLL) return no("too many query blocks for one launch");
  if (why) *why = "portable path (sm80-class mma.sync kernels)";
  return true;
}

cudaError_t sm80_fwd_run(const FwdParams& p, cudaStream_t stream) {
  if (p.headdim <= 64) return run_dtype<sm80::FwdHd64>(p, stream);
  if (p.headdim <= 96) return run_dtype<sm80::FwdHd96>(p, stream);
  if (p.headdim <= 128) return run_dtype<sm80::FwdHd128>(p, stream);
  if (p.headdim <= 192) return run_dtype<sm80::FwdHd192>(p, stream);
  if (p.headdim <= 256) return run_dtype<sm80::FwdHd256>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace flash4
