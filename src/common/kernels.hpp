// Entry points of the kernel families, one block per path. Validation has
// already run; each family checks only what it itself cannot do.
#pragma once
#include <cuda_runtime.h>
#include <string>
#include "common/params.hpp"

namespace flash4 {

// ---- portable forward (sm80-class: mma.sync, ldmatrix, cp.async) --------
// Runs on compute capability >= 8.0. Head dims up to 256, multiples of 8.
bool sm80_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why);
cudaError_t sm80_fwd_run(const FwdParams& p, cudaStream_t stream);

// ---- Hopper forward (sm_90a: TMA, wgmma, warp specialisation) -----------
// Defined only when FLASH4_HAVE_SM90; dispatch checks the macro.
bool sm90_fwd_supported(const FwdParams& p, int cc_major, int cc_minor, std::string* why);
cudaError_t sm90_fwd_run(const FwdParams& p, cudaStream_t stream);

}  // namespace flash4
