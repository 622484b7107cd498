"""``maskedmha.decompose`` (the package's public function is this one): replace every
``com.maskedmha::MaskedMHA`` node by its standard-op decomposition.  Needs onnx only, no torch."""
from __future__ import annotations

import os

import onnx
import onnx.inliner

from .attach import (_graphs, drop_functions, drop_ir10_metadata, lowest_ir_version, mha_nodes,
                     specialise_functions)
from .fallback import GUARD_DOMAIN
from .schema import DOMAIN


def decompose(model: onnx.ModelProto | str | os.PathLike | bytes) -> onnx.ModelProto:
    """A copy of ``model`` (a ModelProto, the path of an .onnx file, or its serialized bytes)
    with every MaskedMHA node inlined as its standard-op decomposition.  Each node gets a body
    specialised to its own attributes (built here from the node, whatever functions the file
    carries), so the result needs no function overloads; the com.maskedmha functions and opset
    imports are removed, so are the IR-10 ``metadata_props`` of nodes, graphs and values (the
    dynamo exporter's module names and stack traces), and the IR version is the lowest the result
    needs (9 unless its opset is 21 or later), so ORT 1.17 runs it.  The result passes
    ``onnx.checker.check_model``."""
    if isinstance(model, (str, os.PathLike)):
        m = onnx.load(os.fspath(model))
    elif isinstance(model, (bytes, bytearray)):
        m = onnx.load_from_string(bytes(model))
    elif isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        raise TypeError("maskedmha.decompose: expected an onnx.ModelProto, a path or bytes, not "
                        f"{type(model).__name__}")
    if mha_nodes(m):
        specialise_functions(m)
    m = onnx.inliner.inline_local_functions(m)
    drop_functions(m)
    used = ({n.domain for g in _graphs(m.graph) for n in g.node}
            | {n.domain for f in m.functions for n in f.node})
    imports = [i for i in m.opset_import
               if i.domain not in (DOMAIN, GUARD_DOMAIN) or i.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(imports)
    drop_ir10_metadata(m)
    m.ir_version = lowest_ir_version(m)
    onnx.checker.check_model(m)
    return m
