// Fragment ownership index functions of the Hopper kernels (sm90/fragments.hpp),
// checked on the host against the instructions' documented semantics.
#include <gtest/gtest.h>

#include <set>
#include <utility>
#include <vector>

#include "sm90/fragments.hpp"

namespace {
using flash4::sm90::RowCol;

// Inverse of sw128_byte_offset over panels `panel_bytes` apart: (row, col) of
// the 16-bit element at byte offset `off` (col counts across panels).
RowCol decode_sw128(uint32_t off, uint32_t panel_bytes) {
  const uint32_t panel = off / panel_bytes, rem = off % panel_bytes;
  const uint32_t row = rem / 128, chunk = ((rem % 128) / 16) ^ (row & 7u);
  return {static_cast<int>(row), static_cast<int>(panel * 64 + chunk * 8 + (rem % 16) / 2)};
}

TEST(Fragments, Sw128OffsetIsABijectionOnEachPanel) {
  std::set<uint32_t> seen;
  for (uint32_t r = 0; r < 64; ++r)
    for (uint32_t c = 0; c < 64; ++c) {
      const uint32_t off = flash4::sm90::sw128_byte_offset(r, c);
      EXPECT_LT(off, 64u * 128u);
      EXPECT_EQ(off % 2, 0u);
      seen.insert(off);
      const RowCol back = decode_sw128(off, 64 * 128);
      EXPECT_EQ(back.row, static_cast<int>(r));
      EXPECT_EQ(back.col, static_cast<int>(c));
    }
  EXPECT_EQ(seen.size(), 64u * 64u);
}

// ldmatrix.x4 semantics (PTX ISA): lane t addresses row t % 8 of matrix t / 8;
// lane l receives, in register m, elements (l / 4, 2 (l % 4) + e) of matrix m.
// Loading with ldmatrix_a_offset must give every lane exactly the elements of
// the wgmma A fragment, for head dims 64, 128 and 256 (1, 2, 4 panels).
TEST(Fragments, LdmatrixOffsetsDeliverTheWgmmaAFragment) {
  for (int panels : {1, 2, 4}) {
    const uint32_t panel_bytes = 128 * 128;  // 128-row tile (two consumers)
    for (int warp = 0; warp < 4; ++warp)
      for (int kk = 0; kk < panels * 4; ++kk)
        for (int lane = 0; lane < 32; ++lane)
          for (int m = 0; m < 4; ++m)
            for (int e = 0; e < 2; ++e) {
              const int src_lane = 8 * m + lane / 4;  // the lane that addresses this row
              const uint32_t off =
                  flash4::sm90::ldmatrix_a_offset(warp, src_lane, kk, panel_bytes) +
                  4u * static_cast<uint32_t>(lane % 4) + 2u * static_cast<uint32_t>(e);
              const RowCol got = decode_sw128(off, panel_bytes);
              const RowCol want = flash4::sm90::wgmma_a_elem(warp, lane, m, e);
              ASSERT_EQ(got.row, want.row) << "warp " << warp << " kk " << kk << " lane " << lane;
              ASSERT_EQ(got.col, kk * 16 + want.col)
                  << "warp " << warp << " kk " << kk << " lane " << lane;
            }
  }
}

// stmatrix.x4 semantics (PTX ISA): lane t addresses row t % 8 of matrix t / 8;
// lane l's register m holds elements (l / 4, 2 (l % 4) + e) of matrix m.
// Storing accumulator pairs stmatrix_c_reg at stmatrix_c_offset must put every
// accumulator element of the warpgroup where sw128_byte_offset says its
// (row, column) lives, each exactly once; and the XOR shortcut must agree.
TEST(Fragments, StmatrixOffsetsStoreTheAccumulatorSwizzled) {
  using namespace flash4::sm90;
  for (int panels : {1, 2, 4}) {
    const uint32_t panel_bytes = 128 * 128;
    std::set<uint32_t> seen;
    for (int warp = 0; warp < 4; ++warp)
      for (int p = 0; p < panels; ++p)
        for (int c0 = 0; c0 < 8; c0 += 2)
          for (int lane = 0; lane < 32; ++lane) {
            ASSERT_EQ(stmatrix_c_offset(warp, lane, c0),
                      stmatrix_c_offset(warp, lane, 0) ^ (16u * static_cast<uint32_t>(c0)));
            for (int m = 0; m < 4; ++m)
              for (int e = 0; e < 2; ++e) {
                const int src_lane = 8 * m + lane / 4;  // the lane that addresses this row
                const uint32_t off = static_cast<uint32_t>(p) * panel_bytes +
                                     stmatrix_c_offset(warp, src_lane, c0) +
                                     4u * static_cast<uint32_t>(lane % 4) +
                                     2u * static_cast<uint32_t>(e);
                const RowCol got = decode_sw128(off, panel_bytes);
                const int reg = stmatrix_c_reg(8 * p + c0, m) + e;
                ASSERT_LT(reg, panels * 32);
                const RowCol want = wgmma_c_elem(warp, lane, reg);
                ASSERT_EQ(got.row, want.row) << "warp " << warp << " c0 " << c0 << " lane " << lane;
                ASSERT_EQ(got.col, want.col) << "warp " << warp << " c0 " << c0 << " lane " << lane;
                EXPECT_TRUE(seen.insert(off).second);
              }
          }
    EXPECT_EQ(seen.size(), static_cast<size_t>(64 * 64 * panels));
  }
}

// stmatrix .trans (PTX ISA): element (row i, column j) of matrix m, held by
// lane 4 i + j / 2, goes to position i of the 16-byte row that lane 8 m + j
// addresses. Storing the pairs stmatrix_t_reg at stmatrix_t_offset must put
// accumulator element (row, col) at buffer row col, column row, each once:
// 40 columns (the 80-key backward's P / dS: two .x4 and one .x2) and 80
// (its dK^T / dV^T: five .x4).
TEST(Fragments, StmatrixTransStoresTheAccumulatorTransposed) {
  using namespace flash4::sm90;
  for (int cols : {40, 80}) {
    const uint32_t buf_bytes = static_cast<uint32_t>(cols) * 128;
    std::set<uint32_t> seen;
    for (int warp = 0; warp < 4; ++warp)
      for (int c0 = 0; c0 < cols / 8; c0 += 2) {
        const int mats = c0 + 1 < cols / 8 ? 4 : 2;  // .x4, or .x2 for a last odd chunk
        for (int lane = 0; lane < 32; ++lane)
          for (int m = 0; m < mats; ++m)
            for (int e = 0; e < 2; ++e) {
              const int j = 2 * (lane % 4) + e;  // column of the 8x8 matrix
              const uint32_t off = stmatrix_t_offset(warp, 8 * m + j, c0) +
                                   2u * static_cast<uint32_t>(lane / 4);
              ASSERT_LT(off, buf_bytes);
              const RowCol got = decode_sw128(off, buf_bytes);
              const RowCol want = wgmma_c_elem(warp, lane, stmatrix_t_reg(c0, m) + e);
              ASSERT_EQ(got.row, want.col) << "cols " << cols << " warp " << warp << " lane " << lane;
              ASSERT_EQ(got.col, want.row) << "cols " << cols << " warp " << warp << " lane " << lane;
              EXPECT_TRUE(seen.insert(off).second);
            }
      }
    EXPECT_EQ(seen.size(), static_cast<size_t>(64 * cols));
  }
}

// P = S packed to 16 bits feeds the next wgmma as its A operand from the same
// registers: accumulator register acc_reg_for_a(kk, j, e) must hold the element
// that A register j, element e of k step kk stands for.
TEST(Fragments, AccumulatorPacksIntoTheAOperand) {
  for (int n : {64, 80, 128, 176, 256})
    for (int warp = 0; warp < 4; ++warp)
      for (int lane = 0; lane < 32; ++lane) {
        std::set<int> regs;
        for (int kk = 0; kk < n / 16; ++kk)
          for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 2; ++e) {
              const int i = flash4::sm90::acc_reg_for_a(kk, j, e);
              ASSERT_LT(i, n / 2);
              regs.insert(i);
              const RowCol c = flash4::sm90::wgmma_c_elem(warp, lane, i);
              const RowCol a = flash4::sm90::wgmma_a_elem(warp, lane, j, e);
              ASSERT_EQ(c.row, a.row);
              ASSERT_EQ(c.col, kk * 16 + a.col);
            }
        EXPECT_EQ(static_cast<int>(regs.size()), n / 2);  // every accumulator used once
      }
}

