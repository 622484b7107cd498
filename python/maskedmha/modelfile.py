"""Reading the files the command line is given, with one-line errors.

Everything here is torch-free (``maskedmha info``/``compare`` must work in a runtime-only
install).  A :class:`UsageError` is a mistake of the user's (wrong file, wrong option value): the
CLI prints its message on one line after ``maskedmha: `` and exits with status 2."""
from __future__ import annotations

import os

import onnx

from maskedmha.symbolic.attach import mha_nodes  # noqa: F401 - the nodes, subgraphs included
from maskedmha.symbolic.schema import DOMAIN, OP_TYPE


class UsageError(ValueError):
    """A user error the CLI reports in one line (exit status 2); the message names the problem."""


def check_readable_file(path: str, what: str) -> None:
    """Refuse, in one line, a path that is missing, a directory or empty."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{what} {path} is empty (0 bytes)")


def load_model(path: str, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load(path)``, every way it can fail turned into one UsageError line.

    Why the graph check: protobuf parses many non-ONNX byte strings without complaint (unknown
    fields are skipped), e.g. a short text file; a real ONNX model always sets ir_version and
    holds a graph."""
    check_readable_file(path, "model")
    try:
        model = onnx.load(path, load_external_data=load_external_data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, OSError (external data), ValueError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a readable ONNX model ({first})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise UsageError(f"{path} is not an ONNX model (no IR version or no graph)")
    return model


def require_mha_nodes(model: onnx.ModelProto, path: str, command: str) -> None:
    if not mha_nodes(model):
        raise UsageError(f"{path} holds no {DOMAIN}::{OP_TYPE} node: nothing to {command} "
                         f"(`maskedmha info {path}` shows what it holds)")


def type_table(model: onnx.ModelProto) -> dict[str, tuple[int, list | None]]:
    """name -> (elem_type, dims or None) for values whose type the file records (graph inputs,
    outputs, value_info, initializers, Constant outputs); dims are ints, dim_param strings or
    None.  No shape inference: what the file states."""
    table: dict[str, tuple[int, list | None]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type:
            dims = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tt.shape.dim] if tt.HasField("shape") else None)
            table[vi.name] = (tt.elem_type, dims)
    for init in g.initializer:
        table[init.name] = (init.data_type, list(init.dims))
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            table.setdefault(node.output[0], (t.data_type, list(t.dims)))
    return table


def type_text(elem_type: int, dims: list | None) -> str:
    """``float[batch,len,8]``, ``bool[?,?]`` or ``float`` (rank unknown)."""
    name = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "?"
    if dims is None:
        return name
    return f"{name}[{','.join('?' if d is None else str(d) for d in dims)}]"
