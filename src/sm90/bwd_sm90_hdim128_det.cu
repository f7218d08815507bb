// Hopper backward, head dim 128, deterministic dQ order (see
// bwd_kernel.cuh): bf16/fp16 x causal/non-causal.
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim128_det(const BwdLaunch& l, bool bf16, bool causal, cudaStream_t stream) {
  return launch_bwd_shipped<128, true>(l, bf16, causal, stream);
}
}  // namespace sm90
}  // namespace flash4
