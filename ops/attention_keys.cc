// Key layout of the attention core (see attention_keys.h).
#include "attention_keys.h"

#include <algorithm>
#include <cstring>

#include "attention_blocks.h"
#include "cpu.h"
#include "simd.h"
#include "workspace.h"

namespace maskedmha {

namespace {

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
  // The thread running this task's own tile (workspace.h).
  std::vector<float>& tile_buf = ThisThreadWorkspace().key_tile;
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
}  // namespace

// AVX2 has no variant of its own.
void PackHead(const AttentionArgs& a, const KeyLayout& kl, int64_t b, int64_t h, float* kt,
              float* vp) {
  static const PackFn pack = MASKEDMHA_PICK_ISA(&PackHeadGeneric, &PackHeadGeneric, &PackHeadAvx512);
  pack(a, kl, b, h, kt, vp);
}

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

}  // namespace maskedmha
