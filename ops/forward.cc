// MaskedMHA forward pass: projections, attention, output projection (see forward.h).
#include "forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "aligned.h"
#include "attention.h"

namespace maskedmha {

namespace {

// Intermediates, per calling thread (kept between calls: see Buffer).
struct WorkBuffers {
  Buffer qkv, q, kv, k, v, key_rows, value_rows, attn, per_head;
};

WorkBuffers& LocalBuffers() {
  thread_local WorkBuffers w;
  return w;
}

}  // namespace

void Forward(const ForwardPlan& pl, const Parallel& par) {
  const int64_t nb = pl.B;
  if (nb <= 0 || pl.L == 0) return;
  const int64_t L = pl.L, S = pl.S, E = pl.E, H = pl.H;
  WorkBuffers& wb = LocalBuffers();
  const float* query = pl.query;
  const int64_t* off = pl.kv_offset;
  const int64_t* key_index = pl.key_index;
  const int64_t n_keys = off ? off[nb] : nb * S;  // keys to project (all, or the kept ones)
  // Rows of key / value to project: the originals, or a gathered copy of the kept rows.
  auto rows = [&](const float* src, int64_t width, Buffer* buf) -> const float* {
    if (!off) return src;
    float* dst = buf->resize(static_cast<size_t>(n_keys * width));
    if (width == 0 || n_keys == 0) return dst;  // nothing to copy (memcpy must not see null)
    ForChunks(par, static_cast<size_t>(n_keys),
              std::max<size_t>(1, (size_t{1} << 14) / static_cast<size_t>(width)),
              [&](size_t r0, size_t r1) {
                // Item of row r0: the last b with off[b] <= r0.
                int64_t b = std::upper_bound(off, off + nb + 1, static_cast<int64_t>(r0)) - off - 1;
                for (int64_t r = static_cast<int64_t>(r0); r < static_cast<int64_t>(r1); ++r) {
                  while (r >= off[b + 1]) ++b;
                  std::memcpy(dst + r * width, src + (b * S + key_index[r]) * width,
                              static_cast<size_t>(width) * sizeof(float));
                }
              });
    return dst;
  };

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
      const float* kin = rows(pl.key, pl.Kd, &wb.key_rows);
      float* kv = wb.kv.resize(static_cast<size_t>(n_keys * 2 * E));
      Gemm(kin, pl.Kd, n_keys, *pl.w_kv, b_k, kv, 2 * E, par);
      a.k = kv;
      a.v = kv + E;
      a.k_stride = a.v_stride = 2 * E;
    } else {
      const float* kin = rows(pl.key, pl.Kd, &wb.key_rows);
      const float* vin = (pl.key == pl.value && pl.Kd == pl.Vd)
                             ? kin
                             : rows(pl.value, pl.Vd, &wb.value_rows);
      float* k = wb.k.resize(static_cast<size_t>(n_keys * E));
      float* v = wb.v.resize(static_cast<size_t>(n_keys * E));
      Gemm(kin, pl.Kd, n_keys, *pl.w_k, b_k, k, E, par);
      Gemm(vin, pl.Vd, n_keys, *pl.w_v, b_v, v, E, par);
      a.k = k;
      a.v = v;
      a.k_stride = a.v_stride = E;
    }
  }

  a.B = nb;
  a.L = L;
  a.S = S;
  a.H = H;
  a.D = pl.D;
  a.scale = 1.0f / std::sqrt(static_cast<float>(pl.D));
  a.kv_offset = off;
  a.key_index = key_index;
  a.bias_k = pl.bias_k;
  a.bias_v = pl.bias_v;
  a.zero_attn = pl.zero_attn;
  a.kpm = pl.kpm;
  a.attn_mask = pl.attn_mask;
  a.attn_mask_3d = pl.attn_mask_3d;
  a.causal = pl.causal;
  a.nan_rows = pl.nan_rows;
  a.out = wb.attn.resize(static_cast<size_t>(nb * L * E));
  a.out_stride = E;
  if (pl.weights) {
    if (pl.average_weights) a.weights = wb.per_head.resize(static_cast<size_t>(nb * H * L * pl.Sp));
    else a.weights = pl.weights;
  }
  Attention(a, par);
  if (pl.weights && pl.average_weights)
    AverageHeads(a.weights, nb, H, L, pl.Sp, pl.weights, par);

  // Output projection straight into the output tensor.
  Gemm(a.out, E, nb * L, *pl.w_out, pl.out_bias, pl.out, E, par);
}

}  // namespace maskedmha
