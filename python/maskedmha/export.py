"""``maskedmha.export``: torch model -> ONNX file where every ``nn.MultiheadAttention`` (and every
direct ``F.multi_head_attention_forward`` call) is ONE ``com.maskedmha::MaskedMHA`` node carrying
its standard-op fallback function."""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings

import onnx
import torch

from maskedmha.symbolic.attach import attach_functions
from maskedmha.symbolic.patching import patched
from maskedmha.symbolic.schema import DOMAIN, OPSET_VERSION

EXPORTERS = ("dynamo", "torchscript")


def _storage_key(t: torch.Tensor):
    """What two tensors sharing memory have in common: device and storage address.  Tensors
    without a plain storage, or with an empty one (whose address may be 0 for all of them), are
    told apart by identity only."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse/nested tensors: no plain storage
        return ("object", id(t))
    if storage.nbytes() == 0:
        return ("object", id(t))
    return (t.device, storage.data_ptr())


def _unalias(model, args, kwargs):
    """Copies of the example inputs such that no two of them (nor an input and a parameter or
    buffer of ``model``) share memory.

    torch.export de-duplicates an example tensor passed twice: ``(x, mem, mem)`` for
    ``forward(q, k, v)`` gives a graph where ONE input (named ``v``) feeds both key and value,
    and the file is silently wrong whenever k and v differ.  Each graph input must stand for
    its own tensor, so every input after the first that shares storage with an earlier one
    (same object, a view of it, a slice of the same buffer) is cloned; the first keeps its
    memory.  The caller's tensors are not touched.  Both exporters get the copies (the
    TorchScript tracer handles aliasing, but one rule for both keeps them giving the same file).
    """
    from torch.utils import _pytree as pytree

    seen = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    out = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            key = _storage_key(x)
            if key in seen:
                x = x.detach().clone().requires_grad_(x.requires_grad)
                key = _storage_key(x)
            seen.add(key)
        out.append(x)
    return pytree.tree_unflatten(out, spec)


def _signature_order(model, kwargs, names, tensors):
    """The TorchScript exporter makes the keyword inputs' graph inputs in the order of the
    forward's parameters, whatever the dict's order (the dynamo exporter keeps the dict's);
    ``names`` follow the order the caller gave.  Returns kwargs, names and tensors reordered
    together, so each name stays on its tensor."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return kwargs, names, tensors
    rank = {name: i for i, name in enumerate(params)}

    def key(label):  # positional inputs first, as given; then keywords by parameter
        return (0, label, 0) if isinstance(label, int) else (1, 0, rank.get(label, len(rank)))

    order = sorted(range(len(tensors)), key=lambda i: key(tensors[i][0]))
    if order == sorted(order):
        return kwargs, names, tensors
    if len(names) < len(tensors):  # an unnamed tail gets names, so the list can be permuted
        names = list(names) + [f"input_{i}" for i in range(len(names), len(tensors))]
    kwargs = dict(sorted(kwargs.items(), key=lambda kv: key(kv[0])))
    return kwargs, [names[i] for i in order], [tensors[i] for i in order]


def _flat_inputs(args, kwargs):
    """(position label, value) of every top-level argument, positional then keyword."""
    items = [(i, a) for i, a in enumerate(args)]
    items += [(k, v) for k, v in kwargs.items()]
    return items


def _default_names(model, args, kwargs):
    """The forward's parameter names for the top-level arguments (``name_i`` for *args)."""
    try:
        sig = inspect.signature(model.forward)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [f"input_{i}" for i in range(len(args))] + list(kwargs)
    names = []
    for pname, value in bound.arguments.items():
        kind = sig.parameters[pname].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            names += [f"{pname}_{i}" for i in range(len(value))]
        elif kind == inspect.Parameter.VAR_KEYWORD:
            names += list(value)
        elif pname not in kwargs:
            names.append(pname)
    return names[:len(args)] + list(kwargs)


def _resolve_input_names(model, args, kwargs, input_names):
    """Names for the graph's tensor inputs (non-None tensors, in order).  ``input_names`` may
    name either those tensors only (torch.onnx's convention) or every argument, None ones too;
    by default the forward's parameter names are used (the same for both exporters)."""
    items = _flat_inputs(args, kwargs)
    tensors = [(k, v) for k, v in items if isinstance(v, torch.Tensor)]
    if input_names is None:
        input_names = _default_names(model, args, kwargs)
    names = list(input_names)
    if len(names) == len(items) and len(items) != len(tensors):
        names = [n for (k, v), n in zip(items, names) if isinstance(v, torch.Tensor)]
    if len(names) > len(tensors):
        raise ValueError(f"maskedmha.export: {len(names)} input_names for {len(tensors)} "
                         "tensor inputs")
    return names, tensors


def _axes(spec):
    if isinstance(spec, dict):
        return {int(a): str(n) for a, n in spec.items()}
    return {int(a): None for a in spec}


def _dynamic_shapes(model, args, kwargs, names, tensors, dynamic_axes):
    """torch.export ``dynamic_shapes`` for torch.onnx-style ``dynamic_axes``."""
    if not dynamic_axes:
        return None
    dyn = torch.export.Dim.DYNAMIC
    by_label = {}
    for (label, t), name in zip(tensors, names or []):
        if name in dynamic_axes:
            by_label[label] = {a: dyn for a in _axes(dynamic_axes[name]) if a < t.dim()}
    sig = inspect.signature(model.forward)
    bound = sig.bind(*args, **kwargs)
    result = {}
    pos = 0
    for pname, value in bound.arguments.items():
        kind = sig.parameters[pname].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            result[pname] = tuple(by_label.get(pos + i) for i in range(len(value)))
            pos += len(value)
        elif kind == inspect.Parameter.VAR_KEYWORD:
            result[pname] = {k: by_label.get(k) for k in value}
        else:
            label = pname if pname in kwargs else pos
            if pname not in kwargs:
                pos += 1
            result[pname] = by_label.get(label)
    return result


def _rename_dims(model: onnx.ModelProto, dynamic_axes, input_names, output_names):
    """Give the dynamic dimensions the names from ``dynamic_axes``."""
    if not dynamic_axes:
        return
    g = model.graph
    values = {vi.name: vi for vi in list(g.input) + list(g.output)}
    mapping = {}
    for name, spec in dynamic_axes.items():
        vi = values.get(name)
        if vi is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis, dim_name in _axes(spec).items():
            if axis < len(dims) and dim_name and dims[axis].dim_param:
                mapping.setdefault(dims[axis].dim_param, dim_name)
    if not mapping:
        return
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# torch.onnx's chatter that says nothing about the user's model, silenced around our export
# call only (each filter matches one message, so anything else still reaches the user):
# - the dynamo exporter logs "torchvision is not installed. Skipping torchvision::nms" (and
#   roi_align, roi_pool, deform_conv2d) on every export while building its op registry;
# - torch.export's pytree code raises a FutureWarning about its own use of ``LeafSpec``;
# - the TorchScript exporter warns "ONNX Preprocess - Removing mutation from node ... This
#   changes graph semantics" when it turns an in-place op on a graph input into an
#   out-of-place one (PyTorch's own TransformerEncoderLayer triggers it on a key_padding_mask
#   input): the exported outputs follow the traced data flow all the same; only the caller's
#   tensor is not modified, which no ONNX model can do.
# (TorchScript's "shape inference of com.maskedmha::MaskedMHA type is missing" is not filtered:
# it is gone at its cause, symbolic/torchscript.py types every output of the node.)
_QUIET_LOGS = {"torch.onnx._internal.exporter._registration": "torchvision is not installed"}
_QUIET_WARNINGS = [
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, r"ONNX Preprocess - Removing mutation from node"),
]


