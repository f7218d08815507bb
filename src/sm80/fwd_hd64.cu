// Explicit instantiations of the portable forward for padded head dim 64
// (one translation unit per head dim so that builds run in parallel).
#include "sm80/fwd_kernel.cuh"

namespace flash4 {
namespace sm80 {

template cudaError_t launch_fwd<FwdHd64<__half>>(const FwdParams&, cudaStream_t);
template cudaError_t launch_fwd<FwdHd64<__nv_bfloat16>>(const FwdParams&, cudaStream_t);

}  // namespace sm80
}  // namespace flash4
