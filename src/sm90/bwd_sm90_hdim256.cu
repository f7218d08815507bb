// Hopper backward, head dim 256 (also runs 136..248): bf16/fp16 x {no mask,
// causal, window} x softcap; the deterministic mode's kernels are in
// bwd_sm90_hdim256_det.cu.
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim256(const BwdLaunch& l, bool bf16, cudaStream_t stream) {
  if (l.deterministic) return bwd_run_hdim256_det(l, bf16, stream);
  return launch_bwd_shipped<256, false>(l, bf16, stream);
}
}  // namespace sm90
}  // namespace flash4
