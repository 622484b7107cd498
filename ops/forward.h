// The MaskedMHA forward pass: Q/K/V projections, attention, output projection, each phase spread
// over the pool.  The kernel (kernel.cc) resolves inputs, masks, key compaction and packed
// weights into a ForwardPlan; this part knows nothing of ONNX Runtime.
//
// Tried and dropped: one task per batch item (projections, attention and output projection of
// an item on one core, its rows staying in L2).  At 2 threads it was within +-2 % at 8x128 E768,
// +5 % at 8x256 E512, but 4-11 % slower with 50 % padding or L = 32, because every core then
// streams all the weights once per item instead of about once per call.
#pragma once

#include <cstdint>

#include "gemm.h"
#include "parallel.h"
#include "validate.h"

namespace maskedmha {

struct ForwardPlan {
  Problem problem;    // the sizes, as Validate resolved them (attn_mask_3d included)
  Attributes attrs;   // is_causal, add_zero_attn, nan_rows, average_weights

  const float* query = nullptr;  // (B, L, E); (T, E) in the variable-length mode
  const float* key = nullptr;    // (B, S, Kd); (T, Kd)
  const float* value = nullptr;  // (B, S, Vd); (T, Vd)
  const float* in_bias = nullptr;   // (3E) or null
  const float* out_bias = nullptr;  // (E) or null
  const float* bias_k = nullptr;    // (E) or null
  const float* bias_v = nullptr;

  // Packed weights (gemm.h); exactly one of three sets is given:
  //  * w_qkv: self-attention (query, key and value the same tensor, the same rows projected:
  //    all L == S rows, all T token rows, or the kept rows under skip_queries), one (3E)
  //    projection of the query rows gives Q, K and V;
  //  * w_q and w_kv: key is value, one (2E) projection gives K and V;
  //  * w_q, w_k and w_v.
  const PackedWeight* w_qkv = nullptr;
  const PackedWeight* w_q = nullptr;
  const PackedWeight* w_kv = nullptr;
  const PackedWeight* w_k = nullptr;
  const PackedWeight* w_v = nullptr;
  const PackedWeight* w_out = nullptr;

  // Key compaction: null, or the kept keys of item b are key_index[kv_offset[b] .. kv_offset[b+1])
  // (original positions); only they are projected.
  const int64_t* kv_offset = nullptr;
  const int64_t* key_index = nullptr;

  // Variable-length mode: null, or the B + 1 sequence offsets (sequence_offsets): sequence b is
  // rows seq_offset[b] .. seq_offset[b+1]-1 of query, key, value and out, and attends over its
  // own keys only.  Every phase then runs over the T token rows (no padding to the longest).
  const int64_t* seq_offset = nullptr;

  // skip_padded_queries: null, or the bool key_padding_mask (B, L == S); rows (b, i) it marks
  // get zeros in out (and weights).  skip_queries: those rows are not computed at all -- the
  // query rows projected, attended and projected out are the kept keys' (kv_offset /
  // key_index, which must be given); without it (no compaction) every row is computed and the
  // marked ones are zeroed afterwards.
  const bool* padded_queries = nullptr;
  bool skip_queries = false;

  // Additive masks (bool masks already converted), null when absent or not needed.
  const float* kpm = nullptr;        // (B, S)
  const float* attn_mask = nullptr;  // (L, S) or (B*H, L, S)

  float* out = nullptr;          // (B, L, E); (T, E) in the variable-length mode
  float* weights = nullptr;      // null, or (B, L, Sp) averaged / (B, H, L, Sp) per head
};

// Computes plan.out (and plan.weights).
void Forward(const ForwardPlan& plan, const Parallel& par);

}  // namespace maskedmha
