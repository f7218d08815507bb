// Hopper backward, head dim 64: bf16/fp16 x causal/non-causal.
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim64(const BwdLaunch& l, bool bf16, bool causal, cudaStream_t stream) {
  return launch_bwd_shipped<64>(l, bf16, causal, stream);
}
}  // namespace sm90
}  // namespace flash4
