// Hopper backward, head dim 128: bf16/fp16 x {no mask, causal, window} x
// softcap; the deterministic mode's kernels are in bwd_sm90_hdim128_det.cu.
#include "sm90/bwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t bwd_run_hdim128(const BwdLaunch& l, bool bf16, cudaStream_t stream) {
  if (l.deterministic) return bwd_run_hdim128_det(l, bf16, stream);
  return launch_bwd_shipped<128, false>(l, bf16, stream);
}
}  // namespace sm90
}  // namespace flash4
