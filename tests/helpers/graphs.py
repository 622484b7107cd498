"""Hand-built one-node ``com.maskedmha::MaskedMHA`` models (onnx.helper, no exporter) over numpy
feeds keyed by the op's input names, and sessions with our library registered to run them."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import maskedmha
from maskedmha.symbolic.schema import DOMAIN, INPUT_NAMES, OP_TYPE, OPSET_VERSION, OUTPUT_NAMES

ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.bool_): TensorProto.BOOL,
             np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
             np.dtype(np.uint8): TensorProto.UINT8}


def _model_over(feeds: dict, value_info, num_heads: int, need_weights: bool, **attrs) -> bytes:
    """One node whose inputs are the given feeds (absent = omitted), each a graph input described
    by ``value_info(name, array)``."""
    node_inputs, graph_inputs = [], []
    for name in INPUT_NAMES:
        arr = feeds.get(name)
        if arr is None:
            node_inputs.append("")
            continue
        node_inputs.append(name)
        graph_inputs.append(value_info(name, arr))
    return single_node_model(node_inputs, graph_inputs, num_heads, need_weights, **attrs)


def make_model(feeds: dict, num_heads: int, need_weights: bool = False, ranks: dict | None = None,
               **attrs) -> bytes:
    """One MaskedMHA node; every given input is a graph input with symbolic dims (so one session
    accepts any shape).  `feeds` maps spec input names to arrays (absent = omitted)."""
    def value_info(name, arr):
        rank = (ranks or {}).get(name, arr.ndim)
        dims = [f"{name}_d{i}" for i in range(rank)]
        return helper.make_tensor_value_info(name, ONNX_TYPE[arr.dtype], dims)
    return _model_over(feeds, value_info, num_heads, need_weights, **attrs)


def loose_model(feeds: dict, num_heads: int, need_weights=False, **attrs) -> bytes:
    """One MaskedMHA node; every given input is a graph input with no shape information and the
    element type of its array (or OrtValue)."""
    def value_info(name, arr):
        dtype = arr.data_type() if isinstance(arr, ort.OrtValue) else arr.dtype
        elem = {"tensor(float)": TensorProto.FLOAT}.get(dtype) if isinstance(dtype, str) \
            else ONNX_TYPE[np.dtype(dtype)]
        return helper.make_tensor_value_info(name, elem, None)
    return _model_over(feeds, value_info, num_heads, need_weights, **attrs)


def single_node_model(node_inputs: list[str], graph_inputs: list, num_heads: int,
                      need_weights: bool = False, **attrs) -> bytes:
    """The serialized one-MaskedMHA-node model over the given graph inputs ("" = omitted)."""
    node_inputs = list(node_inputs)
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    outputs = list(OUTPUT_NAMES[:2 if need_weights else 1])
    node = helper.make_node(OP_TYPE, node_inputs, outputs, domain=DOMAIN,
                            num_heads=num_heads, **attrs)
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph([node], "masked_mha", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    # IR 9: the newest ONNX Runtime 1.17 reads (one node needs nothing later), so the same
    # graphs test every ORT release the library supports.
    model.ir_version = 9
    return model.SerializeToString()


def session(model: bytes, threads: int = 2, quiet: bool = False) -> ort.InferenceSession:
    """A session with our library registered; ``quiet`` silences ORT's log (tests whose expected
    errors would flood it)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if quiet:
        so.log_severity_level = 4
    return maskedmha.InferenceSession(model, so)


def present(feeds: dict) -> dict:
    """The feeds that are given (None = an omitted optional input)."""
    return {k: v for k, v in feeds.items() if v is not None}


def run(feeds: dict, num_heads: int, need_weights=False, **attrs):
    sess = session(make_model(feeds, num_heads, need_weights, **attrs))
    return sess.run(None, present(feeds))


def stock_session(model) -> ort.InferenceSession:
    """``model`` (a ModelProto) on stock ONNX Runtime: no library, CPU provider."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


WEIGHT_INPUTS = ("in_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                 "out_proj_weight", "out_proj_bias", "bias_k", "bias_v")


def self_attention_model(feeds: dict, num_heads: int, need_weights: bool = False,
                         **attrs) -> bytes:
    """One MaskedMHA node whose query, key and value are ONE graph input "x" (the kernel's
    self-attention path: one GEMM for Q, K and V) and whose weights are constant initializers
    (packed once per session); the other given inputs (masks, sequence_offsets) are graph inputs
    of their own names.  Feed it with ``self_attention_feeds``."""
    x = feeds["query"]
    node_inputs, graph_inputs, inits = [], [], []
    graph_inputs.append(helper.make_tensor_value_info(
        "x", ONNX_TYPE[x.dtype], [f"x_d{i}" for i in range(x.ndim - 1)] + [x.shape[-1]]))
    for name in INPUT_NAMES:
        arr = feeds.get(name)
        if name in ("query", "key", "value"):
            node_inputs.append("x")
        elif arr is None:
            node_inputs.append("")
        elif name in WEIGHT_INPUTS:
            node_inputs.append(name)
            inits.append(numpy_helper.from_array(arr, name=name))
        else:
            node_inputs.append(name)
            graph_inputs.append(helper.make_tensor_value_info(
                name, ONNX_TYPE[arr.dtype], [f"{name}_d{i}" for i in range(arr.ndim)]))
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    outputs = list(OUTPUT_NAMES[:2 if need_weights else 1])
    node = helper.make_node(OP_TYPE, node_inputs, outputs, domain=DOMAIN,
                            num_heads=num_heads, **attrs)
    graph = helper.make_graph(
        [node], "masked_mha_self", graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 9  # readable by ORT 1.17 (see single_node_model)
    return model.SerializeToString()


def self_attention_feeds(feeds: dict) -> dict:
    """The run feeds of ``self_attention_model``: "x" (= query) and the non-weight inputs."""
    run_feeds = {"x": feeds["query"]}
    for name in INPUT_NAMES[3:]:
        if name not in WEIGHT_INPUTS and feeds.get(name) is not None:
            run_feeds[name] = feeds[name]
    return run_feeds
