// Scaled dot-product attention over projected Q/K/V with masks, per (batch, head, query block),
// flash style: an online (running max) softmax over key blocks, so no (L, S') score matrix is
// stored unless the attention weights are requested.
#pragma once

#include <cstddef>
#include <cstdint>

#include "parallel.h"

namespace maskedmha {

struct AttentionArgs {
  // L: query rows per item (with q_offset: at least the most any item has); S: key positions
  // per item (with kv_offset: at least the most any item has; the extra keys are columns S, S+1).
  int64_t B = 0, L = 0, S = 0, H = 0, D = 0;
  float scale = 1.0f;

  // Projected query: row b*L + i, head h at column h*D (query position i of item b), unless
  // q_offset is given: then item b's query rows are rows q_offset[b] .. q_offset[b+1]-1 (the
  // tokens of sequence b in the variable-length mode, or the kept queries under
  // skip_padded_queries) and the query position of row r is q_index[r] if q_index is given,
  // else r - q_offset[b].  Positions place a row under is_causal, in attn_mask and in weights;
  // rows of q and out correspond one to one.
  const float* q = nullptr;
  size_t q_stride = 0;
  const int64_t* q_offset = nullptr;  // B + 1 entries
  const int64_t* q_index = nullptr;

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

  // Outputs: attention result before the output projection, the rows of q, head h at h*D.
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
