// Portable SIMD vocabulary shared by the GEMM and the attention loops: GCC/Clang vector
// extensions (no intrinsics), compiled as SSE, AVX2 or AVX-512 code depending on the target of the
// dispatch function they are inlined into (see cpu.h). GCC 12 did not reliably vectorise the
// equivalent fixed-size scalar loops after unrolling them.
#pragma once

#include <cstdint>
#include <cstring>

namespace maskedmha {
namespace simd {

typedef float V4 __attribute__((vector_size(16)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V16 __attribute__((vector_size(64)));

// Unaligned load/store through memcpy: no aliasing or alignment undefined behaviour, and the
// compiler emits a single vector move.
template <typename V>
static inline __attribute__((always_inline)) V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
static inline __attribute__((always_inline)) void Store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// True if the first n floats are all finite: x - x is 0 for finite x and NaN for NaN and +-inf,
// summed lane-wise (a scalar float sum may not be reordered, so it would not vectorise).
template <typename V>
static inline __attribute__((always_inline)) bool AllFinite(const float* x, int64_t n) {
  constexpr int W = sizeof(V) / sizeof(float);
  V acc = V{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = Load<V>(x + i);
    acc += v - v;
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += x[i] - x[i];
  for (int l = 0; l < W; ++l) sum += acc[l];
  return sum == 0.0f;
}

// Transposes the 16 x 16 matrix whose rows are v[0..15] in registers: 4 butterfly stages,
// stage j swapping bit j of the row (vector) index with bit j of the lane index; each output
// vector is one two-source permute (vpermt2ps on AVX-512, where this is meant to run).
static inline __attribute__((always_inline)) void Transpose16x16(V16* v) {
  typedef int32_t I16 __attribute__((vector_size(64)));
  static constexpr I16 kLo[4] = {
      {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
      {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}};
  static constexpr I16 kHi[4] = {
      {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
      {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}};
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) {
      if (r & (1 << j)) continue;
      const V16 x = v[r], y = v[r | (1 << j)];
      v[r] = __builtin_shuffle(x, y, kLo[j]);
      v[r | (1 << j)] = __builtin_shuffle(x, y, kHi[j]);
    }
  }
}

// The int vector of the same width (exponent bits of 2^n in ExpV).
typedef int32_t I4 __attribute__((vector_size(16)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef int32_t I16 __attribute__((vector_size(64)));
template <typename V> struct IntVec;
template <> struct IntVec<V4> { typedef I4 type; };
template <> struct IntVec<V8> { typedef I8 type; };
template <> struct IntVec<V16> { typedef I16 type; };

// Every lane x.
template <typename V>
static inline __attribute__((always_inline)) V Splat(float x) {
  return V{} + x;
}

// Horizontal max / sum of a vector by halving (a tree: short dependency chains).
static inline __attribute__((always_inline)) float HMax(V4 v) {
  const float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
  return a > b ? a : b;
}
static inline __attribute__((always_inline)) float HSum(V4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
template <typename V, typename H>
static inline __attribute__((always_inline)) void Halves(V v, H* lo, H* hi) {
  std::memcpy(lo, &v, sizeof(H));
  std::memcpy(hi, reinterpret_cast<const char*>(&v) + sizeof(H), sizeof(H));
}
// V8 -> V4, V16 -> V8: the vector of half the width.
template <typename V> struct HalfOf;
template <> struct HalfOf<V8> { typedef V4 type; };
template <> struct HalfOf<V16> { typedef V8 type; };
template <typename V, typename H = typename HalfOf<V>::type>
static inline __attribute__((always_inline)) float HMax(V v) {
  H a, b;
  Halves(v, &a, &b);
  return HMax((a > b) ? a : b);
}
template <typename V, typename H = typename HalfOf<V>::type>
static inline __attribute__((always_inline)) float HSum(V v) {
  H a, b;
  Halves(v, &a, &b);
  return HSum(a + b);
}

}  // namespace simd
}  // namespace maskedmha