@contextlib.contextmanager
def _quiet():
    filters = [(logging.getLogger(name), _DropMessages(prefix))
               for name, prefix in _QUIET_LOGS.items()]
    with warnings.catch_warnings():
        for category, message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, f in filters:
            logger.addFilter(f)
        try:
            yield
        finally:
            for logger, f in filters:
                logger.removeFilter(f)


def _export_torchscript(model, args, kwargs, names, output_names, dynamic_axes, opset_version):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, args, buf, kwargs=kwargs or None, input_names=names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=opset_version, dynamo=False,
                          custom_opsets={DOMAIN: OPSET_VERSION}, do_constant_folding=True)
    from maskedmha.symbolic.torchscript import record_traced_types
    # The masks' types and ranks as traced, for attach (ONNX inference can lose them).
    return record_traced_types(onnx.load_from_string(buf.getvalue()))


def _export_dynamo(model, args, kwargs, names, tensors, output_names, dynamic_axes,
                   opset_version):
    from maskedmha.symbolic.dynamo import translation_table

    dynamic_shapes = _dynamic_shapes(model, args, kwargs, names, tensors, dynamic_axes)
    program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True,
                                input_names=names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, opset_version=opset_version,
                                custom_translation_table=translation_table(), report=False,
                                verify=False, verbose=False)
    return program.model_proto


