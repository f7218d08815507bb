// Hopper forward with FA4's software exp2 (exp2_emulation = 1): every 4th
// 8-column chunk of a block's exponentials by the degree-3 polynomial on the
// FMA pipe (ex2_poly3), the rest on MUFU.EX2. Head dims 64 and 128 (and the
// head dims they run), no softcap; bf16/fp16 x causal/non-causal. Off by
// default: measured slower than MUFU alone on H100 (docs/perf.md).
#include "sm90/fwd_launch.cuh"

namespace flash4 {
namespace sm90 {

template <int kD, typename T, bool kCausal, int kConsumers>
using Exp2EmuFwdConfig = FwdConfig<kD, T, kCausal, /*stages*/ 2, /*overlap*/ true,
                                   /*pingpong*/ true, /*rescale threshold*/ 0,
                                   /*exp2 emulation*/ kExp2EmuEveryShipped, kConsumers,
                                   /*softcap*/ false, /*block_n*/ 0, kShippedQInRegs<kD>>;

template <typename T, bool kCausal>
cudaError_t launch_exp2emu(const FwdKernelArgs& args, const FwdLaunch& l, int kd, int consumers,
                           cudaStream_t stream) {
  if (kd == 64 && consumers == 3)
    return launch_fwd<Exp2EmuFwdConfig<64, T, kCausal, 3>>(args, l, stream);
  if (kd == 64 && consumers == 2 && kCausal)
    return launch_fwd<Exp2EmuFwdConfig<64, T, true, 2>>(args, l, stream);
  if (kd == 128 && consumers == 2)
    return launch_fwd<Exp2EmuFwdConfig<128, T, kCausal, 2>>(args, l, stream);
  return cudaErrorInvalidValue;  // a choice choose_fwd never makes
}

cudaError_t fwd_run_exp2emu(const FwdKernelArgs& args, const FwdLaunch& l, int kd, bool bf16,
                            bool causal, int consumers, cudaStream_t stream) {
  if (bf16)
    return causal ? launch_exp2emu<__nv_bfloat16, true>(args, l, kd, consumers, stream)
                  : launch_exp2emu<__nv_bfloat16, false>(args, l, kd, consumers, stream);
  return causal ? launch_exp2emu<__half, true>(args, l, kd, consumers, stream)
                : launch_exp2emu<__half, false>(args, l, kd, consumers, stream);
}

}  // namespace sm90
}  // namespace flash4
