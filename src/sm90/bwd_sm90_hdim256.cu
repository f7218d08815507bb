// Hopper backward, head dim 256 (also runs 136..248): bf16/fp16 x {no mask,
// causal, window} x softcap; no deterministic kernels (bwd_consumer_d256.cuh).
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim256(const BwdLaunch& l, bool bf16, cudaStream_t stream) {
  if (l.deterministic) return cudaErrorNotSupported;  // sm90_bwd_supported says so
  return launch_bwd_shipped<256, false>(l, bf16, stream);
}
}  // namespace sm90
}  // namespace flash4
