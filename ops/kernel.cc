// The MaskedMHA kernel's call (MaskedMHAKernel, masked_mha_op.h): reads and validates the
// inputs, prepares masks, key compaction and packed weights as named steps, then runs forward.h:
// projections (gemm) -> attention -> output projection (gemm).
//
// Data flow and why:
//  * Q/K/V projections are large GEMMs over all B*L (or B*S) rows.  For self-attention with a
//    packed weight (query, key and value are the same tensor) Q, K and V come from one GEMM with
//    the whole (3E, E) weight.
//  * With a bool key_padding_mask, keys it hides are dropped before the K/V projections
//    ("compaction"): their softmax weight is exactly 0, so cost follows the number of valid
//    tokens.  This is skipped when a float attn_mask holds NaN or +inf, which could turn a hidden
//    key into NaN (IEEE: -inf + NaN) and must then be computed like PyTorch does.
//  * A float key_padding_mask whose values are all 0 or -inf is that bool mask (canon(), spec)
//    and takes the bool route, compaction included; nn.TransformerEncoder passes such masks.
//  * Bool masks become additive 0 / -inf float masks once; float masks are used in place.
//  * Variable-length mode (sequence_offsets): query / key / value are T token rows of B
//    sequences; the projections run over the T rows (one GEMM for self-attention), attention per
//    (sequence, head, query block) over the sequence's own keys, the output projection over the
//    T rows: cost follows T, nothing is padded to the longest sequence.
//  * skip_padded_queries: the query rows the bool key_padding_mask marks (L == S) are the keys
//    compaction drops, so with compaction only the kept rows are projected (Q, K and V in one
//    GEMM for self-attention), attended and projected out; the others are zeros.  Without
//    compaction (NaN / Inf, above) every row is computed and the marked ones are zeroed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "aligned.h"
#include "forward.h"
#include "masked_mha_op.h"
#include "simd.h"
#include "status.h"
#include "team_ort.h"
#include "workspace.h"

namespace maskedmha {

// The node's inputs as ORT gives them: what Validate needs to know and the values.
struct KernelInputs {
  std::vector<TensorDesc> desc = std::vector<TensorDesc>(kNumInputs);
  std::vector<Ort::ConstValue> val = std::vector<Ort::ConstValue>(kNumInputs, Ort::ConstValue(nullptr));

