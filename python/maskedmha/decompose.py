"""``maskedmha.decompose``: replace every ``com.maskedmha::MaskedMHA`` node by standard ops."""
from __future__ import annotations

import onnx
import onnx.inliner

from maskedmha.symbolic.attach import attach_functions, mha_nodes
from maskedmha.symbolic.fallback import DOMAIN


def decompose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every MaskedMHA node inlined as its standard-op fallback (the
    functions are attached first when missing); the com.maskedmha functions and opset import
    are removed.  The result passes ``onnx.checker.check_model``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if mha_nodes(m):
        have = {f.overload for f in m.functions if f.domain == DOMAIN}
        if any(n.overload not in have for n in mha_nodes(m)):
            attach_functions(m)
    m = onnx.inliner.inline_local_functions(m)
    keep = [f for f in m.functions if f.domain != DOMAIN]
    del m.functions[:]
    m.functions.extend(keep)
    used = {n.domain for n in m.graph.node} | {n.domain for f in m.functions for n in f.node}
    if DOMAIN not in used:
        imports = [i for i in m.opset_import if i.domain != DOMAIN]
        del m.opset_import[:]
        m.opset_import.extend(imports)
    onnx.checker.check_model(m)
    return m
