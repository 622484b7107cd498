// Attention core (see attention.h).
//
// Work split: one task per (batch b, head h, block of kQB query rows), run on the session pool.
// Per task, keys are walked in blocks of kKB: the key block is transposed into a small (D x kKB)
// scratch so the score loop runs over contiguous key columns and auto-vectorises without
// reassociating sums (no -ffast-math: masks rely on IEEE -inf / NaN behaviour).
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
// chosen once at run time.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace maskedmha {

namespace {

constexpr int64_t kQB = 32;  // query rows per task
constexpr int64_t kKB = 64;  // keys per block

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Scratch {
  std::vector<float> qs, acc, kt, s, m, l, zeros;
  std::vector<const float*> vrow;
  std::vector<int64_t> col;
};

Scratch& LocalScratch() {
  thread_local Scratch s;
  return s;
}

struct KeyView {
  int64_t n_given;   // keys of this batch item that survive compaction
  int64_t row_base;  // first row of them in k / v
  int64_t total;     // n_given + extra keys
};

// Loads key block [t0, t0 + nk): transposed keys into kt, value row pointers, original columns.
static inline __attribute__((always_inline)) void LoadKeyBlock(const AttentionArgs& a,
                                                               const KeyView& kv, int64_t h,
                                                               int64_t t0, int64_t nk,
                                                               Scratch& sc) {
  const int64_t D = a.D;
  for (int64_t c = 0; c < nk; ++c) {
    const int64_t t = t0 + c;
    const float* kp;
    const float* vp;
    int64_t col;
    if (t < kv.n_given) {
      const int64_t row = kv.row_base + t;
      kp = a.k + row * a.k_stride + h * D;
      vp = a.v + row * a.v_stride + h * D;
      col = a.key_index ? a.key_index[row] : t;
    } else {
      const int64_t e = t - kv.n_given;  // 0: bias_kv (if any), then the zero key
      if (a.bias_k && e == 0) {
        kp = a.bias_k + h * D;
        vp = a.bias_v + h * D;
      } else {
        kp = vp = sc.zeros.data();
      }
      col = a.S + e;
    }
    for (int64_t d = 0; d < D; ++d) sc.kt[d * kKB + c] = kp[d];
    sc.vrow[c] = vp;
    sc.col[c] = col;
  }
}

// Scores for rows [i0, i0 + nq) against the loaded block, with masks applied.
static inline __attribute__((always_inline)) void BlockScores(const AttentionArgs& a, int64_t b,
                                                              int64_t h, int64_t i0, int64_t nq,
                                                              int64_t nk, Scratch& sc) {
  const int64_t D = a.D;
  for (int64_t r = 0; r < nq; ++r) {
    float* srow = sc.s.data() + r * kKB;
    const float* qrow = sc.qs.data() + r * D;
    for (int64_t c = 0; c < nk; ++c) srow[c] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qv = qrow[d];
      const float* ktd = sc.kt.data() + d * kKB;
      for (int64_t c = 0; c < nk; ++c) srow[c] += qv * ktd[c];
    }
  }
  if (!a.kpm && !a.attn_mask && !a.causal) return;
  const float* kpm_row = a.kpm ? a.kpm + b * a.S : nullptr;
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t i = i0 + r;
    float* srow = sc.s.data() + r * kKB;
    const float* am_row = nullptr;
    if (a.attn_mask)
      am_row = a.attn_mask + ((a.attn_mask_3d ? (b * a.H + h) * a.L : 0) + i) * a.S;
    for (int64_t c = 0; c < nk; ++c) {
      const int64_t j = sc.col[c];
      if (j < a.S) {
        float add = 0.0f;
        if (kpm_row) add += kpm_row[j];
        if (am_row) add += am_row[j];
        srow[c] += add;
      }
      if (a.causal && j > i) srow[c] = kNegInf;
    }
  }
}

static inline __attribute__((always_inline)) float Exp(float x) { return std::exp(x); }