// Each accumulator element is owned by exactly one (warp, lane, register).
TEST(Fragments, DqPieceLayoutIsABijectionWithContiguousGroups) {
  using flash4::sm90::dq_piece_offset;
  std::set<int> seen;
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < 32; ++i) {
      const int off = dq_piece_offset(i, t);
      ASSERT_GE(off, 0);
      ASSERT_LT(off, 4096);
      EXPECT_TRUE(seen.insert(off).second);
      EXPECT_EQ(flash4::sm90::dq_piece_reg(off), i);
      EXPECT_EQ(flash4::sm90::dq_piece_thread(off), t);
      // registers 4g..4g+3: one 16-byte vector; lanes of a warp: consecutive vectors
      if (i % 4 == 0) EXPECT_EQ(off % 4, 0);
      if (i % 4 > 0) EXPECT_EQ(off, dq_piece_offset(i - 1, t) + 1);
      if (t % 32 > 0) EXPECT_EQ(off, dq_piece_offset(i, t - 1) + 4);
    }
  EXPECT_EQ(static_cast<int>(seen.size()), 4096);
}

// Every dQ element the consumers add (piece w, register i, thread t) is read
// by exactly one postprocess CTA part and lands where the GEMM computed it.
TEST(Fragments, DqPostprocessInvertsTheConsumersLayout) {
  using namespace flash4::sm90;
  // d 256: the 80-key kernel's transposed pieces (dQ^T fragments: row =
  // head-dim column, col = query).
  for (const int d : {64, 128, 256}) {
    const int rows = d == 256 ? 32 : 8192 / d;  // rows per postprocess CTA
    const int parts = d == 256 ? 2 : 1;         // CTAs per chunk
    const int pieces = d == 256 ? 4 : 2;
    // Writer side: float index in the chunk -> (row, col) of the chunk's dQ.
    std::vector<RowCol> written(static_cast<size_t>(pieces) * 4096, RowCol{-1, -1});
    for (int w = 0; w < pieces; ++w)
      for (int t = 0; t < 128; ++t)
        for (int i = 0; i < 32; ++i) {
          const RowCol c = wgmma_c_elem(t / 32, t % 32, i);
          written[static_cast<size_t>(w) * 4096 + dq_piece_offset(i, t)] =
              d == 256  ? RowCol{c.col, 64 * w + c.row}
              : d == 64 ? RowCol{64 * w + c.row, c.col}
                        : RowCol{c.row, 64 * w + c.col};
        }
    std::set<std::pair<int, int>> seen;
    for (int part = 0; part < parts; ++part)
      for (int e = 0; e < 8192; ++e) {
        const DqPieceFloat f = dq_post_source(d, e, part);
        ASSERT_GE(f.piece, 0);
        ASSERT_LT(f.piece, pieces);
        ASSERT_GE(f.off, 0);
        ASSERT_LT(f.off, 4096);
        const RowCol dst = dq_post_dest(d, f.piece, f.off, part, rows);
        ASSERT_GE(dst.row, 0);
        ASSERT_LT(dst.row, rows);
        ASSERT_GE(dst.col, 0);
        ASSERT_LT(dst.col, d);
        const RowCol src = written[static_cast<size_t>(f.piece) * 4096 + f.off];
        EXPECT_EQ(src.row, dst.row + part * rows) << "d " << d << " e " << e;
        EXPECT_EQ(src.col, dst.col) << "d " << d << " e " << e;
        EXPECT_TRUE(seen.insert({src.row, src.col}).second);
      }
    EXPECT_EQ(static_cast<int>(seen.size()), rows * parts * d);
  }
}

TEST(Fragments, AccumulatorOwnershipCoversTheTileOnce) {
  const int n = 128;
  std::set<std::pair<int, int>> seen;
  for (int warp = 0; warp < 4; ++warp)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < n / 2; ++i) {
        const RowCol c = flash4::sm90::wgmma_c_elem(warp, lane, i);
        ASSERT_GE(c.row, 0);
        ASSERT_LT(c.row, 64);
        ASSERT_LT(c.col, n);
        EXPECT_TRUE(seen.insert({c.row, c.col}).second);
      }
  EXPECT_EQ(static_cast<int>(seen.size()), 64 * n);
}
}  // namespace
