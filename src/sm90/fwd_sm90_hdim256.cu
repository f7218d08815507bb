// Hopper forward, head dim 256: bf16/fp16 x causal/non-causal x softcap/none.
#include "sm90/fwd_launch.cuh"

namespace flash4 {
namespace sm90 {
cudaError_t fwd_run_hdim256(const FwdKernelArgs& args, const FwdLaunch& l, bool bf16, bool causal,
                            bool softcap, int consumers, cudaStream_t stream) {
  return launch_fwd_shipped<256>(args, l, bf16, causal, softcap, consumers, stream);
}
}  // namespace sm90
}  // namespace flash4
