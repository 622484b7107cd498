"""``maskedmha.optimize``: save an ONNX Runtime-optimized copy of a model that still runs without
the library.

ORT writes an optimized graph (``SessionOptions.optimized_model_filepath``) from its in-memory
graph, where our nodes are bound to the kernel: the file it writes has the MaskedMHA nodes but not
their fallback functions (nor their overloads), so it no longer runs on a stock ORT.  This module
lets ORT optimize with the library registered, then attaches the fallbacks again.
"""
from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from maskedmha.symbolic.attach import attach_functions, mha_nodes

# "all" adds layout optimizations that ORT documents as specific to the machine that ran them
# (NCHWc and the like): a saved file must stay portable, so only these two are offered.
LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def optimize(model_in, model_out: str, level: str = "extended") -> onnx.ModelProto:
    """Optimize ``model_in`` (path, bytes or ModelProto) with ORT at ``level`` ("basic" or
    "extended") with the MaskedMHA library registered, attach the standard-op fallback to every
    MaskedMHA node of the result, save it to ``model_out`` and return it."""
    from .session import session_options

    if level not in LEVELS:
        raise ValueError(f"maskedmha.optimize: level {level!r} is not one of {sorted(LEVELS)}")
    if isinstance(model_in, onnx.ModelProto):
        model_in = model_in.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "optimized.onnx")
        opts = session_options(model=model_in)  # + onnxruntime-extensions if the model uses it
        opts.graph_optimization_level = LEVELS[level]
        opts.optimized_model_filepath = saved
        ort.InferenceSession(model_in, sess_options=opts, providers=["CPUExecutionProvider"])
        model = onnx.load(saved)
    if mha_nodes(model):
        attach_functions(model)
    onnx.save(model, model_out)
    return model
