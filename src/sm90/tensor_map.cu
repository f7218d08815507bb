// TMA tensor maps for the Hopper kernels (see tensor_map.hpp).
#include "sm90/tensor_map.hpp"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <mutex>

namespace flash4 {
namespace sm90 {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
    else
      (void)cudaGetLastError();  // a failed lookup must not look like a launch error later
  });
  return fn;
}

constexpr int64_t kElem = 2;

int64_t at_least_1(int64_t x) { return x > 0 ? x : 1; }

// Byte strides {row, head, batch}. A dimension of size <= 1 is never
// stepped, so its stride becomes a legal packed value (the caller's may be
// 0 or anything); ragged maps step rows through two dimensions and always
// use the real row stride.
void byte_strides(const TmaTensor& t, bool ragged, uint64_t out[3]) {
  const int64_t packed_row = ((t.d * kElem + 15) / 16) * 16;
  const int64_t s = at_least_1(t.s), h = at_least_1(t.h);
  const int64_t rs = (t.s > 1 || ragged) ? t.row_stride * kElem : packed_row;
  const int64_t hs = t.h > 1 ? t.head_stride * kElem : rs * s;
  const int64_t bs = t.b > 1 ? t.batch_stride * kElem : hs * h;
  out[0] = static_cast<uint64_t>(rs);
  out[1] = static_cast<uint64_t>(hs);
  out[2] = static_cast<uint64_t>(bs);
}

bool legal_stride(int64_t bytes) { return bytes > 0 && bytes % 16 == 0 && bytes < (int64_t(1) << 40); }

}  // namespace

bool tma_encoder_available() { return encoder() != nullptr; }

bool tma_check(const char* path, const char* name, const TmaTensor& t, bool ragged,
               std::string* why) {
  auto no = [&](const std::string& rule) {
    if (why) *why = std::string(path) + " needs " + rule;
    return false;
  };
  if ((reinterpret_cast<uintptr_t>(t.ptr) & 15u) != 0)
    return no(std::string("16-byte aligned ") + name + " (TMA)");
  if (t.s <= 0 || t.h <= 0 || t.b <= 0) return true;  // empty: never read or written
  uint64_t st[3];
  byte_strides(t, ragged, st);
  const int64_t sizes[3] = {ragged ? int64_t(2) : t.s, t.h, t.b};
  const char* dim_names[3] = {"row", "head", "batch"};
  for (int i = 0; i < 3; ++i)
    if (sizes[i] > 1 && !legal_stride(static_cast<int64_t>(st[i])))
      return no(std::string(name) + " " + dim_names[i] +
                " stride in bytes positive, a multiple of 16 and below 2^40 (TMA)");
  if (ragged && reinterpret_cast<uintptr_t>(t.ptr) < static_cast<uint64_t>(t.s) * st[0])
    return no(std::string("the address of ") + name +
              " to be at least max_seqlen rows (varlen / seqused_k maps address rows from max_seqlen "
              "rows before it)");
  return true;
}

bool tma_encode(CUtensorMap* map, const TmaTensor& t, bool bf16, bool ragged, uint32_t box_rows) {
  auto enc = encoder();
  if (enc == nullptr) return false;
  const uint64_t L = static_cast<uint64_t>(at_least_1(t.s));
  uint64_t st[3];
  byte_strides(t, ragged, st);
  const cuuint64_t dims[5] = {static_cast<cuuint64_t>(t.d), static_cast<cuuint64_t>(L),
                              static_cast<cuuint64_t>(at_least_1(t.h)),
                              static_cast<cuuint64_t>(at_least_1(t.b)), cuuint64_t(1) << 31};
  const cuuint64_t strides[4] = {st[0], st[1], st[2], st[0]};
  const cuuint32_t box[5] = {64u, box_rows, 1u, 1u, 1u};
  const cuuint32_t estr[5] = {1u, 1u, 1u, 1u, 1u};
  const char* base = static_cast<const char*>(t.ptr);
  if (ragged) base = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(t.ptr) - L * st[0]);
  const CUresult r =
      enc(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
          ragged ? 5u : 4u, const_cast<char*>(base), dims, strides, box, estr,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool tma_encode_rows_f32(CUtensorMap* map, const float* ptr, uint64_t inner, uint64_t outer,
                         uint32_t box) {
  auto enc = encoder();
  if (enc == nullptr || inner == 0 || outer == 0 || (inner * 4) % 16 != 0) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner * 4)};
  const cuuint32_t boxd[2] = {box, 1u};
  const cuuint32_t estr[2] = {1u, 1u};
  const CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2u, const_cast<float*>(ptr), dims,
                         strides, boxd, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                         CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace sm90
}  // namespace flash4
