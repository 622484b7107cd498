"""After export: give every ``com.maskedmha::MaskedMHA`` node its configuration (``overload``)
and add one fallback ``FunctionProto`` per distinct configuration."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .fallback import ATTRIBUTES, DOMAIN, OP_TYPE, Config, build_function


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
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type:
            table[vi.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type and tt.HasField("shape") and table.get(vi.name, (0, None))[1] is None:
            table[vi.name] = (tt.elem_type, len(tt.shape.dim))
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
        if not q or len(q) != 3:
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
    ins = list(node.input) + [""] * (13 - len(node.input))
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
    if len(node.output) > 1 and node.output[1]:
        weights = "avg" if int(attrs.get("average_attn_weights", 1)) else "all"
    if bool(ins[4]) != bool(ins[5]) or bool(ins[9]) != bool(ins[10]):
        raise ValueError(f"maskedmha: node {node.name!r}: inputs 4/5 and 9/10 come in pairs")
    return Config(num_heads=int(attrs["num_heads"]), packed=not ins[4], in_bias=bool(ins[6]),
                  out_bias=bool(ins[8]), bias_kv=bool(ins[9]), kpm=kpm, am=am,
                  is_causal=bool(int(attrs.get("is_causal", 0))),
                  add_zero_attn=bool(int(attrs.get("add_zero_attn", 0))), nan=fmr == "nan",
                  weights=weights)


def mha_nodes(model: onnx.ModelProto):
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place (and returned): set every MaskedMHA node's overload, add the fallback functions,
    the com.maskedmha opset import and IR version 10."""
    opset = _default_opset(model)
    inferred = _inferred(model)
    table = _type_table(model, inferred)
    # Drop functions of ours left by an earlier attach (or by an exporter).
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)
    configs = {}
    nodes_cfgs = []
    used = {o.name for o in model.graph.output}
    for n in model.graph.node:
        used.update(n.input)
        for a in n.attribute:  # names used inside subgraphs (If/Loop/Scan bodies)
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used.update(i for sn in sub.node for i in sn.input)
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
        node.overload = cfg.id
        configs.setdefault(cfg.id, cfg)
        nodes_cfgs.append((node, cfg))
    _annotate_outputs(model, nodes_cfgs, inferred)
    for cfg in configs.values():
        model.functions.append(build_function(cfg, opset))
    if configs:
        if not any(i.domain == DOMAIN for i in model.opset_import):
            model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model.ir_version = max(model.ir_version, 10)
    return model


__all__ = ["attach_functions", "node_config", "mha_nodes", "ATTRIBUTES"]
