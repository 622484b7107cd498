// MaskedMHA forward pass: projections, attention, output projection (see forward.h).
#include "forward.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "workspace.h"

namespace maskedmha {

namespace {

// The Q, K and V projections (one, two or three GEMMs, see ForwardPlan) into wb: sets the
// q / k / v pointers and strides of the returned AttentionArgs.
AttentionArgs Project(const ForwardPlan& pl, Workspace& wb, const Parallel& par) {
  const Problem& p = pl.problem;
  const int64_t nb = p.B, L = p.L, S = p.S, E = p.E;
  const float* query = pl.query;
  const int64_t* off = pl.kv_offset;
  const int64_t* key_index = pl.key_index;
  const int64_t n_keys = off ? off[nb] : nb * S;  // keys to project (all, or the kept ones)
  // Rows of key / value to project: all of them, or (compaction) the kept ones, which the
  // GEMM reads in place through their row numbers while it packs them.
  const int64_t* kv_rows = nullptr;
  if (off) {
    wb.kv_rows.resize(static_cast<size_t>(n_keys));
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t r = off[b]; r < off[b + 1]; ++r) wb.kv_rows[r] = b * S + key_index[r];
    kv_rows = wb.kv_rows.data();
  }

  AttentionArgs a;
  if (pl.w_qkv) {
    float* qkv = wb.qkv.resize(static_cast<size_t>(nb * L * 3 * E));
    Gemm(query, E, nb * L, *pl.w_qkv, pl.in_bias, qkv, 3 * E, par);
    a.q = qkv;
    a.k = qkv + E;
    a.v = qkv + 2 * E;
    a.q_stride = a.k_stride = a.v_stride = 3 * E;
  } else {
    float* q = wb.q.resize(static_cast<size_t>(nb * L * E));
    Gemm(query, E, nb * L, *pl.w_q, pl.in_bias, q, E, par);
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

}  // namespace

void Forward(const ForwardPlan& pl, const Parallel& par) {
  const Problem& p = pl.problem;
  const int64_t nb = p.B;
  if (nb <= 0 || p.L == 0) return;
  const int64_t L = p.L, E = p.E, H = p.H;
  // The intermediates live in the calling thread's workspace (workspace.h).
  Workspace& wb = ThisThreadWorkspace();
  AttentionArgs a = Project(pl, wb, par);
  a.B = nb;
  a.L = L;
  a.S = p.S;
  a.H = H;
  a.D = p.D;
  a.scale = 1.0f / std::sqrt(static_cast<float>(p.D));
  a.kv_offset = pl.kv_offset;
  a.key_index = pl.key_index;
  a.bias_k = pl.bias_k;
  a.bias_v = pl.bias_v;
  a.zero_attn = pl.attrs.add_zero_attn;
  a.kpm = pl.kpm;
  a.attn_mask = pl.attn_mask;
  a.attn_mask_3d = p.attn_mask_3d;
  a.causal = pl.attrs.is_causal;
  a.nan_rows = pl.attrs.nan_rows;
  a.out = wb.attn.resize(static_cast<size_t>(nb * L * E));
  a.out_stride = E;
  if (pl.weights) {
    if (pl.attrs.average_weights) a.weights = wb.per_head.resize(static_cast<size_t>(nb * H * L * p.Sp));
    else a.weights = pl.weights;
  }
  Attention(a, par);
  if (pl.weights && pl.attrs.average_weights)
    AverageHeads(a.weights, nb, H, L, p.Sp, pl.weights, par);

  // Output projection straight into the output tensor.
  Gemm(a.out, E, nb * L, *pl.w_out, pl.out_bias, pl.out, E, par);
}

}  // namespace maskedmha
