// Cache-blocked fp32 GEMM written for GCC's auto-vectoriser.
//
// C = A · Wt + bias where Wt is the packed (K, N) transpose of a Linear weight.  The work is split
// into (MC x NC) output tiles, one parallel task each; inside a tile, K is walked in KC slices so
// the Wt panel (KC x NC) stays in L2 and each MR x NR register tile is accumulated over a whole
// slice before it is written back.  The micro-kernel is plain C++ with compile-time MR/NR: GCC
// turns the NR loop into vector FMAs and keeps the MR x NR accumulators in registers.
//
// Instruction sets: the default build is portable x86-64 (SSE2).  On x86 the same template is
// also compiled with target("avx2,fma") and target("avx512f") attributes and the widest one the
// CPU supports is chosen once at run time (__builtin_cpu_supports), so one binary runs
// everywhere and uses wide vectors where they exist.
#include "gemm.h"

#include <algorithm>
#include <cstring>

namespace maskedmha {

void PackWeight(const float* w, size_t row0, size_t n, size_t k, PackedWeight* out) {
  out->n = n;
  out->k = k;
  out->wt.resize(n * k);
  float* wt = out->wt.data();
  // Transpose in 32x32 blocks so both sides stay cache friendly.
  constexpr size_t T = 32;
  for (size_t r0 = 0; r0 < n; r0 += T) {
    const size_t r1 = std::min(n, r0 + T);
    for (size_t c0 = 0; c0 < k; c0 += T) {
      const size_t c1 = std::min(k, c0 + T);
      for (size_t r = r0; r < r1; ++r) {
        const float* src = w + (row0 + r) * k;
        for (size_t c = c0; c < c1; ++c) wt[c * n + r] = src[c];
      }
    }
  }
}

namespace {

constexpr size_t kMC = 48;   // rows per task (multiple of every MR below)
constexpr size_t kNC = 256;  // columns per task
constexpr size_t kKC = 256;  // K slice

struct GemmArgs {
  const float* a;
  size_t lda;
  size_t m;
  const float* wt;  // (k, n)
  size_t n, k;
  const float* bias;
  float* c;
  size_t ldc;
};

// Full MR x NR tile: accumulators in registers over one K slice.
template <int MR, int NR>
static inline __attribute__((always_inline)) void MicroTile(const float* a, size_t lda,
                                                            const float* b, size_t ldb, float* c,
                                                            size_t ldc, size_t kc) {
  float acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = c[r * ldc + j];
  for (size_t p = 0; p < kc; ++p) {
    const float* bp = b + p * ldb;
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * lda + p];
      for (int j = 0; j < NR; ++j) acc[r][j] += av * bp[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] = acc[r][j];
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
template <int MR, int NR>
static inline __attribute__((always_inline)) void TileBody(const GemmArgs& g, size_t i0,
                                                           size_t i1, size_t j0, size_t j1) {
  for (size_t i = i0; i < i1; ++i) {
    float* crow = g.c + i * g.ldc;
    if (g.bias)
      std::memcpy(crow + j0, g.bias + j0, (j1 - j0) * sizeof(float));
    else
      std::memset(crow + j0, 0, (j1 - j0) * sizeof(float));
  }
  for (size_t k0 = 0; k0 < g.k; k0 += kKC) {
    const size_t kc = std::min(kKC, g.k - k0);
    for (size_t i = i0; i < i1; i += MR) {
      const size_t mr = std::min<size_t>(MR, i1 - i);
      const float* a = g.a + i * g.lda + k0;
      for (size_t j = j0; j < j1; j += NR) {
        const size_t nr = std::min<size_t>(NR, j1 - j);
        const float* b = g.wt + k0 * g.n + j;
        float* c = g.c + i * g.ldc + j;
        if (mr == static_cast<size_t>(MR) && nr == static_cast<size_t>(NR))
          MicroTile<MR, NR>(a, g.lda, b, g.n, c, g.ldc, kc);
        else
          EdgeTile(a, g.lda, b, g.n, c, g.ldc, mr, nr, kc);
      }
    }
  }
}

using TileFn = void (*)(const GemmArgs&, size_t, size_t, size_t, size_t);

// Portable build: 4 x 8 tile = 8 SSE registers of accumulators.
void TileGeneric(const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<4, 8>(g, i0, i1, j0, j1);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MASKEDMHA_X86_DISPATCH 1
// AVX2+FMA: 6 x 16 tile = 12 ymm accumulators.
__attribute__((target("avx2,fma"))) void TileAvx2(const GemmArgs& g, size_t i0, size_t i1,
                                                  size_t j0, size_t j1) {
  TileBody<6, 16>(g, i0, i1, j0, j1);
}
// AVX-512: 6 x 32 tile = 12 zmm accumulators.
__attribute__((target("avx512f,avx2,fma,prefer-vector-width=512"))) void TileAvx512(
    const GemmArgs& g, size_t i0, size_t i1, size_t j0, size_t j1) {
  TileBody<6, 32>(g, i0, i1, j0, j1);
}
#endif

TileFn ChooseTile() {
#ifdef MASKEDMHA_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return TileAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return TileAvx2;
#endif
  return TileGeneric;
}

}  // namespace

void Gemm(const float* a, size_t lda, size_t m, const PackedWeight& w, const float* bias,
          float* c, size_t ldc, const Parallel& par) {
  if (m == 0 || w.n == 0) return;
  static const TileFn tile = ChooseTile();
  GemmArgs g{a, lda, m, w.wt.data(), w.n, w.k, bias, c, ldc};
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
