"""The contract of ``com.maskedmha::MaskedMHA`` version 1 (docs/MaskedMHA.md), written once: every
module that names the op, its inputs or its attributes takes them from here.

Imports nothing, so the runtime-only parts of the package (sessions, decompose, info, compare)
can use it without torch or onnx.  The C++ side has its own, ops/schema.h:
tests/test_schema_sync.py checks the two agree, tests/test_spec_tables.py that docs/MaskedMHA.md's
tables agree with this one."""

DOMAIN = "com.maskedmha"
OP_TYPE = "MaskedMHA"
OPSET_VERSION = 1

# The 14 inputs, in order; optional ones may be omitted or given as the empty name.
# sequence_offsets (int64, B + 1) selects the variable-length ("packed") mode: query, key and
# value are then (T, E) token rows of B sequences, sequence b being rows offsets[b]..offsets[b+1].
INPUT_NAMES = (
    "query", "key", "value", "in_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
    "out_proj_weight", "out_proj_bias", "bias_k", "bias_v", "key_padding_mask", "attn_mask",
    "sequence_offsets",
)
# The rest are optional (k/v_proj_weight come together, as do bias_k/bias_v).
REQUIRED_INPUTS = ("query", "key", "value", "in_proj_weight", "out_proj_weight")
OUTPUT_NAMES = ("output", "attn_weights")

# skip_padded_queries = 1 (self-attention with a bool key_padding_mask, L == S): the query rows
# that key_padding_mask marks as padding are not computed; their output rows are 0.
ATTRIBUTES = ("num_heads", "is_causal", "add_zero_attn", "fully_masked_row",
              "average_attn_weights", "skip_padded_queries")
# The documented defaults; num_heads has none (required).
ATTRIBUTE_DEFAULTS = {"is_causal": 0, "add_zero_attn": 0, "fully_masked_row": "zero",
                      "average_attn_weights": 1, "skip_padded_queries": 0}
