// The node's attributes, read and checked once when ORT creates the kernel (session creation),
// so a bad attribute fails the session with one error naming it instead of being defaulted.
#pragma once

#include <onnxruntime_c_api.h>

#include "validate.h"

namespace maskedmha {

// Reads num_heads, is_causal, add_zero_attn, fully_masked_row, average_attn_weights and
// skip_padded_queries (absent optional attributes take their documented defaults) and whether
// the node has output 1.
// Throws ValidationError for the first attribute (in that order) that is missing when required,
// given with another type, or outside its values; the message names the attribute, what was
// given and what is expected.
Attributes ReadAttributes(const OrtApi& api, const OrtKernelInfo* info);

}  // namespace maskedmha
