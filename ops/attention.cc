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
// lie wholly after the block's last query row are skipped (they would add exactly 0).  With
// q_offset (the variable-length mode, or skipped padded queries) every item has its own number of
// query rows and only those are computed: the work follows the rows that exist.
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
// chosen once at run time (cpu.h).  The key layout is in attention_keys.cc, the softmax in
// softmax.h, the block sizes in attention_blocks.h.
#include "attention.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "attention_blocks.h"
#include "attention_keys.h"
#include "cpu.h"
#include "simd.h"
#include "softmax.h"
#include "workspace.h"

namespace maskedmha {

namespace {

// A task's scratch: the Workspace of the thread running the task (workspace.h).
using Scratch = Workspace::AttentionTask;

using simd::Load;
using simd::Store;
using simd::V16;
using simd::V4;
using simd::V8;
using simd::HSum;
using softmax::BlockExp;
using softmax::OnlineSoftmax;
#ifdef MASKEDMHA_X86
using softmax::OnlineSoftmaxAvx512;
#endif

// The register tile shared by the score and P·V loops: acc[r][:] += sum over k < n of
// a[r * lda + k] * b[k * ldb + (0 .. NV vectors)], RB rows x NV vectors of accumulators (each
// a is broadcast, each b row loaded once for all RB rows).
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void TileUpdate(V (&acc)[RB][NV], const float* a,
                                                             int64_t lda, const float* b,
                                                             int64_t ldb, int64_t n) {
  constexpr int W = sizeof(V) / sizeof(float);
  for (int64_t k = 0; k < n; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Load<V>(b + k * ldb + v * W);
    for (int r = 0; r < RB; ++r) {
      const float av = a[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
}

// Row r of the tile to dst + r * ld.
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void StoreTile(const V (&acc)[RB][NV], float* dst,
                                                            int64_t ld) {
  constexpr int W = sizeof(V) / sizeof(float);
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) Store<V>(dst + r * ld + v * W, acc[r][v]);
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
    TileUpdate<RB, NV, V>(acc, q, D, kt + c0, ldk, D);
    StoreTile<RB, NV, V>(acc, s + c0, kKB);
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
    TileUpdate<RB, NV, V>(acc, p, kKB, vb + d0, D, nk);
    StoreTile<RB, NV, V>(acc, o + d0, D);
  }
  // Whole vectors left (all of D = 16 under AVX-512, whose chunk is 32): a one-vector tile.
  // Without it they took the scalar loop below, which loads and stores o once per key: perf on
  // E 64 / 4 heads, B 8 x L 128 (AMD EPYC Zen 5, AVX-512, 1 thread) put 60 % of the run there.
  if constexpr (NV > 1) {
    for (; d0 + W <= D; d0 += W) {
      V acc[RB][1];
      for (int r = 0; r < RB; ++r) acc[r][0] = Load<V>(o + r * D + d0);
      TileUpdate<RB, 1, V>(acc, p, kKB, vb + d0, D, nk);
      StoreTile<RB, 1, V>(acc, o + d0, D);
    }
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
// task against key block [t0, t0 + nk), masks applied to rows [0, nq); pos[r]: the query
// position of row r (increasing).
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void BlockScores(const AttentionArgs& a,
                                                              const KeyLayout& kl,
                                                              const float* kt_bh, int64_t b,
                                                              int64_t h, const int64_t* pos,
                                                              int64_t nq, int64_t nqr, int64_t t0,
                                                              int64_t nk, Scratch& sc) {
  const int64_t D = a.D, tp = kl.tpad[b];
  const float* kt = kt_bh + t0;
  for (int64_t r = 0; r < nqr; r += RB)
    ScoreRows<RB, NV, V>(sc.qs.data() + r * D, D, kt, tp, sc.s.data() + r * kKB, nk);  // tile r / RB

  if (nk < kKB)  // padding columns (zero keys) take no part
    for (int64_t rr = 0; rr < nq; ++rr)
      for (int64_t c = nk; c < kKB; ++c) sc.s[rr * kKB + c] = kNegInf;
  const int64_t* col = kl.col.data() + kl.key_off[b] + t0;
  // Causal: nothing to hide unless some key of the block lies after the first row.
  const bool causal = a.causal && col[nk - 1] > pos[0];
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
    const int64_t i = pos[rr];
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

// One task: query rows [i0, i0 + nq) of batch item b (its rows row0 .. row0 + nq - 1 of q and
// out, at query positions pos[0 .. nq)) for head h against that head's packed keys / values
// (kt_bh, vp_bh), with the per-thread scratch.  nqr: nq rounded up to the row tile; keys
// [0, end) take part (end < total when the causal mask hides the tail).
struct Task {
  const AttentionArgs& a;
  const KeyLayout& kl;
  const float* kt_bh;
  const float* vp_bh;
  int64_t b, h, i0, nq, nqr;
  Scratch& sc;
  int64_t total = 0, end = 0, Sp = 0;
  const int64_t* cols = nullptr;
  int64_t row0 = 0;
  int64_t pos[kQB] = {};

  float* WeightsRow(int64_t r) const { return a.weights + ((b * a.H + h) * a.L + pos[r]) * Sp; }
};

// The task's query rows scaled into sc.qs, one contiguous row each (see ScoreRows); rows past
// nq are zero.
static inline __attribute__((always_inline)) void LoadQueries(const Task& t) {
  const AttentionArgs& a = t.a;
  const int64_t D = a.D;
  // The query rows and output rows of one head are short pieces of long rows (stride E or 3E):
  // ask for all their cache lines up front so the misses overlap.
  for (int64_t r = 0; r < t.nq; ++r) {
    const float* q = a.q + (t.row0 + r) * a.q_stride + t.h * D;
    float* out = a.out + (t.row0 + r) * a.out_stride + t.h * D;
    for (int64_t d = 0; d < D; d += 16) {
      __builtin_prefetch(q + d);
      __builtin_prefetch(out + d, 1);
    }
  }
  for (int64_t r = 0; r < t.nqr; ++r) {
    float* qs = t.sc.qs.data() + r * D;
    if (r < t.nq) {
      const float* q = a.q + (t.row0 + r) * a.q_stride + t.h * D;
      for (int64_t d = 0; d < D; ++d) qs[d] = q[d] * a.scale;
    } else {
      for (int64_t d = 0; d < D; ++d) qs[d] = 0.0f;
    }
  }
}

// Key columns increase with t, so under the causal mask every block from the first whose
// smallest column lies after the task's last row is hidden entirely: it would add exactly 0.
// Returns where the keys that take part end.
static inline __attribute__((always_inline)) int64_t CausalEnd(const Task& t) {
  if (!t.a.causal) return t.total;
  const int64_t imax = t.pos[t.nq - 1];
  for (int64_t t0 = 0; t0 < t.total; t0 += kKB)
    if (t.cols[t0] > imax) return t0;
  return t.total;
}

// Without weights: one pass, online softmax; sc.l gets the rows' sums.
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void OnePass(const Task& t) {
  constexpr int W = sizeof(V) / sizeof(float);
  const int64_t D = t.a.D;
  Scratch& sc = t.sc;
  for (int64_t t0 = 0; t0 < t.end; t0 += kKB) {
    const int64_t nk = std::min(kKB, t.total - t0);
    const int64_t nw = (nk + W - 1) / W * W;  // whole vectors covering the keys (rest -inf)
    BlockScores<RB, NV, V>(t.a, t.kl, t.kt_bh, t.b, t.h, t.pos, t.nq, t.nqr, t0, nk, sc);
    bool live;
#ifdef MASKEDMHA_X86
    if constexpr (std::is_same_v<V, V16>)
      live = OnlineSoftmaxAvx512(sc.s.data(), t.nq, nw, D, sc.m.data(), sc.lv.data(), sc.acc.data());
    else
#endif
      live = OnlineSoftmax<V>(sc.s.data(), t.nq, nw, D, sc.m.data(), sc.lv.data(), sc.acc.data());
    // A block the masks hide entirely adds p = 0 to every row: skip P·V -- unless a value in it
    // is NaN or infinite, where PyTorch's 0 * v gives NaN and so must we.
    if (live || !simd::AllFinite<V>(t.vp_bh + t0 * D, nk * D))
      BlockPV<RB, NV, V>(t.vp_bh, D, t.nqr, t0, nk, sc);
  }
  for (int64_t r = 0; r < t.nq; ++r) sc.l[r] = HSum(Load<V>(sc.lv.data() + r * W));
}

// With weights: pass 1 finds each row's max and sum (sc.m, sc.l), pass 2 recomputes the scores,
// writes the normalised probabilities and accumulates P·V.
template <int RB, int NV, typename V>
static inline __attribute__((always_inline)) void TwoPass(const Task& t) {
  constexpr int W = sizeof(V) / sizeof(float);
  const int64_t D = t.a.D;
  Scratch& sc = t.sc;
  float* m = sc.m.data();
  float* l = sc.l.data();
  for (int64_t t0 = 0; t0 < t.end; t0 += kKB) {
    const int64_t nk = std::min(kKB, t.total - t0);
    const int64_t nw = (nk + W - 1) / W * W;  // whole vectors covering the keys (rest -inf)
    BlockScores<RB, NV, V>(t.a, t.kl, t.kt_bh, t.b, t.h, t.pos, t.nq, t.nqr, t0, nk, sc);
    // The same online step as without weights, but no accumulator yet (D = 0); the scores are
    // overwritten, pass 2 recomputes them.
    OnlineSoftmax<V>(sc.s.data(), t.nq, nw, 0, m, sc.lv.data(), nullptr);
  }
  for (int64_t r = 0; r < t.nq; ++r) l[r] = HSum(Load<V>(sc.lv.data() + r * W));
  // Probabilities of dropped (compacted-away) keys are exactly 0.
  for (int64_t r = 0; r < t.nq; ++r) std::fill(t.WeightsRow(r), t.WeightsRow(r) + t.Sp, 0.0f);
  for (int64_t t0 = 0; t0 < t.end; t0 += kKB) {
    const int64_t nk = std::min(kKB, t.total - t0);
    const int64_t nw = (nk + W - 1) / W * W;
    BlockScores<RB, NV, V>(t.a, t.kl, t.kt_bh, t.b, t.h, t.pos, t.nq, t.nqr, t0, nk, sc);
    for (int64_t r = 0; r < t.nq; ++r) {
      float* srow = sc.s.data() + r * kKB;
      if (l[r] == 0.0f) {  // fully masked: contributes nothing here, filled below
        for (int64_t c = 0; c < kKB; ++c) srow[c] = 0.0f;
        continue;
      }
      BlockExp<V>(srow, nw, m[r], 1.0f / l[r]);
      float* wrow = t.WeightsRow(r);
      for (int64_t c = 0; c < nk; ++c) wrow[t.cols[t0 + c]] = srow[c];
    }
    BlockPV<RB, NV, V>(t.vp_bh, D, t.nqr, t0, nk, sc);
  }
}

// Writes the head's slice of each output row (and fully masked rows of the weights).  S' == 0
// (no keys at all) is the "zero" answer in both modes; otherwise l == 0 means every key was
// masked.  With weights the accumulator already holds normalised sums.
template <bool kWeights>
static inline __attribute__((always_inline)) void WriteRows(const Task& t) {
  const AttentionArgs& a = t.a;
  const int64_t D = a.D;
  const float fill = (a.nan_rows && t.Sp > 0) ? kNaN : 0.0f;
  for (int64_t r = 0; r < t.nq; ++r) {
    float* out = a.out + (t.row0 + r) * a.out_stride + t.h * D;
    const float* acc = t.sc.acc.data() + r * D;
    const float l = t.sc.l[r];
    if (l == 0.0f) {
      for (int64_t d = 0; d < D; ++d) out[d] = fill;
      if (kWeights) std::fill(t.WeightsRow(r), t.WeightsRow(r) + t.Sp, fill);
    } else if (kWeights) {
      for (int64_t d = 0; d < D; ++d) out[d] = acc[d];
    } else {
      const float inv = 1.0f / l;
      for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * inv;
    }
  }
}

template <bool kWeights, int RB, int NV, typename V>
static inline __attribute__((always_inline)) void TaskBody(const AttentionArgs& a,
                                                           const KeyLayout& kl,
                                                           const float* kt_bh,
                                                           const float* vp_bh, int64_t b,
                                                           int64_t h, int64_t i0, int64_t nq) {
  static_assert(kQB % RB == 0, "query block must be a whole number of row tiles");
  constexpr int W = sizeof(V) / sizeof(float);
  const int64_t D = a.D;
  Scratch& sc = ThisThreadWorkspace().task;  // this task's thread
  sc.qs.resize(kQB * D);
  sc.acc.assign(kQB * D, 0.0f);
  sc.s.resize(kQB * kKB);
  sc.m.assign(kQB, kNegInf);
  sc.l.assign(kQB, 0.0f);
  sc.lv.assign(kQB * W, 0.0f);
  Task t{a, kl, kt_bh, vp_bh, b, h, i0, nq, (nq + RB - 1) / RB * RB, sc};
  t.total = kl.total[b];
  t.Sp = a.S + (a.bias_k ? 1 : 0) + (a.zero_attn ? 1 : 0);
  t.cols = kl.col.data() + kl.key_off[b];
  // The task's rows in q / out and their query positions (attention.h).
  const int64_t base = a.q_offset ? a.q_offset[b] : b * a.L;
  t.row0 = base + i0;
  for (int64_t r = 0; r < nq; ++r)
    t.pos[r] = a.q_index ? a.q_index[t.row0 + r] : i0 + r;
  t.end = CausalEnd(t);
  LoadQueries(t);
  if (kWeights) TwoPass<RB, NV, V>(t);
  else OnePass<RB, NV, V>(t);
  WriteRows<kWeights>(t);
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
  // Query rows of item b (all L, or its own count with q_offset) and the most query blocks of
  // any item.
  auto rows_of = [&](int64_t b) { return a.q_offset ? a.q_offset[b + 1] - a.q_offset[b] : a.L; };
  const int64_t nqb = (a.L + kQB - 1) / kQB;
  // The calling thread's workspace (workspace.h): the tasks below, on pool threads too, read
  // its key layout and batch order through these references.
  Workspace& ws = ThisThreadWorkspace();
  KeyLayout& kl = ws.keys;
  // With enough (batch, head) pairs to share out, one task per pair packs that head's keys and
  // values into a per-thread buffer (it stays in L2) and runs all its query blocks; otherwise
  // every head is packed first and the tasks are (batch, head, query block).
  const bool per_head = a.B * a.H >= 8;
  PrepareKeys(a, &kl, par, !per_head);
  if (per_head) {
    // Batch items with the most keys first: the pool hands out tasks in index order, so the
    // longest ones do not end up alone at the tail (key counts differ under padding; with
    // q_offset query counts follow them).
    std::vector<int64_t>& order = ws.batch_order;
    order.resize(static_cast<size_t>(a.B));
    for (int64_t b = 0; b < a.B; ++b) order[b] = b;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return kl.total[x] > kl.total[y]; });
    par.For(static_cast<size_t>(a.B * a.H), [&](size_t t) {
      const int64_t b = order[static_cast<int64_t>(t) / a.H], h = static_cast<int64_t>(t) % a.H;
      const int64_t rows = rows_of(b);
      if (rows == 0) return;  // no query rows (an empty sequence, or every query skipped)
      const size_t size = static_cast<size_t>(kl.tpad[b] * a.D);
      // This task's thread's own head buffers (not ws: that is the calling thread's).
      Workspace& own = ThisThreadWorkspace();
      AlignedVector<float>& kt_buf = own.head_kt;
      AlignedVector<float>& vp_buf = own.head_vp;
      if (kt_buf.size() < size) kt_buf.resize(size);
      if (vp_buf.size() < size) vp_buf.resize(size);
      PackHead(a, kl, b, h, kt_buf.data(), vp_buf.data());
      for (int64_t i0 = 0; i0 < rows; i0 += kQB)
        task(a, kl, kt_buf.data(), vp_buf.data(), b, h, i0, std::min(kQB, rows - i0));
    });
    return;
  }
  const size_t n = static_cast<size_t>(a.B * a.H * nqb);
  par.For(n, [&](size_t t) {
    const int64_t qb = static_cast<int64_t>(t) % nqb;
    const int64_t bh = static_cast<int64_t>(t) / nqb;
    const int64_t h = bh % a.H, b = bh / a.H;
    const int64_t i0 = qb * kQB, rows = rows_of(b);
    if (i0 >= rows) return;  // past this item's query rows (q_offset)
    const int64_t off = kl.kt_off[b] + h * a.D * kl.tpad[b];
    task(a, kl, kl.kt.data() + off, kl.vp.data() + off, b, h, i0, std::min(kQB, rows - i0));
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
