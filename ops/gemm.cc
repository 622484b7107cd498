// Cache-blocked fp32 GEMM for the projections (GCC/Clang vector extensions, no intrinsics).
//
// C = A · Wt + bias where Wt is the packed (K, N) transpose of a Linear weight.  The work is split
// into (MC x NC) output tiles, one parallel task each; inside a tile, K is walked in KC slices so
// the weight panels (KC x NC) stay in L2 and each MR x NR register tile is accumulated over a
// whole slice before it is written back.  The micro-kernel uses GCC vector extensions with
// compile-time MR/NR, so the MR x NR accumulators live in vector registers.
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

namespace maskedmha {

namespace {

constexpr size_t kMC = 48;   // rows per task (multiple of every MR below)
constexpr size_t kNC = 256;  // columns per task
constexpr size_t kKC = 256;  // K slice

struct GemmArgs {
  const float* a;
  size_t lda;
  size_t m;
  const float* panels;  // PackedWeight::panels, panel width NR of the tile function
  size_t n, k;
  const float* bias;
  float* c;
  size_t ldc;
};

// GCC/Clang vector extensions (no intrinsics): the same source compiles to SSE, AVX2 or AVX-512
// instructions depending on the target of the function it is inlined into.  Plain loops over a
// fixed 16/32-float tile were not reliably vectorised by GCC 12 after full unrolling.
typedef float V4 __attribute__((vector_size(16)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V16 __attribute__((vector_size(64)));

// Full MR x (NV vectors of V) tile: accumulators stay in registers over one K slice.
template <int MR, int NV, typename V>
static inline __attribute__((always_inline)) void MicroTile(const float* a, size_t lda,
                                                            const float* b, size_t ldb, float* c,
                                                            size_t ldc, size_t kc) {
  constexpr int W = sizeof(V) / sizeof(float);
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[r][v], c + r * ldc + v * W, sizeof(V));
  for (size_t p = 0; p < kc; ++p) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + p * ldb + v * W, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * lda + p];
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(c + r * ldc + v * W, &acc[r][v], sizeof(V));
}

// Ragged edge tile (fewer than MR rows or NR columns): simple loops, still vectorised over j.
static inline __attribute__((always_inline)) void EdgeTile(const float* a, size_t lda,
                                                           const float* b, size_t ldb, float* c,
                                                           size_t ldc, size_t mr, size_t nr,
                                                           size_t kc) {
  for (size_t r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    for (size_t p = 0; p < kc; ++p) {
      const float av = a[r * lda + p];
      const float* bp = b + p * ldb;
      for (size_t j = 0; j < nr; ++j) cr[j] += av * bp[j];
    }
  }
}

// One (MC x NC) output tile.
template <int MR, int NV, typename V>
static inline __attribute__((always_inline)) void TileBody(const GemmArgs& g, size_t i0,
                                                           size_t i1, size_t j0, size_t j1) {
  for (size_t i = i0; i < i1; ++i) {
    float* crow = g.c + i * g.ldc;
    if (g.bias)
      std::memcpy(crow + j0, g.bias + j0, (j1 - j0) * sizeof(float));
    else
      std::memset(crow + j0, 0, (j1 - j0) * sizeof(float));
  }
  constexpr int NR = NV * static_cast<int>(sizeof(V) / sizeof(float));
  for (size_t k0 = 0; k0 < g.k; k0 += kKC) {
    const size_t kc = std::min(kKC, g.k - k0);
    for (size_t i = i0; i < i1; i += MR) {
      const size_t mr = std::min<size_t>(MR, i1 - i);
      const float* a = g.a + i * g.lda + k0;
      for (size_t j = j0; j < j1; j += NR) {
        const size_t nr = std::min<size_t>(NR, j1 - j);
        const float* b = g.panels + ((j / NR) * g.k + k0) * NR;  // j is a multiple of NR
        float* c = g.c + i * g.ldc + j;
        if (mr == static_cast<size_t>(MR) && nr == static_cast<size_t>(NR))
          MicroTile<MR, NV, V>(a, g.lda, b, NR, c, g.ldc, kc);
        else
          EdgeTile(a, g.lda, b, NR, c, g.ldc, mr, nr, kc);
      }
    }
  }
}

using TileFn = void (*)(const GemmArgs&, size_t, size_t, size_t, size_t);

// Portable build: 4 x 8 tile = 8 SSE registers of accumulators.
void TileGeneric(const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<4, 2, V4>(g, i0, i1, j0, j1);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MASKEDMHA_X86_DISPATCH 1
// AVX2+FMA: 6 x 16 tile = 12 ymm accumulators.
__attribute__((target("avx2,fma"))) void TileAvx2(const GemmArgs& g, size_t i0, size_t i1,
                                                  size_t j0, size_t j1) {
  TileBody<6, 2, V8>(g, i0, i1, j0, j1);
}
// AVX-512 (32 registers): 12 x 32 tile = 24 zmm accumulators (measured best of 6/8/12 x 32, 6 x 64).
__attribute__((target("avx512f,avx2,fma,prefer-vector-width=512"))) void TileAvx512(
    const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<12, 2, V16>(g, i0, i1, j0, j1);
}
#endif

struct Kernel {
  TileFn tile;
  size_t nr;  // panel width the tile function expects
};

Kernel ChooseKernel() {
#ifdef MASKEDMHA_X86_DISPATCH
  switch (SelectedIsa()) {
    case Isa::kAvx512: return {TileAvx512, 32};
    case Isa::kAvx2: return {TileAvx2, 16};
    default: break;
  }
#endif
  return {TileGeneric, 8};
}

const Kernel& GetKernel() {
  static const Kernel k = ChooseKernel();
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
          float* c, size_t ldc, const Parallel& par) {
  if (m == 0 || w.n == 0) return;
  const Kernel& kern = GetKernel();
  if (w.nr != kern.nr) throw std::logic_error("Gemm: weight packed for another kernel");
  const TileFn tile = kern.tile;
  GemmArgs g{a, lda, m, w.panels.data(), w.n, w.k, bias, c, ldc};
  const size_t mt = (m + kMC - 1) / kMC;
  const size_t nt = (w.n + kNC - 1) / kNC;
  par.For(mt * nt, [&](size_t t) {
    const size_t ib = t / nt, jb = t % nt;
    const size_t i0 = ib * kMC, i1 = std::min(m, i0 + kMC);
    const size_t j0 = jb * kNC, j1 = std::min(w.n, j0 + kNC);
    tile(g, i0, i1, j0, j1);
  });
}

}  // namespace maskedmha
