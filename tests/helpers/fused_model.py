"""A small fused model built with onnx.helper alone (no torch, no exporter): one
com.maskedmha::MaskedMHA node with packed weights and a bool key padding mask, optionally with its
standard-op fallback attached.  Used where a test needs a fused file cheaply."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

E, H = 8, 2


def fused_model(with_fallback: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {
        "in_proj_weight": rng.standard_normal((3 * E, E)).astype(np.float32) * 0.3,
        "in_proj_bias": rng.standard_normal(3 * E).astype(np.float32) * 0.1,
        "out_proj_weight": rng.standard_normal((E, E)).astype(np.float32) * 0.3,
        "out_proj_bias": rng.standard_normal(E).astype(np.float32) * 0.1,
    }
    node = helper.make_node(
        "MaskedMHA",
        ["x", "x", "x", "in_proj_weight", "", "", "in_proj_bias", "out_proj_weight",
         "out_proj_bias", "", "", "key_padding_mask"],
        ["y"], domain="com.maskedmha", num_heads=H)
    graph = helper.make_graph(
        [node], "fused_mha",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "len", E]),
         helper.make_tensor_value_info("key_padding_mask", TensorProto.BOOL, ["batch", "len"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "len", E])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.maskedmha", 1)])
    model.ir_version = 9  # ORT 1.17 reads IR <= 9; attach_functions raises it to 10 (overloads)
    if with_fallback:
        from maskedmha.symbolic.attach import attach_functions
        attach_functions(model)
    return model


def feeds(batch: int = 2, length: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    kpm = np.zeros((batch, length), dtype=bool)
    kpm[0, length - 2:] = True  # padding on the first item, never a whole row
    return {"x": rng.standard_normal((batch, length, E)).astype(np.float32),
            "key_padding_mask": kpm}
