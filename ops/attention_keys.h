// The keys and values of the attention core laid out for the score and P·V loops: per (batch,
// head) a transposed key matrix and contiguous value rows, zero-padded to whole chunks.
#pragma once

#include <cstdint>
#include <vector>

#include "aligned.h"
#include "attention.h"
#include "parallel.h"

namespace maskedmha {

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

// Transposes / copies the keys and values of head h of batch item b into kt (D x Tpad) and
// vp (Tpad x D), zero-padded to Tpad, with the ISA chosen at run time.
void PackHead(const AttentionArgs& a, const KeyLayout& kl, int64_t b, int64_t h, float* kt,
              float* vp);

// Fills the key counts and columns; with pack_all also kt / vp of every head (PackHead).
void PrepareKeys(const AttentionArgs& a, KeyLayout* kl, const Parallel& par, bool pack_all);

}  // namespace maskedmha