def export(model: torch.nn.Module, args, f=None, *, kwargs=None, input_names=None,
           output_names=None, dynamic_axes=None, fused: bool = True, exporter: str = "dynamo",
           opset_version: int | None = None, fallback: bool = True,
           remove_padding: bool = False, skip_padded_queries: bool = False) -> onnx.ModelProto:
    """Export ``model`` to ONNX with every ``nn.MultiheadAttention`` as one MaskedMHA node (also
    attention computed by calling ``F.multi_head_attention_forward`` directly, except calls with
    ``static_k``/``static_v`` or an output projection wider than embed_dim: those stay standard
    ops, with a warning).

    ``args``: positional inputs (a tensor or a tuple; ``None`` entries allowed for optional
    masks); ``kwargs``: keyword inputs.  Every tensor argument is its own graph input, also
    when the example passes one tensor twice (``(x, mem, mem)``): export works on copies of
    aliased examples.  ``dynamic_axes`` as in ``torch.onnx.export`` (input or
    output name -> {axis: dim name} or [axes]) works with both exporters.  ``fused=False`` writes
    the decomposed model (standard ops only).  ``fallback=False`` leaves the standard-op fallback
    out of the file: it then runs only with the library, but never needs IR 10, so ONNX Runtime
    1.17-1.18 (IR <= 9) run it even where the fallback would need function overloads (models
    whose attention calls differ in which masks they pass, e.g. ``nn.Transformer``).

    ``remove_padding=True``: every ``nn.TransformerEncoder`` (or ``nn.TransformerEncoderLayer``
    called on its own) given a bool ``src_key_padding_mask`` and no src mask is exported
    padding-free: the valid tokens are gathered once, every layer runs on them alone (its
    self-attention one MaskedMHA node in variable-length mode), and the result is scattered
    back.  Valid positions are PyTorch's; padded positions are 0 (norm(0) under the encoder's
    final norm), as PyTorch's nested-tensor path returns.  Other encoder calls are exported
    dense, with one warning naming why (symbolic/packed_encoder.py).
    ``skip_padded_queries=True``: self-attention calls (query, key and value one tensor) with a
    bool key_padding_mask do not compute their padded query rows (output rows 0).
    ``nn.TransformerEncoderLayer`` hands its attention a float mask (PyTorch converts it), so
    this does not reach encoder layers: ``remove_padding`` is their route.

    Writes ``f`` (path or binary file object) when given and returns the ``onnx.ModelProto``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"maskedmha.export: exporter must be one of {EXPORTERS}, not "
                         f"{exporter!r}")
    if not isinstance(args, tuple):
        args = (args,)
    kwargs = dict(kwargs or {})
    args, kwargs = _unalias(model, args, kwargs)
    names, tensors = _resolve_input_names(model, args, kwargs, input_names)
    if exporter == "torchscript":
        kwargs, names, tensors = _signature_order(model, kwargs, names, tensors)
    output_names = list(output_names) if output_names is not None else None
    if dynamic_axes:
        known = set(names) | set(output_names or [])
        absent = set(input_names or _default_names(model, args, kwargs)) - known
        unknown = set(dynamic_axes) - known - absent
        if unknown:
            warnings.warn(f"maskedmha.export: dynamic_axes names {sorted(unknown)} are neither "
                          "input nor output names; ignored", stacklevel=2)
        dynamic_axes = {k: v for k, v in dynamic_axes.items() if k in known}

    modes = [(m, m.training) for m in model.modules()]
    if any(t for _, t in modes):
        warnings.warn("maskedmha.export: the model is (partly) in training mode; exporting it "
                      "in eval() mode (dropout off); its modes are restored afterwards",
                      stacklevel=2)
        model.eval()
    try:
        with torch.no_grad(), _quiet(), patched(
                exporter, remove_padding=remove_padding,
                skip_padded_queries=skip_padded_queries) as packing:
            if exporter == "torchscript":
                proto = _export_torchscript(model, args, kwargs, names, output_names,
                                            dynamic_axes, opset_version)
            else:
                proto = _export_dynamo(model, args, kwargs, names, tensors, output_names,
                                       dynamic_axes, opset_version)
    finally:
        for m, training in modes:
            m.training = training

    if packing is not None and packing.summary():
        warnings.warn(packing.summary(), stacklevel=2)
    _rename_dims(proto, dynamic_axes, names, output_names)
    attach_functions(proto, fallback=fallback or not fused)
    if not fused:
        from maskedmha.decompose import decompose
        proto = decompose(proto)
    if f is not None:
        if isinstance(f, (str, os.PathLike)):
            onnx.save(proto, os.fspath(f))
        else:
            f.write(proto.SerializeToString())
    return proto
