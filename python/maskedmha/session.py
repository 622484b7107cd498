"""ONNX Runtime sessions with the MaskedMHA kernel registered: the one line users need."""
from __future__ import annotations

import onnxruntime as ort

from ._library import get_library_path

REGISTERED_KEY = "maskedmha.library_path"
"""Session config entry that marks options on which ``session_options`` registered the library.

Why a config entry and not a (weak) set of options objects: the mark lives on the options
themselves, so it needs no global state or lock, and it records *which* library was registered;
ORT passes unknown ``maskedmha.*`` keys through untouched (checked with ORT 1.17 and 1.32)."""


class LibraryLoadError(RuntimeError):
    """ORT refused to load the library (wrong ABI, wrong platform, corrupt file)."""


def _registered_path(opts: ort.SessionOptions) -> str | None:
    try:
        return opts.get_session_config_entry(REGISTERED_KEY) or None
    except RuntimeError:  # ORT raises when the key is absent
        return None


def session_options(sess_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or new options) with the custom-op library registered.

    Idempotent: options this function has already registered the library on are returned as they
    are (a second ``register_custom_ops_library`` makes ORT fail with "Domain already set in
    registry" when the session is created)."""
    opts = sess_options if sess_options is not None else ort.SessionOptions()
    path = get_library_path()
    done = _registered_path(opts)
    if done == path:
        return opts
    if done is not None:
        raise LibraryLoadError(
            f"these SessionOptions already have the MaskedMHA library {done} registered; "
            f"cannot register {path} as well (use new SessionOptions).")
    try:
        opts.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises a bare RuntimeError/Fail with dlopen's text
        # The library refuses an ORT older than its C API floor itself (ops/register.cc says
        # "too old"): then the runtime, not the library, needs replacing.
        fix = ("Upgrade onnxruntime (pip install 'onnxruntime>=1.17')." if "too old" in str(exc)
               else "Rebuild it for this platform (pip install --force-reinstall maskedmha).")
        raise LibraryLoadError(
            f"onnxruntime {ort.__version__} could not load the MaskedMHA library {path}: {exc}. "
            f"{fix}") from exc
    opts.add_session_config_entry(REGISTERED_KEY, path)
    return opts


def InferenceSession(path_or_bytes, sess_options: ort.SessionOptions | None = None,
                     providers=None, **kwargs) -> ort.InferenceSession:
    """``onnxruntime.InferenceSession`` with the MaskedMHA library registered (CPU EP by default).
    The same ``sess_options`` may be passed for any number of sessions."""
    if providers is None:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(path_or_bytes, sess_options=session_options(sess_options),
                                providers=providers, **kwargs)
