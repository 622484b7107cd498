"""ONNX Runtime sessions with the MaskedMHA kernel registered: the one line users need."""
from __future__ import annotations

import onnxruntime as ort

from ._library import get_library_path


class LibraryLoadError(RuntimeError):
    """ORT refused to load the library (wrong ABI, wrong platform, corrupt file)."""


def session_options(sess_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or new options) with the custom-op library registered."""
    opts = sess_options if sess_options is not None else ort.SessionOptions()
    path = get_library_path()
    try:
        opts.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises a bare RuntimeError/Fail with dlopen's text
        raise LibraryLoadError(
            f"onnxruntime {ort.__version__} could not load the MaskedMHA library {path}: {exc}. "
            "Rebuild it for this platform and onnxruntime (pip install --force-reinstall .)."
        ) from exc
    return opts


def InferenceSession(path_or_bytes, sess_options: ort.SessionOptions | None = None,
                     providers=None, **kwargs) -> ort.InferenceSession:
    """``onnxruntime.InferenceSession`` with the MaskedMHA library registered (CPU EP by default)."""
    if providers is None:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(path_or_bytes, sess_options=session_options(sess_options),
                                providers=providers, **kwargs)
