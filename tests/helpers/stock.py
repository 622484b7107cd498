"""Stock ``torch.onnx.export`` files (no maskedmha involved) of the export test cases and of a
small nn.Transformer: what ``maskedmha fuse`` is given.  Exports are cached per process (each
takes 0.1 s with TorchScript, about 1 s with dynamo), so the fuse tests share them."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings

import onnx
import torch

from .cases import CASES, EXPORT_SHAPE, build_module, dynamic_axes, input_names, make_inputs
from .cases import output_names
from .reference import no_fastpath

# Newest opset each exporter writes with torch 2.13 (torch.onnx._constants: TorchScript 20,
# dynamo 23); 17 is the oldest the dynamo exporter reaches (it exports 18 and converts down).
NEWEST_OPSET = {"torchscript": 20, "dynamo": 23}
OPSETS = {"torchscript": (17, 20), "dynamo": (17, 23)}


def stock_export(module, args: tuple, exporter: str, opset: int, names: list, outputs: list,
                 axes: dict | None) -> onnx.ModelProto:
    """``module`` exported by torch.onnx's own ``exporter`` ("torchscript" or "dynamo")."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), no_fastpath(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            f = io.BytesIO()
            torch.onnx.export(module, args, f, dynamo=False, opset_version=opset,
                              input_names=names, output_names=outputs, dynamic_axes=axes)
            return onnx.load_from_string(f.getvalue())
        # torch.onnx cannot turn these dynamic_axes into dynamic_shapes itself; maskedmha's
        # exporter front end can (the conversion only: the export is torch's own)
        from maskedmha.export import _dynamic_shapes, _resolve_input_names
        resolved, tensors = _resolve_input_names(module, args, {}, names)
        shapes = _dynamic_shapes(module, args, {}, resolved, tensors, axes)
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                 input_names=names, output_names=outputs,
                                 dynamic_shapes=shapes)
        return prog.model_proto


@functools.lru_cache(maxsize=None)
def stock_case(case_name: str, exporter: str, opset: int) -> bytes:
    """The case's module exported the stock way at EXPORT_SHAPE with its dynamic axes
    (serialized: callers parse their own copy)."""
    case = next(c for c in CASES if c.name == case_name)
    args = make_inputs(case, *EXPORT_SHAPE)
    model = stock_export(build_module(case), tuple(args.values()), exporter, opset,
                         input_names(case, args), output_names(case), dynamic_axes(case))
    return model.SerializeToString()


@functools.lru_cache(maxsize=None)
def stock_demo(exporter: str, opset: int) -> bytes:
    """maskedmha.demo's nn.Transformer (2+2 layers: 6 attentions, padding + causal masks)
    exported the stock way at (batch 2, src 12, tgt 10) with dynamic axes (serialized)."""
    from maskedmha.demo import DYNAMIC_AXES, NAMES, DemoTranslator, demo_inputs
    torch.manual_seed(0)
    model = DemoTranslator().eval()
    return stock_export(model, demo_inputs(2, 12, 10), exporter, opset, NAMES, ["output"],
                        DYNAMIC_AXES).SerializeToString()
