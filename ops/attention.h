// Scaled dot-product attention over projected Q/K/V with masks, per (batch, head, query block),
// flash style: an online (running max) softmax over key blocks, so no (L, S') score matrix is
// stored unless the attention weights are requested.
#pragma once

#include <cstddef>
#include <cstdint>

#include "parallel.h"

namespace maskedmha {

struct AttentionArgs {
  int64_t B = 0, L = 0, S = 0, H = 0, D = 0;
  float scale = 1.0f;

  // Projected query: row b*L + i, head h at column h*D.
  const float* q = nullptr;
  size_t q_stride = 0;

  // Projected keys/values of the S given keys.  If kv_offset is null, batch b's keys are rows
  // b*S .. b*S+S-1 and key t is original position t.  Otherwise the keys of batch b are the
  // compacted rows kv_offset[b] .. kv_offset[b+1]-1 and key_index[row] is the original position
  // (masked-out keys were dropped before projection).
  const float* k = nullptr;
  size_t k_stride = 0;
  const float* v = nullptr;
  size_t v_stride = 0;
  const int64_t* kv_offset = nullptr;  // B + 1 entries
  const int64_t* key_index = nullptr;

  // Extra keys appended after the S given ones (never masked by the masks).
  const float* bias_k = nullptr;  // (E) or null
  const float* bias_v = nullptr;
  bool zero_attn = false;

  // Additive masks (bool masks already turned into 0 / -inf); null when absent.
  const float* kpm = nullptr;        // (B, S)
  const float* attn_mask = nullptr;  // (L, S) or (B*H, L, S)
  bool attn_mask_3d = false;
  bool causal = false;

  bool nan_rows = false;  // fully masked rows give NaN (else 0)

  // Outputs: attention result before the output projection, row b*L + i, head h at h*D.
  float* out = nullptr;
  size_t out_stride = 0;
  // Optional per-head probabilities (B, H, L, S'); requires the two-pass path.
  float* weights = nullptr;
};

void Attention(const AttentionArgs& args, const Parallel& par);

// avg[b, i, j] = mean over h of per_head[b, h, i, j].
void AverageHeads(const float* per_head, int64_t B, int64_t H, int64_t L, int64_t Sp, float* avg,
                  const Parallel& par);

}  // namespace maskedmha
