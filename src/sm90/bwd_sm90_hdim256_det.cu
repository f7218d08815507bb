// Hopper backward, head dim 256, deterministic dQ order (see bwd_kernel.cuh):
// bf16/fp16 x {no mask, causal, window} x softcap.
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim256_det(const BwdLaunch& l, bool bf16, cudaStream_t stream) {
  return launch_bwd_shipped<256, true>(l, bf16, stream);
}
}  // namespace sm90
}  // namespace flash4
