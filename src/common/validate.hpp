// Validation: every rule of the API checked before any launch. On success it
// fills the kernel parameters; on failure it returns a status and a message
// naming the argument and the rule, and nothing has been written anywhere.
#pragma once
#include <string>
#include "common/params.hpp"
#include "flash4/flash4.h"

namespace flash4 {

// kDevice: q/k/v/out are fp16/bf16 (out/lse/grad dtypes as the GPU writes them).
// kReference: host pointers; outputs may also be FP32 or FP64.
enum class Target { kDevice, kReference };

flash4_status validate_fwd(const flash4_fwd_args& args, Target target, FwdParams* params,
                           std::string* message);
flash4_status validate_bwd(const flash4_bwd_args& args, Target target, BwdParams* params,
                           std::string* message);

}  // namespace flash4