  const float* Float(int i) const {
    return desc[i].present ? val[i].GetTensorData<float>() : nullptr;
  }
  const bool* Bool(int i) const { return desc[i].present ? val[i].GetTensorData<bool>() : nullptr; }
};

namespace {

KernelInputs ReadInputs(Ort::KernelContext& ctx) {
  KernelInputs in;
  const size_t n_in = ctx.GetInputCount();
  for (int i = 0; i < kNumInputs; ++i) {
    if (static_cast<size_t>(i) >= n_in) continue;
    in.val[i] = ctx.GetInput(i);
    if (!in.val[i]) continue;  // an absent optional input
    TensorDesc& d = in.desc[i];
    d.present = true;
    d.is_tensor = in.val[i].IsTensor();
    if (!d.is_tensor) continue;
    auto info = in.val[i].GetTensorTypeAndShapeInfo();
    d.elem_type = static_cast<int>(info.GetElementType());
    d.shape = info.GetShape();
    if (d.elem_type == kElemInt64) d.int64_data = in.val[i].GetTensorData<int64_t>();
  }
  return in;
}

// The masks as the forward pass takes them.
struct Masks {
  const bool* kpm_bool = nullptr;    // a bool key_padding_mask as given (compaction reads it)
  const float* kpm = nullptr;        // additive key_padding_mask; null when absent or compacted
  const float* attn_mask = nullptr;  // additive attn_mask
  size_t attn_mask_n = 0;            // its element count
};

// True when a float mask could turn a hidden key into NaN (so compaction is not exact).
bool HasNanOrPosInf(const float* m, size_t n, const Parallel& par) {
  std::atomic<bool> found{false};
  ForChunks(par, n, size_t{1} << 15, [&](size_t i0, size_t i1) {
    bool f = false;
    for (size_t i = i0; i < i1; ++i)
      f |= std::isnan(m[i]) || m[i] == std::numeric_limits<float>::infinity();
    if (f) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

void BoolToAdditive(const bool* m, size_t n, float* out, const Parallel& par) {
  const float ninf = -std::numeric_limits<float>::infinity();
  ForChunks(par, n, size_t{1} << 15, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) out[i] = m[i] ? ninf : 0.0f;
  });
}

// If every value of the float key_padding_mask m (n values) is 0 or -inf, writes it as a bool
// mask (true where -inf) into out and returns true.  Such a mask is canon() of that bool mask
// (docs/MaskedMHA.md), so the scores, and fully masked rows (defined on the -inf scores whatever
// the mask type), are the same: the bool route (compaction) applies to it.  nn.TransformerEncoder
// layers hand their attention exactly such a mask.  -0.0 counts as 0 (x + -0.0 == x).
bool FloatMaskAsBool(const float* m, size_t n, bool* out, const Parallel& par) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::atomic<bool> ok{true};
  ForChunks(par, n, size_t{1} << 15, [&](size_t i0, size_t i1) {
    bool f = true;
    for (size_t i = i0; i < i1; ++i) {
      f &= m[i] == 0.0f || m[i] == ninf;
      out[i] = m[i] == ninf;
    }
    if (!f) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

// Step 1: a bool attn_mask turned additive (into sc.am, the calling thread's workspace); a
// float one used in place.
Masks PrepareMasks(const Problem& p, const KernelInputs& in, Workspace& sc, const Parallel& par) {
  Masks m;
  if (p.kpm == MaskKind::kBool) {
    m.kpm_bool = in.Bool(kKeyPaddingMask);
  } else if (p.kpm == MaskKind::kFloat && p.B * p.S > 0) {
    const size_t n = static_cast<size_t>(p.B * p.S);
    bool* buf = sc.kpm_from_float.resize(n);
    if (FloatMaskAsBool(in.Float(kKeyPaddingMask), n, buf, par)) m.kpm_bool = buf;
  }
  m.attn_mask_n = static_cast<size_t>((p.attn_mask_3d ? p.B * p.H : 1) * p.L * p.S);
  if (p.attn_mask == MaskKind::kBool) {
    float* buf = sc.am.resize(m.attn_mask_n);
    BoolToAdditive(in.Bool(kAttnMask), m.attn_mask_n, buf, par);
    m.attn_mask = buf;
  } else if (p.attn_mask == MaskKind::kFloat) {
    m.attn_mask = in.Float(kAttnMask);
  }
  return m;
}

// True when every key and value row the bool key_padding_mask hides is finite: compaction is
// not exact either when a hidden row holds NaN/Inf (PyTorch then gets NaN: score NaN + -inf,
// or weight 0 * NaN).
bool HiddenRowsFinite(const Problem& p, const bool* kpm_bool, const float* key, const float* value,
                      const Parallel& par) {
  std::atomic<bool> ok{true};
  const size_t rows = static_cast<size_t>(p.B * p.S);
  const size_t width = static_cast<size_t>(p.Kd + p.Vd);
  ForChunks(par, rows, std::max<size_t>(1, (size_t{1} << 15) / std::max<size_t>(width, 1)),
            [&](size_t r0, size_t r1) {
              bool f = true;
              for (size_t r = r0; r < r1 && f; ++r) {
                if (!kpm_bool[r]) continue;
                const float* kr = key + r * p.Kd;
                const float* vr = value + r * p.Vd;
                f = simd::AllFinite<simd::V4>(kr, p.Kd) && simd::AllFinite<simd::V4>(vr, p.Vd);
              }
              if (!f) ok.store(false, std::memory_order_relaxed);
            });
  return ok.load();
}

// Step 2: whether the keys a bool key_padding_mask (or a float one of only 0 / -inf, Step 1)
// hides are dropped (compaction); if so, the kept keys of each item in sc.kv_offset /
// sc.key_index, otherwise the key_padding_mask made additive in m->kpm (a float one in place).  Returns whether the keys are compacted.
bool PlanCompaction(const Problem& p, const KernelInputs& in, Masks* m, Workspace& sc,
                    const Parallel& par) {
  const int64_t B = p.B, S = p.S;
  const bool compact =
      m->kpm_bool && S > 0 &&
      !(p.attn_mask == MaskKind::kFloat && HasNanOrPosInf(m->attn_mask, m->attn_mask_n, par)) &&
      HiddenRowsFinite(p, m->kpm_bool, in.Float(kKey), in.Float(kValue), par);
  if (m->kpm_bool && !compact && p.kpm == MaskKind::kBool) {
    float* buf = sc.kpm.resize(static_cast<size_t>(B * S));
    BoolToAdditive(m->kpm_bool, static_cast<size_t>(B * S), buf, par);
    m->kpm = buf;
  } else if (p.kpm == MaskKind::kFloat && !compact) {
    m->kpm = in.Float(kKeyPaddingMask);
  }
  if (!compact) return false;
  sc.kv_offset.resize(B + 1);
  sc.key_index.clear();
  sc.key_index.reserve(static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b) {
    sc.kv_offset[b] = static_cast<int64_t>(sc.key_index.size());
    for (int64_t j = 0; j < S; ++j)
      if (!m->kpm_bool[b * S + j]) sc.key_index.push_back(j);
  }
  sc.kv_offset[B] = static_cast<int64_t>(sc.key_index.size());
  return true;
}

// A call's size for TeamPolicy, which compares calls of one node: elements of query, key and
// value times the last dimension of query (the projections' arithmetic, up to a factor).  0 when
// an input is missing or not a tensor: Run then refuses the call anyway.
double WorkEstimate(const Ort::KernelContext& ctx) {
  if (ctx.GetInputCount() < 3) return 0.0;
  double elements = 0.0, width = 0.0;
  for (int i : {kQuery, kKey, kValue}) {
    const Ort::ConstValue v = ctx.GetInput(i);
    if (!v || !v.IsTensor()) return 0.0;
    const std::vector<int64_t> shape = v.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) return 0.0;
    double n = 1.0;
    for (int64_t d : shape) n *= static_cast<double>(d);
    elements += n;
    if (i == kQuery) width = static_cast<double>(shape.back());
  }
  return elements * width;
}

}  // namespace

OrtStatusPtr MaskedMHAKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    RunTeamOrSolo(ctx, team_policy_, [&] { return WorkEstimate(ctx); },
                  [&](const Parallel& par) { Run(ctx, par); });
    return nullptr;
  } catch (...) {
    return CurrentStatus(Ort::GetApi());
  }
}

const PackedWeight& MaskedMHAKernel::Packed(int input, const float* w, size_t row0, size_t n,
                                            size_t k, PackedWeight* scratch) {
  if (w != nullptr && w == constant_[input]) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto key = std::make_tuple(input, row0, n, k);
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      PackedWeight pw;
      PackWeight(w, row0, n, k, &pw);
      it = cache_.emplace(key, std::move(pw)).first;
    }
    return it->second;  // map nodes are stable and never erased
  }
  PackWeight(w, row0, n, k, scratch);
  return *scratch;
}

