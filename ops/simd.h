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

}  // namespace simd
}  // namespace maskedmha
