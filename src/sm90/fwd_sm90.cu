// Hopper forward: not implemented yet (issue 3). Until it lands, dispatch
// sends every call to the portable path, and supported() says why.
#include "common/kernels.hpp"

namespace flash4 {

bool sm90_fwd_supported(const FwdParams&, int, int, std::string* why) {
  if (why) *why = "the Hopper (sm_90a) forward is not implemented yet";
  return false;
}

cudaError_t sm90_fwd_run(const FwdParams&, cudaStream_t) { return cudaErrorNotSupported; }

}  // namespace flash4
