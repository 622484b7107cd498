// The contract of com.maskedmha::MaskedMHA version 1 (docs/MaskedMHA.md) for the C++ side,
// written once: the domain, op type and version, the inputs (index, name, required), the
// outputs, and the attributes with their defaults.  register.cc, masked_mha_op.cc,
// attributes.cc and validate.cc take every name from here; no other file in ops/ spells one.
// The Python side has the same facts in symbolic/schema.py; tests/test_schema_sync.py reads
// this file as text and checks it against that module and the tables of docs/MaskedMHA.md, so
// keep the one-entry-per-line forms below.
#pragma once

#include <cstdint>

namespace maskedmha {

inline constexpr const char* kDomain = "com.maskedmha";
inline constexpr const char* kOpType = "MaskedMHA";
inline constexpr int kOpsetVersion = 1;

// ---- inputs -----------------------------------------------------------------------------------

enum Input : int {
  kQuery = 0, kKey, kValue, kInProjWeight, kKProjWeight, kVProjWeight, kInProjBias,
  kOutProjWeight, kOutProjBias, kBiasK, kBiasV, kKeyPaddingMask, kAttnMask, kSequenceOffsets,
  kNumInputs
};

struct InputSpec {
  const char* name;
  bool required;  // else optional: omitted, or given as the empty name
};

inline constexpr InputSpec kInputs[kNumInputs] = {
    {"query", true},
    {"key", true},
    {"value", true},
    {"in_proj_weight", true},
    {"k_proj_weight", false},
    {"v_proj_weight", false},
    {"in_proj_bias", false},
    {"out_proj_weight", true},
    {"out_proj_bias", false},
    {"bias_k", false},
    {"bias_v", false},
    {"key_padding_mask", false},
    {"attn_mask", false},
    {"sequence_offsets", false},  // int64 (B + 1): the variable-length mode (docs/MaskedMHA.md)
};

// ---- outputs ----------------------------------------------------------------------------------

enum Output : int { kOutput = 0, kAttnWeights, kNumOutputs };

inline constexpr const char* kOutputNames[kNumOutputs] = {
    "output",
    "attn_weights",
};

// ---- attributes -------------------------------------------------------------------------------

// An int attribute; `required` ones have no default (dflt is unused).
struct IntAttribute {
  const char* name;
  int64_t dflt;
  bool required;
};
// A string attribute and the values it may take.
struct StringAttribute {
  const char* name;
  const char* dflt;
  const char* values[2];
};

inline constexpr IntAttribute kNumHeads = {"num_heads", 0, true};
inline constexpr IntAttribute kIsCausal = {"is_causal", 0, false};
inline constexpr IntAttribute kAddZeroAttn = {"add_zero_attn", 0, false};
inline constexpr StringAttribute kFullyMaskedRow = {"fully_masked_row", "zero", {"zero", "nan"}};
inline constexpr IntAttribute kAverageAttnWeights = {"average_attn_weights", 1, false};
inline constexpr IntAttribute kSkipPaddedQueries = {"skip_padded_queries", 0, false};

}  // namespace maskedmha
