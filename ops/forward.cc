// MaskedMHA forward pass: projections, attention, output projection (see forward.h).
#include "forward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "workspace.h"

namespace maskedmha {

namespace {

// The query rows the projections, attention and output projection run over.
struct QueryRows {
  int64_t n = 0;                  // how many
  const int64_t* rows = nullptr;  // their rows in query / out, or null: rows 0 .. n-1
};

QueryRows QueryRowsOf(const ForwardPlan& pl, const Workspace& wb) {
  const Problem& p = pl.problem;
  if (pl.seq_offset) return {p.T, nullptr};
  // The kept queries are the kept keys (L == S): the same rows of their tensors.
  if (pl.skip_queries) return {pl.kv_offset[p.B], wb.kv_rows.data()};
  return {p.B * p.L, nullptr};
}

// The Q, K and V projections (one, two or three GEMMs, see ForwardPlan) into wb: sets the
// q / k / v pointers and strides of the returned AttentionArgs.
AttentionArgs Project(const ForwardPlan& pl, Workspace& wb, const Parallel& par) {
  const Problem& p = pl.problem;
  const int64_t nb = p.B, S = p.S, E = p.E;
  const float* query = pl.query;
  const int64_t* off = pl.kv_offset;
  const int64_t* key_index = pl.key_index;
  // Keys to project: all T token rows (variable-length mode), all B*S, or the kept ones.
  const int64_t n_keys = pl.seq_offset ? p.T : off ? off[nb] : nb * S;
  // Rows of key / value to project: all of them, or (compaction) the kept ones, which the
  // GEMM reads in place through their row numbers while it packs them.
  const int64_t* kv_rows = nullptr;
  if (off) {
    wb.kv_rows.resize(static_cast<size_t>(n_keys));
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t r = off[b]; r < off[b + 1]; ++r) wb.kv_rows[r] = b * S + key_index[r];
    kv_rows = wb.kv_rows.data();
  }
  const QueryRows qr = QueryRowsOf(pl, wb);

  AttentionArgs a;
  if (pl.w_qkv) {
    // The query rows are the key rows (ForwardPlan::w_qkv).
    float* qkv = wb.qkv.resize(static_cast<size_t>(qr.n * 3 * E));
    Gemm(query, E, qr.n, *pl.w_qkv, pl.in_bias, qkv, 3 * E, par, qr.rows);
    a.q = qkv;
    a.k = qkv + E;
    a.v = qkv + 2 * E;
    a.q_stride = a.k_stride = a.v_stride = 3 * E;
  } else {
    float* q = wb.q.resize(static_cast<size_t>(qr.n * E));
    Gemm(query, E, qr.n, *pl.w_q, pl.in_bias, q, E, par, qr.rows);
    a.q = q;
    a.q_stride = E;
    const float* b_k = pl.in_bias ? pl.in_bias + E : nullptr;
    const float* b_v = pl.in_bias ? pl.in_bias + 2 * E : nullptr;
    if (pl.w_kv) {
      // Key is value and Wk, Wv are adjacent rows of the packed weight: one (2E) projection.
      float* kv = wb.kv.resize(static_cast<size_t>(n_keys * 2 * E));
      Gemm(pl.key, p.Kd, n_keys, *pl.w_kv, b_k, kv, 2 * E, par, kv_rows);
      a.k = kv;
      a.v = kv + E;
      a.k_stride = a.v_stride = 2 * E;
    } else {
      float* k = wb.k.resize(static_cast<size_t>(n_keys * E));
      float* v = wb.v.resize(static_cast<size_t>(n_keys * E));
      Gemm(pl.key, p.Kd, n_keys, *pl.w_k, b_k, k, E, par, kv_rows);
      Gemm(pl.value, p.Vd, n_keys, *pl.w_v, b_v, v, E, par, kv_rows);
      a.k = k;
      a.v = v;
      a.k_stride = a.v_stride = E;
    }
  }
  return a;
}

// skip_padded_queries: rows (b, i) that pl.padded_queries marks become zeros in out (E wide)
// and in the weights ((B, L, S') averaged or (B, H, L, S') per head).
void ZeroPaddedQueries(const ForwardPlan& pl, const Parallel& par) {
  const Problem& p = pl.problem;
  const int64_t L = p.L, E = p.E, Sp = p.Sp;
  const bool* pad = pl.padded_queries;
  const int64_t heads = pl.weights && !pl.attrs.average_weights ? p.H : 1;
  // One chunk of whole batch items at a time.
  const size_t item = static_cast<size_t>(L * E) + 1;
  ForChunks(par, static_cast<size_t>(p.B), std::max<size_t>(1, (size_t{1} << 15) / item),
            [&](size_t b0, size_t b1) {
              for (int64_t b = static_cast<int64_t>(b0); b < static_cast<int64_t>(b1); ++b)
                for (int64_t i = 0; i < L; ++i) {
                  if (!pad[b * L + i]) continue;
                  std::fill(pl.out + (b * L + i) * E, pl.out + (b * L + i + 1) * E, 0.0f);
                  if (!pl.weights) continue;
                  for (int64_t h = 0; h < heads; ++h) {
                    float* w = pl.weights + ((b * heads + h) * L + i) * Sp;
                    std::fill(w, w + Sp, 0.0f);
                  }
                }
            });
}

}  // namespace