// Step 3: the projection weights packed for the GEMM (once per session when they are constant
// initializers), as the one, two or three projections forward.h describes.
void MaskedMHAKernel::SelectWeights(const Problem& p, const KernelInputs& in, bool compact,
                                    ForwardPlan* plan, WeightScratch* ws) {
  const int64_t E = p.E;
  const float* w_in = in.Float(kInProjWeight);
  const bool same_kv = plan->key == plan->value && p.Kd == p.Vd;
  // One GEMM gives Q, K and V when the query rows projected are the key rows: every row of
  // L == S (no compaction), every token row (variable-length mode), or the kept rows of both
  // (compaction with skip_queries).
  const bool same_rows = p.varlen || (compact ? plan->skip_queries : p.L == p.S);
  const bool self_attn = p.packed && same_kv && plan->query == plan->key && same_rows;
  if (self_attn) {
    plan->w_qkv = &Packed(kInProjWeight, w_in, 0, 3 * E, E, &ws->qkv);
  } else {
    plan->w_q = &Packed(kInProjWeight, w_in, 0, E, E, &ws->q);
    if (p.packed && same_kv) {
      plan->w_kv = &Packed(kInProjWeight, w_in, E, 2 * E, E, &ws->kv);  // rows [E, 3E): Wk, Wv
    } else if (p.packed) {
      plan->w_k = &Packed(kInProjWeight, w_in, E, E, p.Kd, &ws->k);
      plan->w_v = &Packed(kInProjWeight, w_in, 2 * E, E, p.Vd, &ws->v);
    } else {
      plan->w_k = &Packed(kKProjWeight, in.Float(kKProjWeight), 0, E, p.Kd, &ws->k);
      plan->w_v = &Packed(kVProjWeight, in.Float(kVProjWeight), 0, E, p.Vd, &ws->v);
    }
  }
  plan->w_out = &Packed(kOutProjWeight, in.Float(kOutProjWeight), 0, E, E, &ws->out);
}

