"""After export: add the standard-op fallback of every ``com.maskedmha::MaskedMHA`` node as
model-local ``FunctionProto``s, so the file runs on a stock ONNX Runtime.

The file must be right or refused on every runtime that loads it.  Measured (two MaskedMHA nodes,
models built by tests/test_fallback_overloads.py):

- ORT >= 1.27 choose a function by (domain, name, overload), as IR 10 specifies.
- ORT 1.19.2 .. 1.26.0 ignore ``overload``: every node runs the LAST function in
  ``model.functions`` with its (domain, name).  With one function per configuration that ran
  4-head nodes with a 2-head body: silently wrong numbers.  When that function has another number
  of outputs than the node, ORT 1.19-1.26 abort the process (a failed assertion).
- ORT 1.17.3 reads IR <= 9 only ("Unsupported model IR version: 10").

Hence: nodes that differ only in attributes share one function that reads the attributes
(fallback.Signature).  A file whose nodes all have one signature gets one function with no
overload, and IR 9 when nothing else in it needs IR 10 (runs on ORT 1.17+).  A file with several
signatures gets one function per signature, told apart by ``overload`` (IR 10), plus a guard
function (fallback.build_guard) first and last in ``model.functions``: ORT 1.19-1.26 take the
last one and fail at session creation with an error naming the problem; a runtime that took the
first same-named function would hit the other guard; runtimes honouring overloads never use them.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .fallback import (ATTRIBUTE_DEFAULTS, ATTRIBUTES, DOMAIN, GUARD_DOMAIN, OP_TYPE, Config,
                       build_function, build_guard)
from .schema import INPUT_NAMES

# Overload names of the two guards (no node uses them).
GUARD_OVERLOADS = ("needs_function_overloads.first", "needs_function_overloads.last")


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("maskedmha: the model imports no default-domain opset")


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ONNX shape inference applied (once per attach: it walks the whole graph)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort; fall back to what is stored
        return model


def _type_table(model: onnx.ModelProto, inferred: onnx.ModelProto) -> dict:
    """name -> (elem_type, rank or None) for every value whose type is known."""
    table = {}
    for g in _graphs(inferred.graph):   # subgraphs too: a MaskedMHA node may sit in an If body
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.elem_type:
                table[vi.name] = (tt.elem_type,
                                  len(tt.shape.dim) if tt.HasField("shape") else None)
    for g in _graphs(model.graph):
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.elem_type and tt.HasField("shape") and table.get(vi.name, (0, None))[1] is None:
                table[vi.name] = (tt.elem_type, len(tt.shape.dim))
    for g in _graphs(inferred.graph):
        for init in g.initializer:
            table[init.name] = (init.data_type, len(init.dims))
        for node in g.node:  # constants without value_info
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                t = node.attribute[0].t
                table.setdefault(node.output[0], (t.data_type, len(t.dims)))
    return table


def _shape_table(model: onnx.ModelProto, inferred: onnx.ModelProto) -> dict:
    """name -> list of dims (int, str or None) for every value with a known shape."""
    shapes = {}
    for graph in (model.graph, inferred.graph):
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape") and vi.name not in shapes:
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else
                                   (d.dim_param or None) for d in tt.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _annotate_outputs(model: onnx.ModelProto, nodes_cfgs, inferred: onnx.ModelProto) -> None:
    """Give MaskedMHA outputs their shapes (from the inputs' shapes) and replace the placeholder
    dims an exporter invented for them (e.g. ``MaskedMHA11_dim_0``) everywhere in the graph."""
    shapes = _shape_table(model, inferred)
    g = model.graph
    by_name = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
    rename = {}
    for node, cfg in nodes_cfgs:
        q, k = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not q or len(q) != (2 if cfg.varlen else 3):   # varlen: (T, E) rows in and out
            continue
        extra = int(cfg.bias_kv) + int(cfg.add_zero_attn)
        s = k[1] if k and len(k) == 3 else None
        if extra and s is not None:
            s = s + extra if isinstance(s, int) else None
        wanted = [q]
        if cfg.weights:
            wanted.append([q[0], q[1], s] if cfg.weights == "avg" else
                          [q[0], cfg.num_heads, q[1], s])
        for out, dims in zip(node.output, wanted):
            if not out:
                continue
            vi = by_name.get(out)
            if vi is None:
                vi = g.value_info.add()
                vi.name = out
                by_name[out] = vi
            tt = vi.type.tensor_type
            tt.elem_type = TensorProto.FLOAT
            old = [d.dim_param for d in tt.shape.dim] if tt.HasField("shape") else []
            for o, n in zip(old, dims):
                if o and n is not None and o != n:
                    rename[o] = n
            tt.ClearField("shape")
            tt.shape.SetInParent()
            for dval in dims:
                d = tt.shape.dim.add()
                if isinstance(dval, int):
                    d.dim_value = dval
                elif dval:
                    d.dim_param = dval
    if rename:
        for vi in list(g.value_info) + list(g.output):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param in rename:
                    new = rename[d.dim_param]
                    if isinstance(new, int):
                        d.dim_value = new
                    else:
                        d.dim_param = new


def _mask_kind(name, table, what, node):
    if name not in table:
        raise ValueError(f"maskedmha: cannot tell the element type of {what} {name!r} of node "
                         f"{node.name!r} (no type information in the model)")
    elem, rank = table[name]
    if elem == TensorProto.BOOL:
        kind = "b"
    elif elem == TensorProto.FLOAT:
        kind = "f"
    else:
        raise ValueError(f"maskedmha: {what} {name!r} has element type "
                         f"{TensorProto.DataType.Name(elem)}; expected bool or float")
    return kind, rank


def node_config(node: onnx.NodeProto, table: dict) -> Config:
    ins = list(node.input) + [""] * (len(INPUT_NAMES) - len(node.input))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "num_heads" not in attrs:
        raise ValueError(f"maskedmha: node {node.name!r} has no num_heads attribute")
    fmr = attrs.get("fully_masked_row", b"zero")
    fmr = fmr.decode() if isinstance(fmr, bytes) else fmr
    if fmr not in ("zero", "nan"):
        raise ValueError(f"maskedmha: fully_masked_row={fmr!r} (expected 'zero' or 'nan')")
    kpm = am = None
    if ins[11]:
        kpm, _ = _mask_kind(ins[11], table, "key_padding_mask", node)
    if ins[12]:
        kind, rank = _mask_kind(ins[12], table, "attn_mask", node)
        if rank not in (2, 3):
            raise ValueError(f"maskedmha: attn_mask {ins[12]!r} of node {node.name!r} has rank "
                             f"{rank}; expected 2 or 3")
        am = f"{rank}{kind}"
    weights = None
    need_weights = len(node.output) > 1 and bool(node.output[1])
    if need_weights:
        weights = "avg" if int(attrs.get("average_attn_weights", 1)) else "all"
    if bool(ins[4]) != bool(ins[5]) or bool(ins[9]) != bool(ins[10]):
        raise ValueError(f"maskedmha: node {node.name!r}: inputs 4/5 and 9/10 come in pairs")
    varlen = bool(ins[13])
    skip = bool(int(attrs.get("skip_padded_queries", 0)))
    # What the kernel refuses, refused here too (no fallback body is right for it).
    if varlen:
        for what, present in (("input 11 'key_padding_mask'", ins[11]),
                              ("input 12 'attn_mask'", ins[12]),
                              ("output 1 'attn_weights'", need_weights),
                              ("skip_padded_queries=1", skip)):
            if present:
                raise ValueError(f"maskedmha: node {node.name!r}: {what} is not supported with "
                                 "sequence_offsets (variable-length mode)")
    elif skip and kpm != "b":
        raise ValueError(f"maskedmha: node {node.name!r}: skip_padded_queries=1 needs a bool "
                         "key_padding_mask (input 11)")
    return Config(num_heads=int(attrs["num_heads"]), packed=not ins[4], in_bias=bool(ins[6]),
                  out_bias=bool(ins[8]), bias_kv=bool(ins[9]), kpm=kpm, am=am,
                  is_causal=bool(int(attrs.get("is_causal", 0))),
                  add_zero_attn=bool(int(attrs.get("add_zero_attn", 0))), nan=fmr == "nan",
                  weights=weights, varlen=varlen, skip=skip)


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every graph nested in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graphs(sub)


def mha_nodes(model: onnx.ModelProto):
    """The MaskedMHA nodes of the main graph and of every subgraph (If/Loop/Scan bodies): each
    needs its fallback; a node left out would call a function of another signature."""
    return [n for g in _graphs(model.graph) for n in g.node
            if n.domain == DOMAIN and n.op_type == OP_TYPE]


def drop_functions(model: onnx.ModelProto) -> None:
    """Remove every com.maskedmha::MaskedMHA function (fallbacks and guards) from ``model``."""
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)


def _prepare(model: onnx.ModelProto):
    """Normalise every MaskedMHA node and return [(node, Config)]; drops our functions (fallback
    and guards) left by an earlier attach or by an exporter."""
    inferred = _inferred(model)
    table = _type_table(model, inferred)
    drop_functions(model)
    nodes_cfgs = []
    used = set()
    for g in _graphs(model.graph):  # names read anywhere, subgraph outputs included
        used.update(o.name for o in g.output)
        for n in g.node:
            used.update(n.input)
    for node in mha_nodes(model):
        if len(node.output) > 1 and node.output[1] not in used:
            # need_weights=True but the weights are never read: keep fully_masked_row
            # ("nan", PyTorch's answer for that path) and spare the kernel the weights output.
            del node.output[1:]
        ins = list(node.input)
        while ins and not ins[-1]:
            ins.pop()
        del node.input[:]
        node.input.extend(ins)
        cfg = node_config(node, table)
        # Every attribute explicit (the documented defaults): the shared fallback function
        # declares the same defaults, but a runtime need not rely on that.
        have = {a.name for a in node.attribute}
        for name, default in ATTRIBUTE_DEFAULTS.items():
            if name not in have:
                node.attribute.append(helper.make_attribute(name, default))
        node.overload = ""
        nodes_cfgs.append((node, cfg))
    # output shapes are written to the main graph's value_info: its own nodes only
    top = {id(n) for n in model.graph.node}
    _annotate_outputs(model, [(n, c) for n, c in nodes_cfgs if id(n) in top], inferred)
    return nodes_cfgs


def _drop_guard_import(model: onnx.ModelProto) -> None:
    imports = [i for i in model.opset_import if i.domain != GUARD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)


def attach_functions(model: onnx.ModelProto, fallback: bool = True) -> onnx.ModelProto:
    """In place (and returned): add one fallback function per node signature (shared by nodes
    that differ only in attributes); with several signatures, each node's ``overload`` names its
    signature and the guards are added.  Sets the com.maskedmha opset import and the lowest IR
    version the file needs (9, or 10 for overloads or other IR-10 content).

    ``fallback=False`` normalises the nodes but adds no function: the file then runs only where
    the library is registered (a stock ORT refuses it at session creation: no kernel, no
    function) and needs no IR-10 overloads, so ORT 1.17-1.18, which read IR <= 9 only, run it
    with the library even when its nodes have several signatures."""
    opset = _default_opset(model)
    nodes_cfgs = _prepare(model)
    _drop_guard_import(model)
    sigs = {}
    for _, cfg in nodes_cfgs if fallback else ():
        sigs.setdefault(cfg.signature.id, cfg.signature)
    overloads = len(sigs) > 1
    if overloads:
        for node, cfg in nodes_cfgs:
            node.overload = cfg.signature.id
        model.functions.append(build_guard(opset, GUARD_OVERLOADS[0]))
    for sig_id, sig in sigs.items():
        model.functions.append(build_function(sig, opset, sig_id if overloads else None))
    if overloads:
        model.functions.append(build_guard(opset, GUARD_OVERLOADS[1]))
        model.opset_import.append(helper.make_opsetid(GUARD_DOMAIN, 1))
    if nodes_cfgs and not any(i.domain == DOMAIN for i in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    if (model.ir_version <= 10 and _opset_ir_version(model) <= 9
            and _needs_ir10(model) and not _needs_ir10(model, ignore_metadata=True)):
        # Only the exporter's metadata_props keep this file at IR 10: dropping them lets ORT
        # 1.17 run it (the numbers do not depend on them).
        drop_ir10_metadata(model)
    model.ir_version = lowest_ir_version(model)
    return model


def specialise_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place (and returned), for ``maskedmha.decompose``: one function per distinct node
    configuration, specialised to its attribute values, each node's ``overload`` naming its
    configuration (for onnx.inliner, which honours overloads; the result is meant to be inlined
    at once, not run)."""
    opset = _default_opset(model)
    nodes_cfgs = _prepare(model)
    _drop_guard_import(model)
    configs = {}
    for node, cfg in nodes_cfgs:
        node.overload = cfg.id
        configs.setdefault(cfg.id, cfg)
    for cfg_id, cfg in configs.items():
        model.functions.append(build_function(cfg, opset, cfg_id))
    if configs and not any(i.domain == DOMAIN for i in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model.ir_version = max(model.ir_version, 10)
    return model


# Element types that need IR >= 10 (UINT4, INT4 and every later addition).
_FIRST_IR10_ELEM_TYPE = TensorProto.UINT4


def _needs_ir10(model: onnx.ModelProto, ignore_metadata: bool = False) -> str | None:
    """What in ``model`` needs IR >= 10 (IR 10 added node/function ``overload``, UINT4/INT4 and
    ``metadata_props`` on nodes, graphs, functions and values), or None.  ``ignore_metadata``:
    leave ``metadata_props`` out of the question."""
    def type_needs(tp) -> bool:
        while tp is not None:
            kind = tp.WhichOneof("value")
            if kind in ("tensor_type", "sparse_tensor_type"):
                return getattr(tp, kind).elem_type >= _FIRST_IR10_ELEM_TYPE
            if kind in ("sequence_type", "optional_type"):
                tp = getattr(tp, kind).elem_type
            elif kind == "map_type":
                tp = tp.map_type.value_type
            else:
                return False
        return False

    def graph_needs(g) -> str | None:
        if g.metadata_props and not ignore_metadata:
            return "graph metadata_props"
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.metadata_props and not ignore_metadata:
                return f"metadata_props of value {vi.name!r}"
            if type_needs(vi.type):
                return f"the element type of {vi.name!r}"
        for t in list(g.initializer) + [s.values for s in g.sparse_initializer]:
            if t.data_type >= _FIRST_IR10_ELEM_TYPE or (t.metadata_props
                                                        and not ignore_metadata):
                return f"initializer {t.name!r}"
        return nodes_need(g.node)

    def nodes_need(nodes) -> str | None:
        for n in nodes:
            if n.overload:
                return f"the overload of node {n.name!r}"
            if n.metadata_props and not ignore_metadata:
                return f"metadata_props of node {n.name!r} (e.g. written by torch.onnx dynamo)"
            for a in n.attribute:
                if a.HasField("t") and a.t.data_type >= _FIRST_IR10_ELEM_TYPE:
                    return f"a tensor attribute of node {n.name!r}"
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    why = graph_needs(sub)
                    if why:
                        return why
        return None

    why = graph_needs(model.graph)
    if why:
        return why
    for f in model.functions:
        if f.overload:
            return f"the overload of function {f.domain}::{f.name}"
        if not ignore_metadata and (f.metadata_props or any(v.metadata_props
                                                           for v in f.value_info)):
            return f"metadata_props of function {f.domain}::{f.name}"
        why = nodes_need(f.node)
        if why:
            return why
    return None


def _opset_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version (>= 9) that the default-domain / ai.onnx.ml opsets allow."""
    std = [i for i in model.opset_import if i.domain in ("", "ai.onnx", "ai.onnx.ml")]
    try:
        return max(9, helper.find_min_ir_version_for(std, ignore_unknown=True) if std else 9)
    except ValueError:  # an opset newer than the installed onnx knows (onnx 1.17: opset 23)
        return max(10, model.ir_version)


def drop_ir10_metadata(m: onnx.ModelProto) -> None:
    """Clear ``metadata_props`` of nodes, graphs, values, initializers and functions: IR 10 added
    them, and torch.onnx's dynamo exporter fills them (module names, stack traces), which alone
    would keep a file at IR 10, which ORT 1.17 does not read (measured).  The model's own
    ``metadata_props`` (IR 1) stay."""
    def graph(g):
        g.ClearField("metadata_props")
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            vi.ClearField("metadata_props")
        for t in g.initializer:
            t.ClearField("metadata_props")
        nodes(g.node)

    def nodes(ns):
        for n in ns:
            n.ClearField("metadata_props")
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    graph(sub)

    graph(m.graph)
    for f in m.functions:
        f.ClearField("metadata_props")
        for vi in f.value_info:
            vi.ClearField("metadata_props")
        nodes(f.node)



def lowest_ir_version(model: onnx.ModelProto) -> int:
    """The IR version to write: 9 (ORT 1.17 reads IR <= 9; IR 9 has model-local functions with
    attribute defaults), raised to what the default-domain / ai.onnx.ml opsets need (opset 21+
    needs IR 10) and to 10 when the file uses an IR-10 feature.  A model already above IR 10
    keeps its version: its newer features are not vetted here."""
    if model.ir_version > 10:
        return model.ir_version
    ir = _opset_ir_version(model)
    if ir < 10 and _needs_ir10(model):
        ir = 10
    return ir


__all__ = ["attach_functions", "specialise_functions", "drop_functions", "lowest_ir_version",
           "drop_ir10_metadata", "node_config", "mha_nodes", "ATTRIBUTES"]
