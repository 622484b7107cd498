// Attention core (see attention.h).
//
// Work split (session pool): each head's keys are laid out once (PackHead) as a transposed
// (D x Tpad) matrix plus contiguous value rows, so every query block reuses them.  With at
// least 8 (batch b, head h) pairs there is one task per pair: it packs that head into a
// per-thread buffer (which stays in L2) and runs all its blocks of kQB query rows; otherwise all
// heads are packed first (PrepareKeys) and there is one task per (b, h, query block).  Per query
// block, keys are walked in blocks of kKB; scores and P·V are register tiles (RB rows x 2
// vectors) over contiguous key / value columns (vectorised without reassociating sums; no
// -ffast-math: masks rely on IEEE -inf / NaN behaviour).  Under is_causal the key blocks that
// lie wholly after the block's last query row are skipped (they would add exactly 0).
//
// Softmax:
//  * without weights: one pass, online softmax (running max m, running sum l, rescaled
//    accumulator), so the per-task state is O(kQB * D) whatever S is;
//  * with weights: pass 1 finds m and l per row, pass 2 recomputes the scores and writes the
//    normalised probabilities while accumulating P·V (scores are cheap to recompute; storing them
//    would need an (L, S') buffer per head anyway).
// A score of -inf contributes exactly 0 even when the running max is still -inf, so rows whose
// keys are all masked end with l == 0 and are filled per `nan_rows` (0 or NaN); NaN and +inf
// scores propagate as IEEE arithmetic says (0/0, inf-inf), as in PyTorch.
//
// Like gemm.cc, the body is one template compiled for the baseline ISA plus AVX2 and AVX-512,
// chosen once at run time (cpu.h).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "cpu.h"
#include "simd.h"

#ifdef MASKEDMHA_X86
#include <immintrin.h>
#endif

