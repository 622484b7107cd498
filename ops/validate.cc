// Validation of MaskedMHA inputs (see validate.h).  Order of checks: presence and pairing (and
// what the variable-length mode excludes), then element types, then ranks and dimensions (E from
// query, S from key, H from the attribute; in the variable-length mode T from query and B and the
// sequences from sequence_offsets' values), then what skip_padded_queries needs, then sizes whose
// products would overflow.  Nothing is computed before all checks pass.
#include "validate.h"

#include <algorithm>
#include <limits>
#include <sstream>

namespace maskedmha {

namespace {

const char* NameOf(int i) { return kInputs[i].name; }

std::string Named(int i) {
  return std::string("input ") + std::to_string(i) + " '" + NameOf(i) + "'";
}

std::string Prefix(int i) { return "MaskedMHA: " + Named(i); }

[[noreturn]] void Fail(const std::string& msg) { throw ValidationError(msg); }

void RequirePresent(const std::vector<TensorDesc>& in, int i) {
  if (!in[i].present) Fail(Prefix(i) + " is required but missing");
}

// "a and b come together": the message of a pair given without its partner.
void CheckPair(const std::vector<TensorDesc>& in, int a, int b) {
  if (in[a].present == in[b].present) return;
  const int missing = in[a].present ? b : a;
  const int given = in[a].present ? a : b;
  Fail(Prefix(missing) + " is missing but " + Named(given) + " is given; " + NameOf(a) + " and " +
       NameOf(b) + " come together");
}

void CheckType(const TensorDesc& t, int i, bool allow_bool) {
  if (!t.is_tensor) Fail(Prefix(i) + " must be a tensor");
  if (i == kSequenceOffsets) {
    if (t.elem_type != kElemInt64)
      Fail(Prefix(i) + " has element type " + ElemTypeName(t.elem_type) + ", expected tensor(int64)");
    return;
  }
  if (t.elem_type == kElemFloat) return;
  if (allow_bool && t.elem_type == kElemBool) return;
  Fail(Prefix(i) + " has element type " + ElemTypeName(t.elem_type) + ", expected " +
       (allow_bool ? "tensor(bool) or tensor(float)" : "tensor(float)"));
}

// Shape must equal `expected`; `meaning` names the symbols, e.g. "(B, S)".
void CheckShape(const TensorDesc& t, int i, const std::vector<int64_t>& expected,
                const char* meaning, const std::string& why = "") {
  if (t.shape == expected) return;
  std::string msg = Prefix(i) + " has shape " + ShapeToString(t.shape) + ", expected " +
                    ShapeToString(expected) + " " + meaning;
  if (!why.empty()) msg += " (" + why + ")";
  Fail(msg);
}

void CheckRank(const TensorDesc& t, int i, size_t rank, const char* meaning) {
  if (t.shape.size() == rank) return;
  Fail(Prefix(i) + " has rank " + std::to_string(t.shape.size()) + " (shape " +
       ShapeToString(t.shape) + "), expected rank " + std::to_string(rank) + " " + meaning);
}

// Product of non-negative sizes; fails when it does not fit the addressable float count.
int64_t CheckedProduct(std::initializer_list<int64_t> dims, const std::string& what) {
  // Elements must be addressable as size_t bytes of float and as int64 element counts.
  const uint64_t limit = std::min<uint64_t>(std::numeric_limits<int64_t>::max(),
                                            std::numeric_limits<size_t>::max() / sizeof(float));
  uint64_t p = 1;
  for (int64_t d : dims) {
    if (d < 0) Fail("MaskedMHA: negative dimension in " + what);
    uint64_t r;
    if (__builtin_mul_overflow(p, static_cast<uint64_t>(d), &r) || r > limit)
      Fail("MaskedMHA: the size of " + what + " overflows (too many elements)");
    p = r;
  }
  return static_cast<int64_t>(p);
}

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  os << ']';
  return os.str();
}

std::string ElemTypeName(int t) {
  switch (t) {
    case 1: return "tensor(float)";
    case 2: return "tensor(uint8)";
    case 3: return "tensor(int8)";
    case 4: return "tensor(uint16)";
    case 5: return "tensor(int16)";
    case 6: return "tensor(int32)";
    case 7: return "tensor(int64)";
    case 8: return "tensor(string)";
    case 9: return "tensor(bool)";
    case 10: return "tensor(float16)";
    case 11: return "tensor(double)";
    case 12: return "tensor(uint32)";
    case 13: return "tensor(uint64)";
    case 16: return "tensor(bfloat16)";
    default: return "element type " + std::to_string(t);
  }
}

void ValidateAttributes(const Attributes& a) {
  if (a.num_heads <= 0)
    Fail(std::string("MaskedMHA: attribute '") + kNumHeads.name + "' is " +
         std::to_string(a.num_heads) +
         ", expected a positive int (the number of heads, dividing embed_dim)");
}

namespace {

// The tail of every message about what the variable-length mode excludes.
std::string NotWithVarlen() {
  return std::string(" is not supported with ") + NameOf(kSequenceOffsets) +
         " (variable-length mode)";
}

// Presence and pairing: required inputs given, 4/5 and 9/10 together; in the variable-length
// mode no mask, no attn_weights output and skip_padded_queries = 0.
void CheckPresence(const std::vector<TensorDesc>& in, const Attributes& attrs, Problem* out) {
  Problem& p = *out;
  for (int i = 0; i < kNumInputs; ++i)
    if (kInputs[i].required) RequirePresent(in, i);
  CheckPair(in, kKProjWeight, kVProjWeight);
  CheckPair(in, kBiasK, kBiasV);
  p.varlen = in[kSequenceOffsets].present;
  if (p.varlen) {
    for (int i : {kKeyPaddingMask, kAttnMask})
      if (in[i].present)
        Fail(Prefix(i) + NotWithVarlen() +
             ": each sequence attends over its own keys only; leave it absent");
    if (attrs.need_weights)
      Fail(std::string("MaskedMHA: output 1 '") + kOutputNames[kAttnWeights] + "'" +
           NotWithVarlen() + ": leave the node's second output absent");
    if (attrs.skip_padded_queries)
      Fail(std::string("MaskedMHA: attribute '") + kSkipPaddedQueries.name + "' = 1" +
           NotWithVarlen() + ": expected 0 (there are no padded rows to skip)");
  }
  p.packed = !in[kKProjWeight].present;
  p.has_in_bias = in[kInProjBias].present;
  p.has_out_bias = in[kOutProjBias].present;
  p.has_bias_kv = in[kBiasK].present;
}

// Element types: float for data, bool or float for the masks.
void CheckTypes(const std::vector<TensorDesc>& in, Problem* out) {
  Problem& p = *out;
  for (int i = 0; i < kNumInputs; ++i)
    if (in[i].present) CheckType(in[i], i, i == kKeyPaddingMask || i == kAttnMask);
  if (in[kKeyPaddingMask].present)
    p.kpm = in[kKeyPaddingMask].elem_type == kElemBool ? MaskKind::kBool : MaskKind::kFloat;
  if (in[kAttnMask].present)
    p.attn_mask = in[kAttnMask].elem_type == kElemBool ? MaskKind::kBool : MaskKind::kFloat;
}

// Ranks and dimensions of query, key, value and the projection weights (E from query, S from
// key, H from the attribute).
void CheckProjections(const std::vector<TensorDesc>& in, const Attributes& attrs, Problem* out) {
  Problem& p = *out;
  // The variable-length mode has (T, ...) token rows where the dense one has (B, L, ...) /
  // (B, S, ...); B, L and S then come from sequence_offsets (CheckSequenceOffsets).
  const bool vl = p.varlen;
  if (vl) {
    CheckRank(in[kQuery], kQuery, 2, "(T, E) in the variable-length mode");
    p.T = in[kQuery].shape[0];
    p.E = in[kQuery].shape[1];
  } else {
    CheckRank(in[kQuery], kQuery, 3, "(B, L, E)");
    p.B = in[kQuery].shape[0];
    p.L = in[kQuery].shape[1];
    p.E = in[kQuery].shape[2];
  }
  p.H = attrs.num_heads;
  if (p.E % p.H != 0)
    Fail(Prefix(kQuery) + ": embed_dim E=" + std::to_string(p.E) + " (shape " +
         ShapeToString(in[kQuery].shape) + ") is not divisible by " + kNumHeads.name + "=" +
         std::to_string(p.H));
  // 3E is used in the expected shapes below: it must not overflow.
  CheckedProduct({3, p.E}, "3E for " + Named(kQuery) + " of shape " +
                               ShapeToString(in[kQuery].shape));
  p.D = p.E / p.H;

  if (vl) {
    CheckRank(in[kKey], kKey, 2, "(T, kdim) in the variable-length mode");
    p.Kd = in[kKey].shape[1];
    CheckRank(in[kValue], kValue, 2, "(T, vdim) in the variable-length mode");
    p.Vd = in[kValue].shape[1];
  } else {
    CheckRank(in[kKey], kKey, 3, "(B, S, kdim)");
    p.S = in[kKey].shape[1];
    p.Kd = in[kKey].shape[2];
    CheckRank(in[kValue], kValue, 3, "(B, S, vdim)");
    p.Vd = in[kValue].shape[2];
  }
  // The expected shape of key / value with rows of width `width`.
  auto rows = [&](int64_t width) {
    return vl ? std::vector<int64_t>{p.T, width} : std::vector<int64_t>{p.B, p.S, width};
  };
  const char* kv_e = vl ? "(T, E)" : "(B, S, E)";
  // "k_proj_weight/v_proj_weight", named in the messages about packed or separate weights.
  const std::string kv_weights = std::string(NameOf(kKProjWeight)) + "/" + NameOf(kVProjWeight);
  if (p.packed) {
    const std::string needs = std::string("a packed ") + NameOf(kInProjWeight) + " needs ";
    const std::string otherwise = " = E; give " + kv_weights + " otherwise";
    CheckShape(in[kKey], kKey, rows(p.E), kv_e, needs + "kdim" + otherwise);
    CheckShape(in[kValue], kValue, rows(p.E), kv_e, needs + "vdim" + otherwise);
    CheckShape(in[kInProjWeight], kInProjWeight, {3 * p.E, p.E}, "(3E, E)",
               "packed weight, as " + kv_weights + " are absent");
  } else {
    CheckShape(in[kKey], kKey, rows(p.Kd), vl ? "(T, kdim)" : "(B, S, kdim)");
    CheckShape(in[kValue], kValue, rows(p.Vd), vl ? "(T, vdim)" : "(B, S, vdim)");
    CheckShape(in[kInProjWeight], kInProjWeight, {p.E, p.E}, "(E, E)",
               "q_proj_weight, as " + kv_weights + " are given");
    CheckShape(in[kKProjWeight], kKProjWeight, {p.E, p.Kd}, "(E, kdim)");
    CheckShape(in[kVProjWeight], kVProjWeight, {p.E, p.Vd}, "(E, vdim)");
  }
}

// The variable-length mode's sequence_offsets: shape (B + 1), values 0 = offsets[0] <= ... <=
// offsets[B] = T.  Sets B and L = S = the longest sequence.
void CheckSequenceOffsets(const std::vector<TensorDesc>& in, Problem* out) {
  Problem& p = *out;
  const TensorDesc& t = in[kSequenceOffsets];
  const std::string expected = " (B + 1 offsets of the B sequences into the T = " +
                               std::to_string(p.T) + " rows of " + Named(kQuery) + ")";
  if (t.shape.size() != 1 || t.shape[0] < 1)
    Fail(Prefix(kSequenceOffsets) + " has shape " + ShapeToString(t.shape) +
         ", expected [B+1] with B >= 0" + expected);
  p.B = t.shape[0] - 1;
  const int64_t* off = t.int64_data;
  if (off == nullptr) Fail(Prefix(kSequenceOffsets) + ": internal error: values not available");
  const std::string rule = ", expected 0 = offsets[0] <= offsets[1] <= ... <= offsets[B] = T";
  if (off[0] != 0)
    Fail(Prefix(kSequenceOffsets) + " starts with " + std::to_string(off[0]) + rule + expected);
  int64_t longest = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    if (off[b + 1] < off[b])
      Fail(Prefix(kSequenceOffsets) + " decreases: offsets[" + std::to_string(b + 1) + "] = " +
           std::to_string(off[b + 1]) + " < offsets[" + std::to_string(b) + "] = " +
           std::to_string(off[b]) + rule + expected);
    if (off[b + 1] > p.T) break;  // reported below, as the last offset exceeds T too
    longest = std::max(longest, off[b + 1] - off[b]);
  }
  for (int64_t b = 0; b <= p.B; ++b)
    if (off[b] > p.T || (b == p.B && off[b] != p.T))
      Fail(Prefix(kSequenceOffsets) + " has offsets[" + std::to_string(b) + "] = " +
           std::to_string(off[b]) + rule + expected);
  p.L = p.S = longest;
}

// Dimensions of the biases and masks, then the extra keys.
void CheckBiasesAndMasks(const std::vector<TensorDesc>& in, const Attributes& attrs,
                         Problem* out) {
  Problem& p = *out;
  if (p.has_in_bias) CheckShape(in[kInProjBias], kInProjBias, {3 * p.E}, "(3E)");
  CheckShape(in[kOutProjWeight], kOutProjWeight, {p.E, p.E}, "(E, E)");
  if (p.has_out_bias) CheckShape(in[kOutProjBias], kOutProjBias, {p.E}, "(E)");
  if (p.has_bias_kv) {
    CheckShape(in[kBiasK], kBiasK, {p.E}, "(E)");
    CheckShape(in[kBiasV], kBiasV, {p.E}, "(E)");
  }
  if (p.kpm != MaskKind::kNone)
    CheckShape(in[kKeyPaddingMask], kKeyPaddingMask, {p.B, p.S}, "(B, S)");
  if (p.attn_mask != MaskKind::kNone) {
    const TensorDesc& m = in[kAttnMask];
    if (m.shape.size() == 2) {
      CheckShape(m, kAttnMask, {p.L, p.S}, "(L, S)");
    } else if (m.shape.size() == 3) {
      p.attn_mask_3d = true;
      CheckedProduct({p.B, p.H}, "B*H for " + Named(kAttnMask) + " of shape " +
                                     ShapeToString(m.shape));
      CheckShape(m, kAttnMask, {p.B * p.H, p.L, p.S}, "(B*H, L, S)");
    } else {
      Fail(Prefix(kAttnMask) + " has rank " + std::to_string(m.shape.size()) + " (shape " +
           ShapeToString(m.shape) + "), expected rank 2 (L, S) or 3 (B*H, L, S)");
    }
  }

  p.X = (p.has_bias_kv ? 1 : 0) + (attrs.add_zero_attn ? 1 : 0);
  p.Sp = p.S + p.X;
}

// skip_padded_queries = 1 skips the query rows a bool key_padding_mask marks: it needs that mask
// and L == S (query row i is key position i).  (The variable-length mode refused it already.)
void CheckSkipPaddedQueries(const Attributes& attrs, const Problem& p) {
  if (!attrs.skip_padded_queries) return;
  const std::string prefix = std::string("MaskedMHA: attribute '") + kSkipPaddedQueries.name +
                             "' = 1 needs ";
  if (p.kpm != MaskKind::kBool)
    Fail(prefix + "a tensor(bool) " + Named(kKeyPaddingMask) + " (it marks the query rows to "
         "skip), but it is " + (p.kpm == MaskKind::kNone ? "absent" : "tensor(float)"));
  if (p.L != p.S)
    Fail(prefix + "L == S (query row i is key position i), but " + Named(kQuery) + " has L=" +
         std::to_string(p.L) + " and " + Named(kKey) + " has S=" + std::to_string(p.S));
}

// Sizes of everything the kernel allocates or indexes; the message names the inputs whose
// dimensions are multiplied.
void CheckSizes(const std::vector<TensorDesc>& in, const Problem& p) {
  if (p.varlen) {
    const std::string q_shape = " from " + Named(kQuery) + " " + ShapeToString(in[kQuery].shape);
    CheckedProduct({p.T, 3, p.E}, "the projected query/key/value (T*3E)" + q_shape);
    CheckedProduct({p.T, std::max(p.Kd, p.Vd)}, "key/value (T*max(kdim, vdim))" + q_shape);
    CheckedProduct({3, p.E, std::max(p.E, std::max(p.Kd, p.Vd))},
                   "the projection weights (3E*max(E, kdim, vdim))" + q_shape);
    return;
  }
  const std::string q_shape = " from " + Named(kQuery) + " " + ShapeToString(in[kQuery].shape);
  const std::string k_shape = " and " + Named(kKey) + " " + ShapeToString(in[kKey].shape);
  CheckedProduct({p.B, p.L, 3, p.E}, "the projected query (B*L*3E)" + q_shape);
  CheckedProduct({p.B, p.S, 2, p.E}, "the projected key/value (B*S*2E)" + q_shape + k_shape);
  CheckedProduct({p.B, p.S, std::max(p.Kd, p.Vd)}, "key/value (B*S*max(kdim, vdim))" + q_shape + k_shape);
  CheckedProduct({3, p.E, std::max(p.E, std::max(p.Kd, p.Vd))},
                 "the projection weights (3E*max(E, kdim, vdim))" + q_shape + k_shape);
  CheckedProduct({p.B, p.H, p.L, p.Sp}, "the attention weights (B*H*L*S')" + q_shape + k_shape);
}

}  // namespace

Problem Validate(const std::vector<TensorDesc>& in, const Attributes& attrs) {
  if (in.size() != static_cast<size_t>(kNumInputs))
    Fail("MaskedMHA: internal error: expected " + std::to_string(kNumInputs) +
         " input descriptors");
  ValidateAttributes(attrs);
  Problem p;
  CheckPresence(in, attrs, &p);
  CheckTypes(in, &p);
  CheckProjections(in, attrs, &p);
  if (p.varlen) CheckSequenceOffsets(in, &p);
  CheckBiasesAndMasks(in, attrs, &p);
  CheckSkipPaddedQueries(attrs, p);
  CheckSizes(in, p);
  return p;
}

}  // namespace maskedmha