template <bool kWeights>
static inline __attribute__((always_inline)) void TaskBody(const AttentionArgs& a, int64_t b,
                                                           int64_t h, int64_t i0, int64_t nq) {
  const int64_t D = a.D;
  Scratch& sc = LocalScratch();
  sc.qs.resize(kQB * D);
  sc.acc.assign(kQB * D, 0.0f);
  sc.kt.resize(std::max<int64_t>(1, D) * kKB);
  sc.s.resize(kQB * kKB);
  sc.m.assign(kQB, kNegInf);
  sc.l.assign(kQB, 0.0f);
  sc.vrow.resize(kKB);
  sc.col.resize(kKB);
  if (sc.zeros.size() < static_cast<size_t>(D)) sc.zeros.assign(D, 0.0f);

  for (int64_t r = 0; r < nq; ++r) {
    const float* q = a.q + (b * a.L + i0 + r) * a.q_stride + h * D;
    float* qs = sc.qs.data() + r * D;
    for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * a.scale;
  }

  KeyView kv;
  if (a.kv_offset) {
    kv.row_base = a.kv_offset[b];
    kv.n_given = a.kv_offset[b + 1] - a.kv_offset[b];
  } else {
    kv.row_base = b * a.S;
    kv.n_given = a.S;
  }
  kv.total = kv.n_given + (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);
  const int64_t Sp = a.S + (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);

  float* m = sc.m.data();
  float* l = sc.l.data();

  if (!kWeights) {
    // One pass, online softmax.
    for (int64_t t0 = 0; t0 < kv.total; t0 += kKB) {
      const int64_t nk = std::min(kKB, kv.total - t0);
      LoadKeyBlock(a, kv, h, t0, nk, sc);
      BlockScores(a, b, h, i0, nq, nk, sc);
      for (int64_t r = 0; r < nq; ++r) {
        float* srow = sc.s.data() + r * kKB;
        float mx = kNegInf;
        for (int64_t c = 0; c < nk; ++c) mx = srow[c] > mx ? srow[c] : mx;
        const float mnew = mx > m[r] ? mx : m[r];
        const float alpha = (mnew == m[r]) ? 1.0f : Exp(m[r] - mnew);
        float sum = 0.0f;
        for (int64_t c = 0; c < nk; ++c) {
          const float p = (srow[c] == kNegInf) ? 0.0f : Exp(srow[c] - mnew);
          srow[c] = p;
          sum += p;
        }
        l[r] = l[r] * alpha + sum;
        m[r] = mnew;
        float* acc = sc.acc.data() + r * D;
        if (alpha != 1.0f)
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
        for (int64_t c = 0; c < nk; ++c) {
          const float p = srow[c];
          const float* vp = sc.vrow[c];
          for (int64_t d = 0; d < D; ++d) acc[d] += p * vp[d];
        }
      }
    }
  } else {
    // Pass 1: row max and normaliser.
    for (int64_t t0 = 0; t0 < kv.total; t0 += kKB) {
      const int64_t nk = std::min(kKB, kv.total - t0);
      LoadKeyBlock(a, kv, h, t0, nk, sc);
      BlockScores(a, b, h, i0, nq, nk, sc);
      for (int64_t r = 0; r < nq; ++r) {
        const float* srow = sc.s.data() + r * kKB;
        float mx = kNegInf;
        for (int64_t c = 0; c < nk; ++c) mx = srow[c] > mx ? srow[c] : mx;
        const float mnew = mx > m[r] ? mx : m[r];
        const float alpha = (mnew == m[r]) ? 1.0f : Exp(m[r] - mnew);
        float sum = 0.0f;
        for (int64_t c = 0; c < nk; ++c)
          sum += (srow[c] == kNegInf) ? 0.0f : Exp(srow[c] - mnew);
        l[r] = l[r] * alpha + sum;
        m[r] = mnew;
      }
    }
    // Probabilities of dropped (compacted-away) keys are exactly 0.
    for (int64_t r = 0; r < nq; ++r) {
      float* wrow = a.weights + ((b * a.H + h) * a.L + i0 + r) * Sp;
      std::fill(wrow, wrow + Sp, 0.0f);
    }
    // Pass 2: normalised probabilities, written out and applied to V.
    for (int64_t t0 = 0; t0 < kv.total; t0 += kKB) {
      const int64_t nk = std::min(kKB, kv.total - t0);
      LoadKeyBlock(a, kv, h, t0, nk, sc);
      BlockScores(a, b, h, i0, nq, nk, sc);
      for (int64_t r = 0; r < nq; ++r) {
        if (l[r] == 0.0f) continue;  // fully masked, filled below
        float* srow = sc.s.data() + r * kKB;
        const float inv = 1.0f / l[r];
        float* wrow = a.weights + ((b * a.H + h) * a.L + i0 + r) * Sp;
        for (int64_t c = 0; c < nk; ++c) {
          const float p = (srow[c] == kNegInf) ? 0.0f : Exp(srow[c] - m[r]) * inv;
          srow[c] = p;
          wrow[sc.col[c]] = p;
        }
        float* acc = sc.acc.data() + r * D;
        for (int64_t c = 0; c < nk; ++c) {
          const float p = srow[c];
          const float* vp = sc.vrow[c];
          for (int64_t d = 0; d < D; ++d) acc[d] += p * vp[d];
        }
      }
    }
  }

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

using TaskFn = void (*)(const AttentionArgs&, int64_t, int64_t, int64_t, int64_t);

void TaskGeneric(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true>(a, b, h, i0, nq);
  else TaskBody<false>(a, b, h, i0, nq);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MASKEDMHA_X86_DISPATCH 1
__attribute__((target("avx2,fma"))) void TaskAvx2(const AttentionArgs& a, int64_t b, int64_t h,
                                                  int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true>(a, b, h, i0, nq);
  else TaskBody<false>(a, b, h, i0, nq);
}
__attribute__((target("avx512f,avx2,fma,prefer-vector-width=512"))) void TaskAvx512(
    const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t nq) {
  if (a.weights) TaskBody<true>(a, b, h, i0, nq);
  else TaskBody<false>(a, b, h, i0, nq);
}
#endif

TaskFn ChooseTask() {
#ifdef MASKEDMHA_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return TaskAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return TaskAvx2;
#endif
  return TaskGeneric;
}

}  // namespace

void Attention(const AttentionArgs& a, const Parallel& par) {
  if (a.B == 0 || a.L == 0 || a.H == 0) return;
  static const TaskFn task = ChooseTask();
  const int64_t nqb = (a.L + kQB - 1) / kQB;
  const size_t n = static_cast<size_t>(a.B * a.H * nqb);
  par.For(n, [&](size_t t) {
    const int64_t qb = static_cast<int64_t>(t) % nqb;
    const int64_t bh = static_cast<int64_t>(t) / nqb;
    const int64_t h = bh % a.H, b = bh / a.H;
    const int64_t i0 = qb * kQB;
    task(a, b, h, i0, std::min(kQB, a.L - i0));
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