namespace maskedmha {

namespace {

constexpr int64_t kQB = 32;  // query rows per task
constexpr int64_t kKB = 128;  // keys per block (L = 128 then needs no softmax rescaling)
// Key counts are padded to a multiple of this (a whole number of score chunks of every ISA;
// the last block of a row only computes the chunks that hold keys).
constexpr int64_t kTPad = 32;
static_assert(kKB % kTPad == 0, "blocks are whole chunks");

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Scratch {
  AlignedVector<float> qs, acc, s, m, l, lv;
};

Scratch& LocalScratch() {
  thread_local Scratch s;
  return s;
}

// Keys of every batch item laid out once for all query blocks (built by PrepareKeys):
//  * kt: per (b, h) a (D x Tpad) transposed key matrix, Tpad = T_b rounded up to kTPad, padded
//    with zero columns, so the score loop runs over whole chunks of contiguous keys;
//  * vp: per (b, h) the (Tpad x D) values of those keys, contiguous rows, zero rows for padding;
//  * col: per key t of batch b, its column in
//    the S' key axis (original position for given keys, S + e for extra key e).
struct KeyLayout {
  std::vector<int64_t> total;   // T_b: keys of batch b that take part (given + extra)
  std::vector<int64_t> tpad;    // T_b rounded up to kTPad
  std::vector<int64_t> kt_off;  // offset of (b, h=0) in kt; head h adds h * D * tpad[b]
  std::vector<int64_t> key_off; // offset of batch b in col
  AlignedVector<float> kt;
  AlignedVector<float> vp;        // per (b, h) a (Tpad x D) value matrix (same offsets as kt)
  std::vector<int64_t> col;
  std::vector<float> zeros;
};

// 16 key rows (rows[u] + d0, 16 floats each) transposed into 16 rows of kt (kt + j * ldk, 16
// keys each) in registers.  Only instantiated where V16 is a native vector (the AVX-512
// PackHead).
static inline __attribute__((always_inline)) void TransposeKeys16(const float* const* rows,
                                                                  int64_t d0, float* kt,
                                                                  int64_t ldk) {
  simd::V16 v[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) v[r] = simd::Load<simd::V16>(rows[r] + d0);
  simd::Transpose16x16(v);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) simd::Store<simd::V16>(kt + j * ldk, v[j]);
}

// Transposes / copies the keys and values of head h of batch item b into kt (D x Tpad) and
// vp (Tpad x D), zero-padded to Tpad.  kVecTranspose: whole groups of 16 keys go through
// TransposeKeys16 (AVX-512 build only).
template <bool kVecTranspose>
static inline __attribute__((always_inline)) void PackHeadT(const AttentionArgs& a,
                                                            const KeyLayout& kl, int64_t b,
                                                            int64_t h, float* kt, float* vp) {
  const int64_t D = a.D;
  const int64_t X = (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);
  const int64_t total = kl.total[b];
  const int64_t n = total - X;
  const int64_t row_base = a.kv_offset ? a.kv_offset[b] : b * a.S;
  const int64_t tp = kl.tpad[b];
  const float* zero = kl.zeros.data();
  // The rows are short pieces of long projection rows: prefetch a few rows ahead (the source
  // rows are usually not in cache).  Keys are transposed 16 at a time through a small tile so
  // every store into kt fills one whole line (a row-by-row transpose wrote D lines Tpad apart,
  // which conflict in L1 when Tpad is a multiple of 512).
  constexpr int64_t kAhead = 8, kTile = 16;
  thread_local std::vector<float> tile_buf;
  if (tile_buf.size() < static_cast<size_t>(kTile * D)) tile_buf.resize(static_cast<size_t>(kTile * D));
  float* tile = tile_buf.data();
  for (int64_t t = 0; t < std::min(n, kAhead); ++t)
    for (int64_t d = 0; d < D; d += 16) {
      __builtin_prefetch(a.k + (row_base + t) * a.k_stride + h * D + d);
      __builtin_prefetch(a.v + (row_base + t) * a.v_stride + h * D + d);
    }
  const float* rows[kTile];
  for (int64_t t0 = 0; t0 < total; t0 += kTile) {
    const int64_t nt = std::min(kTile, total - t0);
    for (int64_t u = 0; u < nt; ++u) {
      const int64_t t = t0 + u;
      if (t + kAhead < n)
        for (int64_t d = 0; d < D; d += 16) {
          __builtin_prefetch(a.k + (row_base + t + kAhead) * a.k_stride + h * D + d);
          __builtin_prefetch(a.v + (row_base + t + kAhead) * a.v_stride + h * D + d);
        }
      const float* kp;
      const float* vsrc;
      if (t < n) {
        kp = a.k + (row_base + t) * a.k_stride;
        vsrc = a.v + (row_base + t) * a.v_stride;
      } else {
        const bool is_bias = a.bias_k && t == n;  // bias_kv (if any), then the zero key
        kp = is_bias ? a.bias_k : zero;
        vsrc = is_bias ? a.bias_v : zero;
      }
      rows[u] = kp + h * D;
      if (D > 0) std::memcpy(vp + t * D, vsrc + h * D, static_cast<size_t>(D) * sizeof(float));
    }
    if (kVecTranspose && nt == kTile && D % 16 == 0) {
      for (int64_t d0 = 0; d0 < D; d0 += 16) TransposeKeys16(rows, d0, kt + d0 * tp + t0, tp);
      continue;
    }
    for (int64_t u = 0; u < nt; ++u)
      if (D > 0) std::memcpy(tile + u * D, rows[u], static_cast<size_t>(D) * sizeof(float));
    for (int64_t d = 0; d < D; ++d) {
      float* dst = kt + d * tp + t0;
      for (int64_t u = 0; u < nt; ++u) dst[u] = tile[u * D + d];
    }
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t t = total; t < tp; ++t) kt[d * tp + t] = 0.0f;
  std::fill(vp + total * D, vp + tp * D, 0.0f);
}

using PackFn = void (*)(const AttentionArgs&, const KeyLayout&, int64_t, int64_t, float*, float*);
void PackHeadGeneric(const AttentionArgs& a, const KeyLayout& kl, int64_t b, int64_t h, float* kt,
                     float* vp) {
  PackHeadT<false>(a, kl, b, h, kt, vp);
}
#ifdef MASKEDMHA_X86
MASKEDMHA_TARGET_AVX512 void PackHeadAvx512(const AttentionArgs& a, const KeyLayout& kl,
                                            int64_t b, int64_t h, float* kt, float* vp) {
  PackHeadT<true>(a, kl, b, h, kt, vp);
}
#endif
// Packs head h of batch item b with the ISA chosen at run time (AVX2 has no variant of its own).
void PackHead(const AttentionArgs& a, const KeyLayout& kl, int64_t b, int64_t h, float* kt,
              float* vp) {
  static const PackFn pack = MASKEDMHA_PICK_ISA(&PackHeadGeneric, &PackHeadGeneric, &PackHeadAvx512);
  pack(a, kl, b, h, kt, vp);
}

// Fills the key counts and columns; with pack_all also kt / vp of every head (PackHead).
void PrepareKeys(const AttentionArgs& a, KeyLayout* kl, const Parallel& par, bool pack_all) {
  const int64_t B = a.B, H = a.H, D = a.D, E = H * D;
  const int64_t X = (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);
  kl->total.resize(B);
  kl->tpad.resize(B);
  kl->kt_off.resize(B);
  kl->key_off.resize(B + 1);
  int64_t kt_size = 0, keys = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = a.kv_offset ? a.kv_offset[b + 1] - a.kv_offset[b] : a.S;
    kl->total[b] = n + X;
    kl->tpad[b] = (kl->total[b] + kTPad - 1) / kTPad * kTPad;
    kl->kt_off[b] = kt_size;
    kl->key_off[b] = keys;
    kt_size += H * D * kl->tpad[b];
    keys += kl->total[b];
  }
  kl->key_off[B] = keys;
  // Every entry below is written before it is read: only grow (no re-initialisation of a
  // buffer kept from the previous call).
  auto grow = [](auto& v, int64_t n) {
    if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  };
  grow(kl->col, keys);
  kl->zeros.assign(static_cast<size_t>(std::max<int64_t>(E, 1)), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = kl->total[b] - X;
    const int64_t row_base = a.kv_offset ? a.kv_offset[b] : b * a.S;
    int64_t* col = kl->col.data() + kl->key_off[b];
    for (int64_t t = 0; t < n; ++t) col[t] = a.key_index ? a.key_index[row_base + t] : t;
    for (int64_t e = 0; e < X; ++e) col[n + e] = a.S + e;
  }
  if (!pack_all) return;
  grow(kl->kt, kt_size);
  grow(kl->vp, kt_size);
  par.For(static_cast<size_t>(B * H), [&](size_t task) {
    const int64_t b = static_cast<int64_t>(task) / H, h = static_cast<int64_t>(task) % H;
    const int64_t off = kl->kt_off[b] + h * D * kl->tpad[b];
    PackHead(a, *kl, b, h, kl->kt.data() + off, kl->vp.data() + off);
  });
}