void Forward(const ForwardPlan& pl, const Parallel& par) {
  const Problem& p = pl.problem;
  const int64_t nb = p.B;
  if (nb <= 0 || p.L == 0) return;
  const int64_t L = p.L, E = p.E, H = p.H;
  // The intermediates live in the calling thread's workspace (workspace.h).
  Workspace& wb = ThisThreadWorkspace();
  AttentionArgs a = Project(pl, wb, par);
  const QueryRows qr = QueryRowsOf(pl, wb);
  a.B = nb;
  a.L = L;
  a.S = p.S;
  a.H = H;
  a.D = p.D;
  a.scale = 1.0f / std::sqrt(static_cast<float>(p.D));
  a.kv_offset = pl.kv_offset;
  a.key_index = pl.key_index;
  if (pl.seq_offset) {
    // Each sequence's queries and keys are its own token rows (positions from its first row).
    a.q_offset = a.kv_offset = pl.seq_offset;
    a.key_index = nullptr;
  } else if (pl.skip_queries) {
    // The kept queries are the kept keys: the same compacted rows and positions.
    a.q_offset = pl.kv_offset;
    a.q_index = pl.key_index;
  }
  a.bias_k = pl.bias_k;
  a.bias_v = pl.bias_v;
  a.zero_attn = pl.attrs.add_zero_attn;
  a.kpm = pl.kpm;
  a.attn_mask = pl.attn_mask;
  a.attn_mask_3d = p.attn_mask_3d;
  a.causal = pl.attrs.is_causal;
  a.nan_rows = pl.attrs.nan_rows;
  a.out = wb.attn.resize(static_cast<size_t>(qr.n * E));
  a.out_stride = E;
  if (pl.weights) {
    if (pl.attrs.average_weights) a.weights = wb.per_head.resize(static_cast<size_t>(nb * H * L * p.Sp));
    else a.weights = pl.weights;
  }
  Attention(a, par);
  if (pl.weights && pl.attrs.average_weights)
    AverageHeads(a.weights, nb, H, L, p.Sp, pl.weights, par);

  if (!qr.rows) {
    // Output projection straight into the output tensor.
    Gemm(a.out, E, qr.n, *pl.w_out, pl.out_bias, pl.out, E, par);
  } else {
    // Only the kept rows: projected together, then each copied to its row of the output.
    float* kept = wb.kept_out.resize(static_cast<size_t>(qr.n * E));
    Gemm(a.out, E, qr.n, *pl.w_out, pl.out_bias, kept, E, par);
    ForChunks(par, static_cast<size_t>(qr.n), std::max<size_t>(1, (size_t{1} << 14) / static_cast<size_t>(E + 1)),
              [&](size_t r0, size_t r1) {
                for (size_t r = r0; r < r1; ++r)
                  std::memcpy(pl.out + qr.rows[r] * E, kept + r * E, static_cast<size_t>(E) * sizeof(float));
              });
  }
  if (pl.padded_queries) ZeroPaddedQueries(pl, par);
}

}  // namespace maskedmha
