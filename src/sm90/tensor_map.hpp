// Host side of TMA for the Hopper kernels: the driver's cuTensorMapEncodeTiled
// (looked up once through the runtime, no -lcuda), the stride rules, and the
// two map shapes the kernels use.
//
// Plain maps: 4-D {D, S, H, B}, byte strides {row, head, batch}.
// Ragged maps (varlen tensors; K/V with seqused_k): 5-D {D, L, H, B, E},
// byte strides {row, head, batch, row}, L = max length, E = 2^31, base = the
// tensor minus L rows. A kernel addresses position pos of a sequence
// (start, len) with row coordinate L - len + pos and 5th coordinate
// start + len: the row reached is start + pos, and rows pos >= len fall
// outside dimension 1, so TMA zero-fills them on loads and drops them on
// stores.
// Boxes are 64 columns wide (128 bytes, 128B swizzle); dimension 0 is the
// real head dim, so a kernel built for a larger head dim reads zeros in the
// columns past D and its stores drop them (how head dims between the
// instantiated ones run).
#pragma once
#include <cuda.h>

#include <cstdint>
#include <string>

namespace flash4 {
namespace sm90 {

// A (D, S, H, B) 16-bit tensor; strides in elements.
struct TmaTensor {
  const void* ptr = nullptr;
  int64_t d = 0, s = 0, h = 0, b = 0;
  int64_t row_stride = 0, head_stride = 0, batch_stride = 0;
};

// Whether the driver provides cuTensorMapEncodeTiled.
bool tma_encoder_available();

// TMA's rules for one tensor (16-byte aligned base, strides positive
// multiples of 16 bytes below 2^40; ragged: the shifted base must not wrap).
// On failure *why = "<path> needs ..." naming the tensor.
bool tma_check(const char* path, const char* name, const TmaTensor& t, bool ragged,
               std::string* why);

// Encodes a plain (ragged = false) or ragged map with boxes of
// {64, box_rows, 1, 1(, 1)}. False when the driver rejects it.
bool tma_encode(CUtensorMap* map, const TmaTensor& t, bool bf16, bool ragged, uint32_t box_rows);

// A 2-D fp32 map {inner, outer} (row stride inner * 4 bytes, a multiple of
// 16), boxes {box, 1}, no swizzle: the backward's row arrays.
bool tma_encode_rows_f32(CUtensorMap* map, const float* ptr, uint64_t inner, uint64_t outer,
                         uint32_t box);

}  // namespace sm90
}  // namespace flash4