void MaskedMHAKernel::Run(Ort::KernelContext& ctx, const Parallel& par) {
  const KernelInputs in = ReadInputs(ctx);
  ForwardPlan plan;
  plan.problem = Validate(in.desc, attrs_);
  plan.attrs = attrs_;
  const Problem& p = plan.problem;
  const std::vector<int64_t> out_shape =
      p.varlen ? std::vector<int64_t>{p.T, p.E} : std::vector<int64_t>{p.B, p.L, p.E};
  plan.out = ctx.GetOutput(kOutput, out_shape).GetTensorMutableData<float>();
  if (attrs_.need_weights) {
    const std::vector<int64_t> shape = attrs_.average_weights
                                           ? std::vector<int64_t>{p.B, p.L, p.Sp}
                                           : std::vector<int64_t>{p.B, p.H, p.L, p.Sp};
    plan.weights = ctx.GetOutput(kAttnWeights, shape).GetTensorMutableData<float>();
  }
  if (p.B == 0 || p.L == 0) return;  // nothing to attend from: empty outputs

  // The calling thread's workspace (workspace.h): its mask and compaction buffers.
  Workspace& sc = ThisThreadWorkspace();
  Masks masks = PrepareMasks(p, in, sc, par);
  const bool compact = PlanCompaction(p, in, &masks, sc, par);

  plan.query = in.Float(kQuery);
  plan.key = in.Float(kKey);
  plan.value = in.Float(kValue);
  plan.in_bias = in.Float(kInProjBias);
  plan.out_bias = in.Float(kOutProjBias);
  plan.bias_k = in.Float(kBiasK);
  plan.bias_v = in.Float(kBiasV);
  if (p.varlen) plan.seq_offset = in.desc[kSequenceOffsets].int64_data;
  if (attrs_.skip_padded_queries) {
    // The padded query rows are zeros; they are not computed at all when the keys are
    // compacted (the kept queries are then the kept keys), else computed and zeroed.
    plan.padded_queries = masks.kpm_bool;
    plan.skip_queries = compact;
  }
  WeightScratch ws;  // used only for weights that are not constant initializers
  SelectWeights(p, in, compact, &plan, &ws);
  if (compact) {
    plan.kv_offset = sc.kv_offset.data();
    plan.key_index = sc.key_index.data();
  }
  plan.kpm = masks.kpm;  // null when compacted: the kept keys are all unmasked by it
  plan.attn_mask = masks.attn_mask;
  Forward(plan, par);
}

}  // namespace maskedmha
