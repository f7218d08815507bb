// Fragment ownership of the Hopper kernels as index functions: which element
// of a tile a thread holds, and which shared-memory bytes it addresses. Host
// and device code; tests/test_fragments.cpp checks them against each other.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FLASH4_HD __host__ __device__
#else
#define FLASH4_HD
#endif

namespace flash4 {
namespace sm90 {

struct RowCol {
  int row, col;
};

// wgmma accumulator (m64 x N, f32) of a warpgroup: register i of lane l in
// warp w (0..3) holds this element.
FLASH4_HD constexpr RowCol wgmma_c_elem(int warp, int lane, int i) {
  return {16 * warp + lane / 4 + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane % 4) + (i & 1)};
}

// wgmma A operand from registers (m64 x k16, 16-bit): element e (0, 1) of
// 32-bit register j (0..3) of lane l in warp w.
FLASH4_HD constexpr RowCol wgmma_a_elem(int warp, int lane, int j, int e) {
  return {16 * warp + lane / 4 + 8 * (j & 1), 8 * (j >> 1) + 2 * (lane % 4) + e};
}

// The accumulator register that becomes element e of A register j for k step
// kk when an m64 x N accumulator (S) is packed into the A operand of the next
// wgmma (P = S in 16 bits): the same thread holds both, no shuffle.
FLASH4_HD constexpr int acc_reg_for_a(int kk, int j, int e) { return 8 * kk + 2 * j + e; }

// Byte offset of element (row, col) in a 128B-swizzled 16-bit panel (64
// columns, 128-byte rows, base 1024-aligned): within each group of 8 rows
// the 16-byte chunk index is XORed with the row index in the group.
FLASH4_HD constexpr uint32_t sw128_byte_offset(uint32_t row, uint32_t col) {
  return row * 128u + ((((col * 2u) >> 4) ^ (row & 7u)) << 4) + ((col * 2u) & 15u);
}

// ldmatrix.x4 that loads the A fragment of k step kk (16 columns) for warp w
// from 128B-swizzled panels `panel_bytes` apart: the byte offset, from the
// warpgroup's first row in panel 0 (a multiple of 8 rows from the panel
// base), of the 16-byte row piece that lane l addresses. Matrix m = l / 8
// covers rows 8 (m & 1) .. +7 of the warp's 16 and column half m >> 1, so
// the registers it returns are A registers 0..3 in order.
FLASH4_HD constexpr uint32_t ldmatrix_a_offset(int warp, int lane, int kk, uint32_t panel_bytes) {
  return static_cast<uint32_t>(kk / 4) * panel_bytes +
         sw128_byte_offset(static_cast<uint32_t>(16 * warp + 8 * ((lane / 8) & 1) + (lane & 7)),
                           static_cast<uint32_t>((kk % 4) * 16 + 8 * (lane / 16)));
}

// stmatrix.x4 that stores accumulator columns [8 c0, 8 c0 + 16) (c0 even,
// within a 64-column panel) of warp w's 16 rows into a 128B-swizzled panel:
// the byte offset, from the warpgroup's first row (a multiple of 8 rows from
// the panel base), of the 16-byte row piece lane l addresses. Matrix m = l / 8
// covers rows 8 (m & 1) .. +7 of the warp's 16 and 8-column chunk
// c0 + (m >> 1); its register is the accumulator pair stmatrix_c_reg.
// For even c0 the offset is stmatrix_c_offset(w, l, 0) ^ (16 c0): the kernel
// computes one offset per thread and XORs the chunk in.
FLASH4_HD constexpr uint32_t stmatrix_c_offset(int warp, int lane, int c0) {
  return sw128_byte_offset(static_cast<uint32_t>(16 * warp + 8 * ((lane / 8) & 1) + (lane & 7)),
                           static_cast<uint32_t>(8 * (c0 + lane / 16)));
}
// First accumulator register (of a pair, packed to 16 bits) that stmatrix
// register m stores for chunk c0 (counted over the whole accumulator: panel p
// has chunks 8p .. 8p + 7).
FLASH4_HD constexpr int stmatrix_c_reg(int c0, int m) { return 4 * (c0 + (m >> 1)) + 2 * (m & 1); }

// stmatrix.x4.trans that stores an accumulator (rows = 16 per warp, columns
// = 8-column chunks) transposed, into a 128B-swizzled buffer whose rows are
// the accumulator's columns (the 80-key backward: P, dS as [key rows][64
// queries]; dK^T, dV^T as [key rows][64 head-dim columns]). Matrix m = l / 8
// covers accumulator chunk c0 + (m >> 1) and rows 8 (m & 1) .. +7 of warp w's
// 16; lane l addresses buffer row 8 (c0 + (m >> 1)) + (l & 7), whose 16 bytes
// are those 8 accumulator rows. Its register is the pair stmatrix_t_reg (the
// same pairs as stmatrix_c_reg). The .x2 form uses matrices 0, 1 (lanes 0..15).
FLASH4_HD constexpr uint32_t stmatrix_t_offset(int warp, int lane, int c0) {
  return sw128_byte_offset(static_cast<uint32_t>(8 * (c0 + ((lane >> 3) >> 1)) + (lane & 7)),
                           static_cast<uint32_t>(16 * warp + 8 * ((lane >> 3) & 1)));
}
FLASH4_HD constexpr int stmatrix_t_reg(int c0, int m) { return stmatrix_c_reg(c0, m); }

// dq_accum piece layout of the backward (64 x 64 fp32 wgmma accumulator
// fragments): register i of thread t (0..127) is float (i / 4) 512 + 4 t + i % 4
// of its 4096-float piece, so a thread's registers 4g..4g+3 are 16 contiguous
// bytes (one red.global.add.v4.f32, one 16-byte shared store) and a warp's
// 512 bytes are contiguous too.
FLASH4_HD constexpr int dq_piece_offset(int i, int t) { return (i / 4) * 512 + 4 * t + i % 4; }
// Its inverse: the register and the thread of float `off` (0..4095) of a piece.
FLASH4_HD constexpr int dq_piece_reg(int off) { return 4 * (off >> 9) + (off & 3); }
FLASH4_HD constexpr int dq_piece_thread(int off) { return (off & 511) >> 2; }

// The backward postprocess's view of a dq_accum chunk (pieces of 4096 floats,
// two at head dims 64 / 128, four at 256): the CTA's element e (0..8191) is
// float `off` of piece `piece`. Head dim 256 runs two CTAs (part 0, 1) per
// 64-row chunk, each 32 rows, and its pieces hold dQ^T fragments (the 80-key
// kernel, bwd_consumer_d256x80.cuh: rows = 64 head-dim columns, columns =
// the 64 queries), so a part's 32 queries are fragment columns
// [32 part, + 32): registers 16 part .. + 15, floats [2048 part, 2048 part + 2048).
struct DqPieceFloat {
  int piece, off;
};
FLASH4_HD constexpr DqPieceFloat dq_post_source(int head_dim, int e, int part) {
  return head_dim == 256 ? DqPieceFloat{e >> 11, 2048 * part + (e & 2047)}
                         : DqPieceFloat{e >> 12, e & 4095};
}
// Where that float belongs in the CTA's rows x head_dim tile of dQ: piece w is
// query rows [64 w, 64 w + 64) at head dim 64, and head-dim columns
// [64 w, 64 w + 64) otherwise (the consumers' split of the dQ GEMM; at head
// dim 256 the fragment's rows).
// (wgmma_c_elem of the float's register and thread, written with shifts and
// masks: the kernel's index math is then what it was before this function.)
FLASH4_HD constexpr RowCol dq_post_dest(int head_dim, int piece, int off, int part, int rows) {
  const int i = dq_piece_reg(off), t = dq_piece_thread(off);
  const int warp = t >> 5, ln = t & 31;
  const int r = 16 * warp + (ln >> 2) + 8 * ((i >> 1) & 1);
  const int c = 8 * (i >> 2) + 2 * (ln & 3) + (i & 1);
  return head_dim == 256  ? RowCol{c - part * rows, 64 * piece + r}
         : head_dim == 64 ? RowCol{64 * piece + r, c}
                          : RowCol{r - part * rows, 64 * piece + c};
}

}  // namespace sm90
}  // namespace flash4