using simd::Load;
using simd::Store;
using simd::V16;
using simd::V4;
using simd::V8;
typedef int32_t I4 __attribute__((vector_size(16)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef int32_t I16 __attribute__((vector_size(64)));
template <typename V> struct IntVec;
template <> struct IntVec<V4> { typedef I4 type; };
template <> struct IntVec<V8> { typedef I8 type; };
template <> struct IntVec<V16> { typedef I16 type; };

template <typename V>
static inline __attribute__((always_inline)) V Splat(float x) {
  return V{} + x;
}

// s[r][0..kKB) = q[r] . kt[:, block] for RB rows at once: RB x NV vector accumulators stay in
// registers across the whole D loop.  q: RB contiguous rows of D scaled queries (each
// broadcast reads its own row; RB lines stay in L1).
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void ScoreRows(const float* q, int64_t D,
                                                            const float* kt, int64_t ldk,
                                                            float* s, int64_t nk) {
  constexpr int W = sizeof(V) / sizeof(float), CW = NV * W;
  static_assert(kKB % CW == 0, "key block must be a whole number of chunks");
  for (int c0 = 0; c0 < nk; c0 += CW) {  // chunks wholly past the last key are skipped
    V acc[RB][NV];
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V{};
    for (int64_t d = 0; d < D; ++d) {
      V kv[NV];
      for (int v = 0; v < NV; ++v) kv[v] = Load<V>(kt + d * ldk + c0 + v * W);
      for (int r = 0; r < RB; ++r) {
        const float qv = q[r * D + d];
        for (int v = 0; v < NV; ++v) acc[r][v] += qv * kv[v];
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) Store<V>(s + r * kKB + c0 + v * W, acc[r][v]);
  }
}

// o[r][:] += sum_c p[r][c] * vb[c][:] for RB rows over the first nk keys of a block (vb: kKB
// contiguous value rows of width D, zero rows past the last key; p is 0 there), D walked in
// NV-vector register chunks.
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void AccumulatePV(const float* p, const float* vb,
                                                               int64_t nk, int64_t D, float* o) {
  constexpr int W = sizeof(V) / sizeof(float), CW = NV * W;
  int64_t d0 = 0;
  for (; d0 + CW <= D; d0 += CW) {
    V acc[RB][NV];
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = Load<V>(o + r * D + d0 + v * W);
    for (int64_t c = 0; c < nk; ++c) {
      V vv[NV];
      for (int v = 0; v < NV; ++v) vv[v] = Load<V>(vb + c * D + d0 + v * W);
      for (int r = 0; r < RB; ++r) {
        const float pv = p[r * kKB + c];
        for (int v = 0; v < NV; ++v) acc[r][v] += pv * vv[v];
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) Store<V>(o + r * D + d0 + v * W, acc[r][v]);
  }
  if (d0 < D) {
    for (int r = 0; r < RB; ++r)
      for (int64_t c = 0; c < nk; ++c) {
        const float pv = p[r * kKB + c];
        const float* v = vb + c * D;
        for (int64_t d = d0; d < D; ++d) o[r * D + d] += pv * v[d];
      }
  }
}

// Scores of rows [0, nqr) (nqr: nq rounded up to RB; the extra rows have zero queries) of the
// task against key block [t0, t0 + nk), masks applied to rows [0, nq).
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void BlockScores(const AttentionArgs& a,
                                                              const KeyLayout& kl,
                                                              const float* kt_bh, int64_t b,
                                                              int64_t h, int64_t i0, int64_t nq,
                                                              int64_t nqr, int64_t t0, int64_t nk,
                                                              Scratch& sc) {
  const int64_t D = a.D, tp = kl.tpad[b];
  const float* kt = kt_bh + t0;
  for (int64_t r = 0; r < nqr; r += RB)
    ScoreRows<RB, NV, V>(sc.qs.data() + r * D, D, kt, tp, sc.s.data() + r * kKB, nk);  // tile r / RB

  if (nk < kKB)  // padding columns (zero keys) take no part
    for (int64_t rr = 0; rr < nq; ++rr)
      for (int64_t c = nk; c < kKB; ++c) sc.s[rr * kKB + c] = kNegInf;
  const int64_t* col = kl.col.data() + kl.key_off[b] + t0;
  // Causal: nothing to hide unless some key of the block lies after the first row.
  const bool causal = a.causal && col[nk - 1] > i0;
  if (!a.kpm && !a.attn_mask && !causal) return;
  const float* kpm_row = a.kpm ? a.kpm + b * a.S : nullptr;
  // Given keys come first and in increasing position, the extra keys (bias_kv, zero_attn: not
  // masked by kpm / attn_mask) last.  Without compaction a block's given keys are consecutive
  // positions j0, j0+1, ... and the masks are read as contiguous rows (vectorised loops); after
  // compaction they are gathered through col.  Both add kpm + attn_mask first, then the sum, as
  // PyTorch merges the masks before adding them to the scores.
  int64_t n_given = nk;
  while (n_given > 0 && col[n_given - 1] >= a.S) --n_given;
  const int64_t j0 = col[0];
  const bool consecutive = n_given > 0 && col[n_given - 1] == j0 + n_given - 1;
  for (int64_t rr = 0; rr < nq; ++rr) {
    const int64_t i = i0 + rr;
    float* srow = sc.s.data() + rr * kKB;
    const float* am_row = nullptr;
    if (a.attn_mask)
      am_row = a.attn_mask + ((a.attn_mask_3d ? (b * a.H + h) * a.L : 0) + i) * a.S;
    // key(c): the original position of block column c.
    auto add_masks = [&](auto key) {
      if (kpm_row && am_row)
        for (int64_t c = 0; c < n_given; ++c) srow[c] += kpm_row[key(c)] + am_row[key(c)];
      else if (kpm_row)
        for (int64_t c = 0; c < n_given; ++c) srow[c] += kpm_row[key(c)];
      else if (am_row)
        for (int64_t c = 0; c < n_given; ++c) srow[c] += am_row[key(c)];
    };
    if (consecutive) add_masks([j0](int64_t c) { return j0 + c; });
    else add_masks([col](int64_t c) { return col[c]; });
    // Top-left causal over the whole key axis S' (extra keys at S, S+1 included, as SDPA does).
    if (causal)
      for (int64_t c = 0; c < nk; ++c)
        if (col[c] > i) srow[c] = kNegInf;
  }
}

template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void BlockPV(const float* vp_bh, int64_t D,
                                                          int64_t nqr, int64_t t0, int64_t nk,
                                                          Scratch& sc) {
  const float* vb = vp_bh + t0 * D;
  for (int64_t r = 0; r < nqr; r += RB)
    AccumulatePV<RB, NV, V>(sc.s.data() + r * kKB, vb, nk, D, sc.acc.data() + r * D);
}

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
static inline __attribute__((always_inline)) float HMax(V8 v) {
  V4 a, b;
  Halves(v, &a, &b);
  return HMax((a > b) ? a : b);
}
static inline __attribute__((always_inline)) float HSum(V8 v) {
  V4 a, b;
  Halves(v, &a, &b);
  return HSum(a + b);
}
static inline __attribute__((always_inline)) float HMax(V16 v) {
  V8 a, b;
  Halves(v, &a, &b);
  return HMax((a > b) ? a : b);
}
static inline __attribute__((always_inline)) float HSum(V16 v) {
  V8 a, b;
  Halves(v, &a, &b);
  return HSum(a + b);
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
__attribute__((target("avx512f"), noinline)) bool OnlineSoftmaxAvx512(float* s, int64_t nq,
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

template <bool kWeights, int RB, int NV, typename V>
static inline __attribute__((always_inline)) void TaskBody(const AttentionArgs& a,
                                                           const KeyLayout& kl,
                                                           const float* kt_bh,
                                                           const float* vp_bh, int64_t b,
                                                           int64_t h, int64_t i0, int64_t nq) {
  static_assert(kQB % RB == 0, "query block must be a whole number of row tiles");
  const int64_t D = a.D;
  const int64_t nqr = (nq + RB - 1) / RB * RB;
  Scratch& sc = LocalScratch();
  sc.qs.resize(kQB * D);
  sc.acc.assign(kQB * D, 0.0f);
  sc.s.resize(kQB * kKB);
  sc.m.assign(kQB, kNegInf);
  sc.l.assign(kQB, 0.0f);

  // The query rows and output rows of one head are short pieces of long rows (stride E or 3E):
  // ask for all their cache lines up front so the misses overlap.
  for (int64_t r = 0; r < nq; ++r) {
    const float* q = a.q + (b * a.L + i0 + r) * a.q_stride + h * D;
    float* out = a.out + (b * a.L + i0 + r) * a.out_stride + h * D;
    for (int64_t d = 0; d < D; d += 16) {
      __builtin_prefetch(q + d);
      __builtin_prefetch(out + d, 1);
    }
  }
  // Scaled queries, one contiguous row each (see ScoreRows); rows past nq are zero.
  for (int64_t r = 0; r < nqr; ++r) {
    float* qs = sc.qs.data() + r * D;
    if (r < nq) {
      const float* q = a.q + (b * a.L + i0 + r) * a.q_stride + h * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * a.scale;
    } else {
      for (int64_t d = 0; d < D; ++d) qs[d] = 0.0f;
    }
  }
  constexpr int W = sizeof(V) / sizeof(float);
  sc.lv.assign(kQB * W, 0.0f);
  const int64_t total = kl.total[b];
  const int64_t Sp = a.S + (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);
  const int64_t* cols = kl.col.data() + kl.key_off[b];
  float* m = sc.m.data();
  float* l = sc.l.data();
  // Key columns increase with t, so under the causal mask every block from the first whose
  // smallest column lies after the last row is hidden entirely: it would add exactly 0.
  int64_t end = total;
  if (a.causal) {
    const int64_t imax = i0 + nq - 1;
    for (int64_t t0 = 0; t0 < total; t0 += kKB)
      if (cols[t0] > imax) {
        end = t0;
        break;
      }
  }

  if (!kWeights) {
    // One pass, online softmax.
    for (int64_t t0 = 0; t0 < end; t0 += kKB) {
      const int64_t nk = std::min(kKB, total - t0);
      const int64_t nw = (nk + W - 1) / W * W;  // whole vectors covering the keys (rest -inf)
      BlockScores<RB, NV, V>(a, kl, kt_bh, b, h, i0, nq, nqr, t0, nk, sc);
      bool live;
#ifdef MASKEDMHA_X86
      if constexpr (std::is_same_v<V, V16>)
        live = OnlineSoftmaxAvx512(sc.s.data(), nq, nw, D, m, sc.lv.data(), sc.acc.data());
      else
#endif
        live = OnlineSoftmax<V>(sc.s.data(), nq, nw, D, m, sc.lv.data(), sc.acc.data());
      // A block the masks hide entirely adds p = 0 to every row: skip P·V -- unless a value in it
      // is NaN or infinite, where PyTorch's 0 * v gives NaN and so must we.
      if (live || !simd::AllFinite<V>(vp_bh + t0 * D, nk * D))
        BlockPV<RB, NV, V>(vp_bh, D, nqr, t0, nk, sc);
    }
  } else {
    // Pass 1: row max and normaliser.
    for (int64_t t0 = 0; t0 < end; t0 += kKB) {
      const int64_t nk = std::min(kKB, total - t0);
      const int64_t nw = (nk + W - 1) / W * W;  // whole vectors covering the keys (rest -inf)
      BlockScores<RB, NV, V>(a, kl, kt_bh, b, h, i0, nq, nqr, t0, nk, sc);
      // The same online step as without weights, but no accumulator yet (D = 0); the scores are
      // overwritten, pass 2 recomputes them.
      OnlineSoftmax<V>(sc.s.data(), nq, nw, 0, m, sc.lv.data(), nullptr);
    }
    for (int64_t r = 0; r < nq; ++r) l[r] = HSum(Load<V>(sc.lv.data() + r * W));
    // Probabilities of dropped (compacted-away) keys are exactly 0.
    for (int64_t r = 0; r < nq; ++r) {
      float* wrow = a.weights + ((b * a.H + h) * a.L + i0 + r) * Sp;
      std::fill(wrow, wrow + Sp, 0.0f);
    }
    // Pass 2: normalised probabilities, written out and applied to V.
    for (int64_t t0 = 0; t0 < end; t0 += kKB) {
      const int64_t nk = std::min(kKB, total - t0);
      const int64_t nw = (nk + W - 1) / W * W;  // whole vectors covering the keys (rest -inf)
      BlockScores<RB, NV, V>(a, kl, kt_bh, b, h, i0, nq, nqr, t0, nk, sc);
      for (int64_t r = 0; r < nq; ++r) {
        float* srow = sc.s.data() + r * kKB;
        if (l[r] == 0.0f) {  // fully masked: contributes nothing here, filled below
          for (int64_t c = 0; c < kKB; ++c) srow[c] = 0.0f;
          continue;
        }
        BlockExp<V>(srow, nw, m[r], 1.0f / l[r]);
        float* wrow = a.weights + ((b * a.H + h) * a.L + i0 + r) * Sp;
        for (int64_t c = 0; c < nk; ++c) wrow[cols[t0 + c]] = srow[c];
      }
      BlockPV<RB, NV, V>(vp_bh, D, nqr, t0, nk, sc);
    }
  }

  if (!kWeights)
    for (int64_t r = 0; r < nq; ++r) l[r] = HSum(Load<V>(sc.lv.data() + r * W));
  // Write the head's slice of each row.  S' == 0 (no keys at all) is the "zero" answer in both
  // modes; otherwise l == 0 means every key was masked.
  const float fill = (a.nan_rows && Sp > 0) ? kNaN : 0.0f;
  for (int64_t r = 0; r < nq; ++r) {
    float* out = a.out + (b * a.L + i0 + r) * a.out_stride + h * D;
    const float* acc = sc.acc.data() + r * D;
    if (l[r] == 0.0f) {
      for (int64_t d = 0; d < D; ++d) out[d] = fill;
      if (kWeights) {
        float* wrow = a.weights + ((b * a.H + h) * a.L + i0 + r) * Sp;
        std::fill(wrow, wrow + Sp, fill);
      }
    } else if (kWeights) {
      for (int64_t d = 0; d < D; ++d) out[d] = acc[d];
    } else {
      const float inv = 1.0f / l[r];
      for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * inv;
    }
  }
}

// kt_bh / vp_bh: the packed keys / values of head h of batch item b (PackHead).
using TaskFn = void (*)(const AttentionArgs&, const KeyLayout&, const float*, const float*,
                       int64_t, int64_t, int64_t, int64_t);

// Register tiles: RB rows x 2 vectors of accumulators (8 for SSE / AVX2, 16 of the 32 zmm for
// AVX-512).
void TaskGeneric(const AttentionArgs& a, const KeyLayout& kl, const float* kt_bh,
                 const float* vp_bh, int64_t b, int64_t h, int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true, 4, 2, V4>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
  else TaskBody<false, 4, 2, V4>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
}

#ifdef MASKEDMHA_X86
MASKEDMHA_TARGET_AVX2 void TaskAvx2(const AttentionArgs& a, const KeyLayout& kl,
                                                  const float* kt_bh, const float* vp_bh,
                                                  int64_t b, int64_t h, int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true, 4, 2, V8>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
  else TaskBody<false, 4, 2, V8>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
}
MASKEDMHA_TARGET_AVX512 void TaskAvx512(
    const AttentionArgs& a, const KeyLayout& kl, const float* kt_bh, const float* vp_bh,
    int64_t b, int64_t h, int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true, 8, 2, V16>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
  else TaskBody<false, 8, 2, V16>(a, kl, kt_bh, vp_bh, b, h, i0, nq);
}
#endif

}  // namespace

void Attention(const AttentionArgs& a, const Parallel& par) {
  if (a.B == 0 || a.L == 0 || a.H == 0) return;
  static const TaskFn task = MASKEDMHA_PICK_ISA(&TaskGeneric, &TaskAvx2, &TaskAvx512);
  const int64_t nqb = (a.L + kQB - 1) / kQB;
  // Kept by the calling thread between calls (only grows), so large buffers do not fault in
  // fresh pages on every run.  (A reference: the tasks below run on pool threads, where the
  // name would mean their own copy.)
  thread_local KeyLayout kl_cache;
  KeyLayout& kl = kl_cache;
  // With enough (batch, head) pairs to share out, one task per pair packs that head's keys and
  // values into a per-thread buffer (it stays in L2) and runs all its query blocks; otherwise
  // every head is packed first and the tasks are (batch, head, query block).
  const bool per_head = a.B * a.H >= 8;
  PrepareKeys(a, &kl, par, !per_head);
  if (per_head) {
    // Batch items with the most keys first: the pool hands out tasks in index order, so the
    // longest ones do not end up alone at the tail (key counts differ under padding).
    thread_local std::vector<int64_t> order_cache;
    std::vector<int64_t>& order = order_cache;
    order.resize(static_cast<size_t>(a.B));
    for (int64_t b = 0; b < a.B; ++b) order[b] = b;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return kl.total[x] > kl.total[y]; });
    par.For(static_cast<size_t>(a.B * a.H), [&](size_t t) {
      const int64_t b = order[static_cast<int64_t>(t) / a.H], h = static_cast<int64_t>(t) % a.H;
      const size_t size = static_cast<size_t>(kl.tpad[b] * a.D);
      thread_local AlignedVector<float> kt_buf, vp_buf;
      if (kt_buf.size() < size) kt_buf.resize(size);
      if (vp_buf.size() < size) vp_buf.resize(size);
      PackHead(a, kl, b, h, kt_buf.data(), vp_buf.data());
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int64_t i0 = qb * kQB;
        task(a, kl, kt_buf.data(), vp_buf.data(), b, h, i0, std::min(kQB, a.L - i0));
      }
    });
    return;
  }
  const size_t n = static_cast<size_t>(a.B * a.H * nqb);
  par.For(n, [&](size_t t) {
    const int64_t qb = static_cast<int64_t>(t) % nqb;
    const int64_t bh = static_cast<int64_t>(t) / nqb;
    const int64_t h = bh % a.H, b = bh / a.H;
    const int64_t i0 = qb * kQB;
    const int64_t off = kl.kt_off[b] + h * a.D * kl.tpad[b];
    task(a, kl, kl.kt.data() + off, kl.vp.data() + off, b, h, i0, std::min(kQB, a.L - i0));
  });
}

void AverageHeads(const float* per_head, int64_t B, int64_t H, int64_t L, int64_t Sp, float* avg,
                  const Parallel& par) {
  if (B == 0 || L == 0 || Sp == 0) return;
  par.For(static_cast<size_t>(B * L), [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / L, i = static_cast<int64_t>(t) % L;
    float* dst = avg + (b * L + i) * Sp;
    std::fill(dst, dst + Sp, 0.0f);
    for (int64_t h = 0; h < H; ++h) {
      const float* src = per_head + ((b * H + h) * L + i) * Sp;
      for (int64_t j = 0; j < Sp; ++j) dst[j] += src[j];
    }
    const float inv = 1.0f / static_cast<float>(H);
    for (int64_t j = 0; j < Sp; ++j) dst[j] *= inv;
  });
}

}  // namespace maskedmha
