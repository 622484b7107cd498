// The online (running max) softmax of the attention core over one key block of scores, in two
// variants that must agree: OnlineSoftmax<V> (vector extensions, every ISA) and
// OnlineSoftmaxAvx512 (intrinsics, x86 only; used for AVX-512 without weights).
// tests/cpp/softmax_variants.cc checks them against each other (tests/test_softmax_variants.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention_blocks.h"
#include "cpu.h"
#include "simd.h"

#ifdef MASKEDMHA_X86
#include <immintrin.h>
#endif

namespace maskedmha {
namespace softmax {

using simd::HMax;
using simd::HSum;
using simd::IntVec;
using simd::Load;
using simd::Splat;
using simd::Store;

// exp(r) ~ 1 + r + r^2 (C2 + r (C3 + r (C4 + r C5))) on |r| <= ln2/2: a degree-5 minimax fit
// (relative error 1.6e-7 in float arithmetic, measured on 2e5 points; the degree-7 Taylor-like
// Cephes polynomial is no more exact in float and costs two more FMAs per 16 scores, ~10 % of
// the softmax).
constexpr float kExpC2 = 0.499992311f, kExpC3 = 0.166671142f, kExpC4 = 0.0418901145f,
                kExpC5 = 0.00831252523f;

// Range reduction shared by ExpV and OnlineSoftmaxAvx512: n = round(x * log2(e)), then
// r = x - n * ln2 in two steps (ln2 = kLn2Hi + kLn2Lo, kLn2Hi exact in few bits), inputs below
// kExpMin clamped (exp(-87) ~ 1e-38, the smallest normal float).
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f,
                kExpMin = -87.0f;

// exp(x) for x <= 0 (the argument is always score - running max), on a whole vector:
// Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, the polynomial above, 2^n built from
// the exponent bits.  Relative error ~2e-7.  x < -87 gives ~1e-38 (callers map -inf scores to
// exactly 0 themselves); NaN stays NaN.
template <typename V>
static inline __attribute__((always_inline)) V ExpV(V x) {
  typedef typename IntVec<V>::type VI;
  const V lo = Splat<V>(kExpMin);
  x = (x < lo) ? lo : x;  // NaN compares false and stays
  // n = round(x / ln2) with the 1.5 * 2^23 trick (exact in round-to-nearest, no -ffast-math).
  const V magic = Splat<V>(12582912.0f);
  const V n = (x * kLog2e + magic) - magic;
  const V r = (x - n * kLn2Hi) - n * kLn2Lo;
  V p = Splat<V>(kExpC5);
  p = p * r + kExpC4;
  p = p * r + kExpC3;
  p = p * r + kExpC2;
  p = p * r * r + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

// Maximum of the first n (whole vectors) scores of a block (padding columns hold -inf; NaN is ignored here and propagates
// through the exponentials instead).
template <typename V>
static inline __attribute__((always_inline)) float BlockMax(const float* s, int64_t n) {
  constexpr int W = sizeof(V) / sizeof(float);
  V lane = Splat<V>(kNegInf);
  for (int64_t c = 0; c < n; c += W) {
    const V v = Load<V>(s + c);
    lane = (v > lane) ? v : lane;
  }
  return HMax(lane);  // the lanes are never NaN
}

// p = exp(s - m) * mul (exactly 0 where s = -inf), stored over s; returns the lane-wise sums of
// p (reduced to one number only once per row, at the end).
template <typename V>
static inline __attribute__((always_inline)) V BlockExp(float* s, int64_t n, float m, float mul) {
  constexpr int W = sizeof(V) / sizeof(float);
  const V ninf = Splat<V>(kNegInf), zero = V{};
  V lane = V{};
  for (int64_t c = 0; c < n; c += W) {
    const V v = Load<V>(s + c);
    const V e = ExpV<V>(v - m) * mul;
    const V p = (v == ninf) ? zero : e;
    Store<V>(s + c, p);
    lane += p;
  }
  return lane;
}

// True if some of the first n floats is NaN (a row whose maximum, which ignores NaN, is -inf).
static inline bool HasNaN(const float* x, int64_t n) {
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) nan |= x[i] != x[i];
  return nan;
}

// The online softmax's per-row step after a block whose largest score is bm (NaN ignored): the
// running max *m becomes max(*m, bm), the row's accumulator (D floats) is rescaled by
// alpha = exp(m_old - m_new); returns {m_new, alpha} (the running sum must be scaled by alpha).
struct RowStep {
  float m, alpha;
};
static inline RowStep AdvanceRowMax(float bm, float* m, float* acc, int64_t D) {
  const float mnew = bm > *m ? bm : *m;
  const float alpha = (mnew == *m) ? 1.0f : std::exp(*m - mnew);
  *m = mnew;
  if (alpha != 1.0f)
    for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
  return {mnew, alpha};
}

// One key block of the online softmax for rows [0, nq): s (rows kKB apart, the first nw
// columns) becomes p = exp(s - m_new), the running max m and the lane-wise running sums lv (W
// per row) are updated, and the row's accumulator (D floats, rows D apart) is rescaled by
// exp(m_old - m_new) when the max grew.  Returns false when every score of the block is -inf
// (the masks hide the whole block): then p is all 0 and P·V can be skipped.
template <typename V>
static inline __attribute__((always_inline)) bool OnlineSoftmax(float* s, int64_t nq, int64_t nw,
                                                                int64_t D, float* m, float* lv,
                                                                float* acc) {
  constexpr int W = sizeof(V) / sizeof(float);
  float bmax[kQB];
  bool live = false;
  for (int64_t r = 0; r < nq; ++r) {
    bmax[r] = BlockMax<V>(s + r * kKB, nw);
    live = live || bmax[r] > kNegInf || HasNaN(s + r * kKB, nw);
  }
  if (!live) return false;  // nothing to exponentiate: every p is 0, m and l stay
  for (int64_t r = 0; r < nq; ++r) {
    const RowStep st = AdvanceRowMax(bmax[r], &m[r], acc + r * D, D);
    const V sum = BlockExp<V>(s + r * kKB, nw, st.m, 1.0f);
    float* lvr = lv + r * W;
    Store<V>(lvr, Load<V>(lvr) * st.alpha + sum);
  }
  return live;
}

#ifdef MASKEDMHA_X86
// OnlineSoftmax for AVX-512 with intrinsics (a separate, not inlined function: the intrinsics
// need the avx512f target on the function that contains them, so it cannot share OnlineSoftmax's
// template body -- keep the two in step).  The exponential is the same
// Cody-Waite reduction and degree-5 polynomial as ExpV, but 2^n is applied with vscalefps and
// n rounded with vrndscaleps, the -inf keys are zeroed with a mask register and the clamp is
// one vmaxps: ~18 vector operations per 16 scores instead of ~25.  The exponentials are about
// a fifth of the attention time at long sequences.
// (GCC 12 reports its own _mm512_undefined_ps() inside the intrinsics as maybe-uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
static __attribute__((target("avx512f"), noinline)) bool OnlineSoftmaxAvx512(float* s, int64_t nq,
                                                                     int64_t nw, int64_t D,
                                                                     float* m, float* lv,
                                                                     float* acc) {
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  float bmax[kQB];
  bool live = false;
  for (int64_t r = 0; r < nq; ++r) {
    const float* srow = s + r * kKB;
    __m512 mx = ninf;
    for (int64_t c = 0; c < nw; c += 16)
      mx = _mm512_max_ps(_mm512_loadu_ps(srow + c), mx);  // NaN scores: the second operand wins
    bmax[r] = _mm512_reduce_max_ps(mx);
    live = live || bmax[r] > kNegInf || HasNaN(srow, nw);
  }
  if (!live) return false;  // nothing to exponentiate: every p is 0, m and l stay
  for (int64_t r = 0; r < nq; ++r) {
    float* srow = s + r * kKB;
    const RowStep st = AdvanceRowMax(bmax[r], &m[r], acc + r * D, D);
    const __m512 mv = _mm512_set1_ps(st.m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < nw; c += 16) {
      const __m512 v = _mm512_loadu_ps(srow + c);
      // exp(x), x = v - mnew <= 0 (NaN stays NaN: vmaxps returns its second operand then).
      const __m512 x = _mm512_max_ps(_mm512_set1_ps(kExpMin), _mm512_sub_ps(v, mv));
      const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
      f = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), f);
      __m512 p = _mm512_set1_ps(kExpC5);
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpC4));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpC3));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpC2));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
      // -inf scores (masked keys, padding columns) contribute exactly 0.
      const __mmask16 keep = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_UQ);
      const __m512 e = _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
      _mm512_storeu_ps(srow + c, e);
      sum = _mm512_add_ps(sum, e);
    }
    float* lvr = lv + r * 16;
    _mm512_storeu_ps(lvr, _mm512_fmadd_ps(_mm512_loadu_ps(lvr), _mm512_set1_ps(st.alpha), sum));
  }
  return live;
}
#pragma GCC diagnostic pop
#endif

}  // namespace softmax
}  // namespace maskedmha
