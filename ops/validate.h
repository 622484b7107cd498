// Input validation for MaskedMHA: every rule of the "Errors" section of docs/MaskedMHA.md.
//
// Kept free of ONNX Runtime types so it can be unit-tested and swapped independently of the
// kernel.  Validate() either returns the resolved problem sizes or throws ValidationError whose
// message names the input and says what was expected; the kernel turns it into an
// ORT_INVALID_ARGUMENT status, so the session stays usable.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "schema.h"

namespace maskedmha {

// ONNX TensorProto element types (the same numbers as ONNXTensorElementDataType).
constexpr int kElemFloat = 1;
constexpr int kElemInt64 = 7;
constexpr int kElemBool = 9;

struct TensorDesc {
  bool present = false;
  bool is_tensor = true;
  int elem_type = 0;
  std::vector<int64_t> shape;
  // The values of an int64 tensor (sequence_offsets), so Validate can check them; else null.
  const int64_t* int64_data = nullptr;
};

struct Attributes {
  int64_t num_heads = 0;
  bool is_causal = false;
  bool add_zero_attn = false;
  bool nan_rows = false;      // fully_masked_row == "nan"
  bool average_weights = true;
  bool need_weights = false;  // the node has output 1
  bool skip_padded_queries = false;
};

enum class MaskKind { kNone, kBool, kFloat };

// Everything the computation needs to know about the shapes, resolved once.  In the
// variable-length mode (sequence_offsets given) B is the number of sequences, T the number of
// token rows of query / key / value, and L = S the longest sequence.
struct Problem {
  int64_t B = 0, L = 0, S = 0, E = 0, H = 0, D = 0, Kd = 0, Vd = 0;
  bool varlen = false;
  int64_t T = 0;
  int64_t X = 0;   // extra keys: add_bias_kv + add_zero_attn
  int64_t Sp = 0;  // S' = S + X
  bool packed = true;  // (3E, E) in_proj_weight; otherwise separate q/k/v weights
  bool has_in_bias = false, has_out_bias = false, has_bias_kv = false;
  MaskKind kpm = MaskKind::kNone;
  MaskKind attn_mask = MaskKind::kNone;
  bool attn_mask_3d = false;
};

class ValidationError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Checks attribute values alone (done when the kernel is created).
void ValidateAttributes(const Attributes& attrs);

// Checks all kNumInputs inputs against each other; `inputs` has kNumInputs entries.
Problem Validate(const std::vector<TensorDesc>& inputs, const Attributes& attrs);

std::string ShapeToString(const std::vector<int64_t>& shape);
std::string ElemTypeName(int elem_type);

}  // namespace maskedmha
