// Every scratch buffer of the kernel, in one per-thread Workspace (docs/memory.md describes it).
//
// Each thread has its own Workspace (ThisThreadWorkspace), kept until the thread exits.  Buffers
// are reused from call to call and only grow, so a call does not allocate (and fault in) fresh
// pages; concurrent calls come from different threads and so use different buffers.
//
// Which thread's Workspace a buffer is taken from matters, and is written next to each member:
//  * "calling thread": the thread that leads the call and runs its body: the one that called
//    Compute, or, when that thread is late (a busy machine), the pool worker that leads in its
//    place (team_ort.cc).  The phase
//    takes ThisThreadWorkspace() *before* starting parallel tasks; tasks that read the buffer
//    (they run on pool threads too) use that reference, captured.  Calling ThisThreadWorkspace()
//    inside a task would give the pool thread's own, empty Workspace instead.
//  * "each task's thread": per-task scratch.  The task calls ThisThreadWorkspace() itself, on
//    whichever thread runs it (a pool worker or the calling thread), so tasks running at the same
//    time never share these.
// A thread uses only the members of its role(s): a pool worker that never leads a call leaves
// the calling-thread members empty; one that has led a call keeps them (they only grow), so on
// a busy machine these buffers can exist once per pool thread as well.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "aligned.h"
#include "attention_keys.h"

namespace maskedmha {

// A bool array that only grows (std::vector<bool> is not an array of bool).
class BoolBuffer {
 public:
  bool* resize(size_t n) {
    if (n > cap_) {
      data_.reset(new bool[n]);
      cap_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<bool[]> data_;
  size_t cap_ = 0;
};

struct Workspace {
  // ---- calling thread ----

  // kernel.cc: masks and key compaction.
  Buffer kpm;                      // a bool key_padding_mask made additive (B*S), not compacted
  Buffer am;                       // a bool attn_mask made additive (its size)
  BoolBuffer kpm_from_float;       // a float key_padding_mask of only 0 / -inf as bool (B*S)
  std::vector<int64_t> kv_offset;  // compaction: B + 1 offsets into key_index
  std::vector<int64_t> key_index;  // compaction: original position of each kept key

  // forward.cc: projections and the attention result.
  Buffer qkv;                     // packed Q,K,V of self-attention (B*L x 3E)
  Buffer q, kv, k, v;             // projections otherwise (B*L x E, N x 2E, N x E, N x E)
  Buffer attn;                    // concatenated heads before the output projection (rows x E)
  Buffer kept_out;                // skip_padded_queries: the kept rows' output projection (N x E)
  Buffer per_head;                // per-head probabilities before averaging (B*H*L*S')
  std::vector<int64_t> kv_rows;   // compaction: source row of each kept key (N)

  // gemm.cc: the A operand in micro-panels and the padded bias, of the current Gemm call (the
  // packing tasks write into the calling thread's buffer through a captured pointer).
  AlignedVector<float> gemm_apack;  // ~M x K
  AlignedVector<float> gemm_bias;   // N rounded up to whole panels

  // attention.cc: the key layout (and, with few (batch, head) pairs, every head packed) and the
  // order in which batch items are handed out.
  KeyLayout keys;
  std::vector<int64_t> batch_order;  // B

  // ---- each task's thread ----

  // attention.cc: one task's query block, scores, running max / sums and accumulators.
  struct AttentionTask {
    AlignedVector<float> qs, acc, s, m, l, lv;
  } task;
  // attention.cc: one (batch, head)'s transposed keys and packed values, when a task packs its
  // own head (D x Tpad each).
  AlignedVector<float> head_kt, head_vp;
  // attention_keys.cc (PackHead): 16 key rows being transposed (16 x D).
  std::vector<float> key_tile;
};

// This thread's Workspace (see above for which thread must call it for which member).
inline Workspace& ThisThreadWorkspace() {
  thread_local Workspace ws;
  return ws;
}

}  // namespace maskedmha
