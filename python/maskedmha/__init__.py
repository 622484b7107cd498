"""maskedmha: PyTorch's nn.MultiheadAttention (with key_padding_mask / attn_mask) as ONE fused
ONNX node ``com.maskedmha::MaskedMHA``, run by a C++ ONNX Runtime kernel, with a standard-op
fallback carried in every exported file.  The op is specified in docs/MaskedMHA.md.

Running a model needs onnxruntime, onnx and numpy only; ``export`` needs torch and onnxscript
(``pip install "maskedmha[export]"``).  ``export`` and ``decompose`` therefore import their modules
on first call: ``import maskedmha`` never imports torch (it took 3.7 of 4.4 s)."""
from __future__ import annotations

import importlib
import sys
import types

from .symbolic.schema import DOMAIN, OP_TYPE, OPSET_VERSION  # noqa: E402

from ._library import LibraryNotFoundError, get_library_path  # noqa: E402
from .session import InferenceSession, LibraryLoadError, session_options  # noqa: E402

EXPORT_EXTRA_HINT = 'pip install "maskedmha[export]"'


def _call(name: str, *args, **kwargs):
    """maskedmha.<name>.<name>(*args, **kwargs), the module imported on first use.  A missing torch
    or onnxscript (on import, or later: the dynamo exporter imports onnxscript when it runs) is ONE
    error naming the extra to install, not a traceback through torch's import machinery."""
    try:
        return getattr(importlib.import_module(f"{__name__}.{name}"), name)(*args, **kwargs)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in ("torch", "onnxscript"):
            raise ModuleNotFoundError(
                f"maskedmha.{name} needs {top}, which is not installed: {EXPORT_EXTRA_HINT}",
                name=exc.name) from None
        raise


def export(model, args, f=None, **kwargs):
    """Export a torch model with every ``nn.MultiheadAttention`` as ONE MaskedMHA node (needs the
    ``export`` extra).  Arguments and return value: ``maskedmha.export.export``."""
    return _call("export", model, args, f, **kwargs)


def decompose(model):
    """A copy of ``model`` with every MaskedMHA node replaced by its standard-op fallback.
    Arguments and return value: ``maskedmha.decompose.decompose``."""
    return _call("decompose", model)


def optimize(model_in, model_out, level="extended"):
    """Save an ONNX Runtime-optimized copy of ``model_in`` that keeps its fallback (runs without
    the library too).  Arguments and return value: ``maskedmha.optimize.optimize``."""
    return _call("optimize", model_in, model_out, level=level)


def fuse(model, report=None):
    """A copy of a stock-exported ``model`` (ModelProto or path) with every
    nn.MultiheadAttention subgraph replaced by one verified MaskedMHA node.  Arguments and return
    value: ``maskedmha.fuse.fuse``."""
    return _call("fuse", model, report)


class _Package(types.ModuleType):
    """Importing a submodule binds it as an attribute of its package (``maskedmha.export`` would
    become the module ``export.py`` the first time anything imports it); the eager imports this
    package used to do hid that.  Keep the public functions ``export``, ``decompose`` and
    ``optimize`` instead:
    the submodules stay reachable through ``sys.modules`` / ``from maskedmha.export import ...``."""

    def __setattr__(self, name, value):
        if name in ("export", "decompose", "optimize", "fuse") and isinstance(value,
                                                                       types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "DOMAIN", "OP_TYPE", "OPSET_VERSION", "get_library_path", "session_options",
    "InferenceSession", "export", "decompose", "optimize", "fuse", "LibraryNotFoundError",
    "LibraryLoadError",
]
__version__ = "0.1.0"
