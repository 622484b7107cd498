// Cache-blocked fp32 GEMM for the projections (GCC/Clang vector extensions, no intrinsics).
//
// C = A · Wt + bias where Wt is the packed (K, N) transpose of a Linear weight, cut into
// contiguous (K x NR) column panels (PackWeight).  Work is split into (MC x NC) output blocks,
// one parallel task each.  Inside a task, K is walked in KC slices; for each slice the task's
// A rows are packed into MR-row micro-panels (kc x MR, row index fastest) so the micro-kernel
// reads A as one contiguous stream of broadcasts and B as one contiguous stream of vectors.
// The MR x NR accumulators stay in vector registers over a whole slice; the first slice starts
// from the bias, later ones from C.  Ragged edges (fewer than MR rows or NR columns) run the same
// micro-kernel on zero-padded A / panels into a small local tile that is then copied out.
//
// Instruction sets: the default build is portable x86-64 (SSE2).  On x86 the same template is
// also compiled with target("avx2,fma") and target("avx512f") attributes and the widest one the
// CPU supports is chosen once at run time (cpu.h, __builtin_cpu_supports), so one binary runs
// everywhere and uses wide vectors where they exist.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "cpu.h"
#include "simd.h"
#include "workspace.h"

namespace maskedmha {

namespace {

// Measured on a 2 MiB-L2 AVX-512 core, (1024 x 768) . (768 x 2304): KC 384 / MC 96 / NC 256
// with a 12 x 32 tile and B prefetched 16 k-steps ahead ~153 GFLOP/s (peak FMA ~175).
constexpr size_t kKCMax = 384;  // K slice (K is cut into equal slices of at most this)
constexpr size_t kMCMax = 96;   // rows per task (rounded to a multiple of MR)
constexpr size_t kNC = 256;     // columns per task (multiple of every NR)
constexpr size_t kNCMin = 64;   // fewest columns per task when splitting for parallelism
constexpr size_t kPrefetchB = 16;  // k-steps ahead the B panel is prefetched
constexpr size_t kMaxMR = 12;      // the tallest micro-tile (AVX-512)

struct GemmArgs {
  const float* a;
  size_t lda;
  size_t m;
  const float* panels;  // PackedWeight::panels, panel width NR of the tile function
  size_t n, k;
  const float* bias;    // padded to whole panels (never null)
  float* c;
  size_t ldc;
  const float* apack;   // A in MR-row micro-panels (see TileBody)
};

using simd::V16;
using simd::V4;
using simd::V8;

// MR x (NV vectors) register tile over one K slice.  ap: packed A (kc x AS, AS >= MR: the
// micro-panel row stride; a ragged last panel runs a shorter MR over its first rows), b: panel
// slice (kc x NR).  init: bias row (first slice) or null (accumulate onto C).
template <int MR, int NV, typename V, int AS = MR>
static inline __attribute__((always_inline)) void MicroKernel(const float* __restrict ap,
                                                              const float* __restrict b,
                                                              size_t kc, const float* init,
                                                              float* c, size_t ldc) {
  constexpr int W = sizeof(V) / sizeof(float);
  constexpr int NR = NV * W;
  V acc[MR][NV];
  if (init) {
    for (int v = 0; v < NV; ++v) {
      const V bv = simd::Load<V>(init + v * W);
      for (int r = 0; r < MR; ++r) acc[r][v] = bv;
    }
  } else {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = simd::Load<V>(c + r * ldc + v * W);
  }
  for (size_t p = 0; p < kc; ++p) {
    // The panel streams from L2 (the A micro-panel stays in L1); the hardware prefetcher alone
    // left the loop ~10% short of peak.  Prefetching past the slice end is harmless.
    // (AVX-512 only: the narrower variants measured the same or slower with it.)
    if constexpr (NR >= 32)
      for (int l = 0; l < NR; l += 16) __builtin_prefetch(b + (p + kPrefetchB) * NR + l);
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = simd::Load<V>(b + p * NR + v * W);
    for (int r = 0; r < MR; ++r) {
      const float av = ap[p * AS + r];
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) simd::Store<V>(c + r * ldc + v * W, acc[r][v]);
}

// 12 rows x 16 columns of A -> 16 consecutive groups of 12 (column-major), by a 16 x 16
// register transpose (rows 12..15 zero).  About 5x fewer instructions than gathering the 192
// floats one by one, which made packing A ~5 % of the projection time at L = 128.
static inline __attribute__((always_inline)) void Transpose12x16(const float* const* rows,
                                                                 size_t p, float* dst) {
  V16 v[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) v[r] = r < 12 ? simd::Load<V16>(rows[r] + p) : V16{};
  simd::Transpose16x16(v);
  // Overlapping stores: lanes 12..15 of group c land on group c + 1's first lanes, which its own
  // store then overwrites; the last group is stored exactly (no write past the block).
#pragma GCC unroll 16
  for (int c = 0; c < 15; ++c) simd::Store<V16>(dst + c * 12, v[c]);
  std::memcpy(dst + 15 * 12, &v[15], 12 * sizeof(float));
}

// Packs rows [0, rows) (rows <= MR; row r starts at a[r]) x cols [0, k) of A into one
// micro-panel (k x MR, zero rows past `rows`).  Blocks of 16 k are gathered row by row and
// written out contiguously.  Rows are given by pointer so that a gathered subset of a matrix
// (the kept keys of a padded batch) is packed straight from its source rows.
template <int MR>
static inline __attribute__((always_inline)) void PackA(const float* const* a, size_t rows,
                                                        size_t k, float* dst) {
  if (rows == static_cast<size_t>(MR)) {
    size_t p = 0;
    if constexpr (MR == 12)  // the AVX-512 tile
      for (; p + 16 <= k; p += 16) Transpose12x16(a, p, dst + p * MR);
    for (; p + 16 <= k; p += 16) {
      float blk[16][MR];
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < 16; ++q) blk[q][r] = a[r][p + q];
      std::memcpy(dst + p * MR, blk, sizeof(blk));
    }
    for (; p < k; ++p)
      for (int r = 0; r < MR; ++r) dst[p * MR + r] = a[r][p];
  } else {
    for (size_t p = 0; p < k; ++p)
      for (int r = 0; r < MR; ++r)
        dst[p * MR + r] = r < static_cast<int>(rows) ? a[r][p] : 0.0f;
  }
}

// One (rows i0..i1) x (cols j0..j1) output block; i0 is a multiple of MR.  g.apack holds A
// packed as micro-panels of MR rows over the whole K (panel q at q * MR * K, element (p, r) at
// p * MR + r).
template <int MR, int NV, typename V>
static inline __attribute__((always_inline)) void TileBody(const GemmArgs& g, size_t i0,
                                                           size_t i1, size_t j0, size_t j1) {
  constexpr int NR = NV * static_cast<int>(sizeof(V) / sizeof(float));
  const size_t rows = i1 - i0;
  alignas(64) float tmp[MR * NR];
  const size_t slices = (g.k + kKCMax - 1) / kKCMax;
  const size_t kcs = (g.k + slices - 1) / slices;
  for (size_t k0 = 0; k0 < g.k; k0 += kcs) {
    const size_t kc = std::min(kcs, g.k - k0);
    const bool first = k0 == 0;
    // One A micro-panel (kc x MR, L1) against every panel of the block (kc x NC, L2).
    for (size_t i = 0; i < rows; i += MR) {
      const size_t mr = std::min<size_t>(MR, rows - i);
      const float* ap = g.apack + (i0 + i) * g.k + k0 * MR;
      for (size_t j = j0; j < j1; j += NR) {
        const size_t nr = std::min<size_t>(NR, j1 - j);
        const float* b = g.panels + ((j / NR) * g.k + k0) * NR;  // j is a multiple of NR
        const float* init = first ? g.bias + j : nullptr;
        float* c = g.c + (i0 + i) * g.ldc + j;
        if (mr == static_cast<size_t>(MR) && nr == static_cast<size_t>(NR)) {
          MicroKernel<MR, NV, V>(ap, b, kc, init, c, g.ldc);
        } else {
          if (!first)
            for (size_t r = 0; r < mr; ++r) std::memcpy(tmp + r * NR, c + r * g.ldc, nr * sizeof(float));
          // Ragged rows: the shortest tile of MR/3, 2MR/3 or MR rows that covers them (M = 32
          // with MR = 12 would otherwise compute 36 rows).
          constexpr int R1 = MR / 3 > 0 ? MR / 3 : 1, R2 = 2 * MR / 3 > R1 ? 2 * MR / 3 : MR;
          if (mr <= static_cast<size_t>(R1))
            MicroKernel<R1, NV, V, MR>(ap, b, kc, init, tmp, NR);
          else if (mr <= static_cast<size_t>(R2))
            MicroKernel<R2, NV, V, MR>(ap, b, kc, init, tmp, NR);
          else
            MicroKernel<MR, NV, V>(ap, b, kc, init, tmp, NR);
          for (size_t r = 0; r < mr; ++r) std::memcpy(c + r * g.ldc, tmp + r * NR, nr * sizeof(float));
        }
      }
    }
  }
}

using TileFn = void (*)(const GemmArgs&, size_t, size_t, size_t, size_t);
using PackFn = void (*)(const float* const*, size_t, size_t, float*);

// Portable build: 4 x 8 tile = 8 SSE registers of accumulators.
void TileGeneric(const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<4, 2, V4>(g, i0, i1, j0, j1);
}
void PackGeneric(const float* const* a, size_t rows, size_t k, float* dst) {
  PackA<4>(a, rows, k, dst);
}

#ifdef MASKEDMHA_X86
// AVX2+FMA: 6 x 16 tile = 12 ymm accumulators.
MASKEDMHA_TARGET_AVX2 void TileAvx2(const GemmArgs& g, size_t i0, size_t i1,
                                                  size_t j0, size_t j1) {
  TileBody<6, 2, V8>(g, i0, i1, j0, j1);
}
MASKEDMHA_TARGET_AVX2 void PackAvx2(const float* const* a, size_t rows, size_t k,
                                                  float* dst) {
  PackA<6>(a, rows, k, dst);
}
MASKEDMHA_TARGET_AVX512 void TileAvx512(
    const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<12, 2, V16>(g, i0, i1, j0, j1);
}
MASKEDMHA_TARGET_AVX512 void PackAvx512(
    const float* const* a, size_t rows, size_t k, float* dst) {
  PackA<12>(a, rows, k, dst);
}
#endif

struct Kernel {
  TileFn tile;
  PackFn pack;
  size_t nr;  // panel width the tile function expects
  size_t mr;  // rows per micro-tile
};

const Kernel& GetKernel() {
  static const Kernel k = MASKEDMHA_PICK_ISA((Kernel{TileGeneric, PackGeneric, 8, 4}),
                                             (Kernel{TileAvx2, PackAvx2, 16, 6}),
                                             (Kernel{TileAvx512, PackAvx512, 32, 12}));
  return k;
}

}  // namespace

void PackWeight(const float* w, size_t row0, size_t n, size_t k, PackedWeight* out) {
  const size_t nr = GetKernel().nr;
  const size_t np = (n + nr - 1) / nr;
  out->n = n;
  out->k = k;
  out->nr = nr;
  out->panels.assign(np * k * nr, 0.0f);
  float* dst = out->panels.data();
  // Walk W row by row (contiguous reads); each row becomes one column of its panel.
  for (size_t col = 0; col < n; ++col) {
    const float* src = w + (row0 + col) * k;
    float* pcol = dst + (col / nr) * k * nr + (col % nr);
    for (size_t p = 0; p < k; ++p) pcol[p * nr] = src[p];
  }
}

void Gemm(const float* a, size_t lda, size_t m, const PackedWeight& w, const float* bias,
          float* c, size_t ldc, const Parallel& par, const int64_t* a_rows) {
  if (m == 0 || w.n == 0) return;
  const Kernel& kern = GetKernel();
  if (w.nr != kern.nr) throw std::logic_error("Gemm: weight packed for another kernel");
  const size_t nr = kern.nr, mr = kern.mr, k = w.k;
  const size_t np = (w.n + nr - 1) / nr;
  const size_t mp = (m + mr - 1) / mr;  // micro-panels of A
  // The calling thread's workspace (workspace.h); the packing tasks below write into it through
  // `apack`, whichever thread runs them.
  Workspace& ws = ThisThreadWorkspace();
  AlignedVector<float>& apack_buf = ws.gemm_apack;
  AlignedVector<float>& bias_buf = ws.gemm_bias;
  if (apack_buf.size() < mp * mr * k) apack_buf.resize(mp * mr * k);
  // Bias padded to whole panels (zeros when absent), so the first K slice starts from it.
  bias_buf.assign(np * nr, 0.0f);
  if (bias) std::memcpy(bias_buf.data(), bias, w.n * sizeof(float));
  float* apack = apack_buf.data();
  const PackFn pack = kern.pack;
  // One task per few micro-panels.  (With a section per phase a small A was better packed on
  // the calling thread, as waking the other threads cost more than the copy; inside the
  // kernel's team (team.h) a phase costs well under a microsecond.)
  const size_t pack_tasks = std::min<size_t>(mp, 16);
  par.For(pack_tasks, [&](size_t t) {
    for (size_t q = t * mp / pack_tasks; q < (t + 1) * mp / pack_tasks; ++q) {
      const float* rows[kMaxMR];
      const size_t n = std::min(mr, m - q * mr);
      for (size_t r = 0; r < n; ++r) {
        const size_t i = q * mr + r;
        rows[r] = a + (a_rows ? static_cast<size_t>(a_rows[i]) : i) * lda;
      }
      pack(rows, n, k, apack + q * mr * k);
    }
  });
  const TileFn tile = kern.tile;
  // Task grid: NC-column blocks x MC-row blocks; MC shrinks (in whole micro-tiles) when M is
  // small so that there are enough tasks to keep every thread busy.
  // Columns are split first (down to kNCMin): each extra row block streams the block's weight
  // panels again, which dominates when M is small (M = 32: weights >> A).
  size_t mc = kMCMax / mr * mr;
  // Tasks wanted at least: with 8, a 256 x 768 . 768 x 768 product had 9 tasks, so one of two
  // threads idled for a ninth of it; 16 measured 1-2 % faster at 8x32 and 8x128 (E 768), level
  // elsewhere.
  const size_t want = 16;
  size_t nc = kNC;
  const size_t mt0 = (m + mc - 1) / mc;
  while (nc > kNCMin && mt0 * ((w.n + nc - 1) / nc) < want) nc /= 2;
  const size_t nt = (w.n + nc - 1) / nc;
  while (mc > mr && nt * ((m + mc - 1) / mc) < want) mc = std::max(mr, (mc / 2 + mr - 1) / mr * mr);
  const size_t mt = (m + mc - 1) / mc;
  GemmArgs g{a, lda, m, w.panels.data(), w.n, k, bias_buf.data(), c, ldc, apack};
  par.For(mt * nt, [&](size_t t) {
    // Consecutive tasks share a column block (its panels stay in L2).
    const size_t jb = t / mt, ib = t % mt;
    const size_t i0 = ib * mc, i1 = std::min(m, i0 + mc);
    const size_t j0 = jb * nc, j1 = std::min(w.n, j0 + nc);
    tile(g, i0, i1, j0, j1);
  });
}

}  // namespace maskedmha
