"""ONNX Runtime sessions with the MaskedMHA kernel registered: the one line users need.

A model whose graph also holds onnxruntime-extensions ops (a tokenizer in front of the Transformer,
see ``maskedmha.text``) needs that package's custom-op library as well: ``InferenceSession``
registers it when the model imports one of its domains, and ``session_options`` does when it is
given the model (or ``extensions=True``)."""
from __future__ import annotations

import io
import os

import onnxruntime as ort

from ._library import get_library_path

REGISTERED_KEY = "maskedmha.library_path"
"""Session config entry that marks options on which ``session_options`` registered the library.

Why a config entry and not a (weak) set of options objects: the mark lives on the options
themselves, so it needs no global state or lock, and it records *which* library was registered;
ORT passes unknown ``maskedmha.*`` keys through untouched (checked with ORT 1.17 and 1.32)."""

EXTENSIONS_KEY = "maskedmha.extensions_library_path"
"""The same mark for onnxruntime-extensions' library (registering it twice on one options object
fails the session the same way)."""

EXTENSIONS_DOMAINS = ("ai.onnx.contrib", "com.microsoft.extensions")
"""The operator domains onnxruntime-extensions' library registers its kernels in."""

TEXT_EXTRA_HINT = 'pip install "maskedmha[text]" (installs onnxruntime-extensions)'


class LibraryLoadError(RuntimeError):
    """ORT refused to load the library (wrong ABI, wrong platform, corrupt file)."""


class ExtensionsNotInstalledError(ImportError):
    """The model needs onnxruntime-extensions' kernels and the package is not installed."""


def _config_entry(opts: ort.SessionOptions, key: str) -> str | None:
    try:
        return opts.get_session_config_entry(key) or None
    except RuntimeError:  # ORT raises when the key is absent
        return None


def _registered_path(opts: ort.SessionOptions) -> str | None:
    return _config_entry(opts, REGISTERED_KEY)


def _varint(f) -> int | None:
    """One protobuf varint from the file object ``f``; None at end of file."""
    shift = value = 0
    while True:
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7


def model_domains(model) -> set[str]:
    """The operator-set domains a model imports (``ModelProto.opset_import``), read from a path, the
    serialized bytes or an ``onnx.ModelProto``.

    A path or bytes is scanned at the protobuf wire level: the graph (weights and all) is skipped
    by its length, not parsed, so asking costs microseconds even for a file of gigabytes."""
    if hasattr(model, "opset_import"):
        return {o.domain or "ai.onnx" for o in model.opset_import}
    import onnx  # onnx is a dependency of maskedmha; only the tiny OperatorSetIdProto is parsed

    try:
        f = open(os.fspath(model), "rb") if isinstance(model, (str, os.PathLike)) else io.BytesIO(model)
    except (OSError, TypeError):  # no such file, not bytes: ORT's own error says it best
        return set()
    domains = set()
    with f:
        while True:
            key = _varint(f)
            if key is None:
                break
            field, wire = key >> 3, key & 7
            if wire == 0:
                _varint(f)
            elif wire == 1:
                f.seek(8, io.SEEK_CUR)
            elif wire == 5:
                f.seek(4, io.SEEK_CUR)
            elif wire == 2:
                size = _varint(f)
                if size is None:
                    break
                if field == 8:  # ModelProto.opset_import
                    try:
                        opset = onnx.OperatorSetIdProto.FromString(f.read(size))
                    except Exception:  # noqa: BLE001 - DecodeError: not an ONNX protobuf
                        break
                    domains.add(opset.domain or "ai.onnx")
                else:
                    f.seek(size, io.SEEK_CUR)
            else:  # not a ModelProto: let ORT say what is wrong with it
                break
    return domains


def needs_extensions(model) -> bool:
    """Whether ``model`` (path, bytes or ModelProto) imports an onnxruntime-extensions domain."""
    return bool(model_domains(model) & set(EXTENSIONS_DOMAINS))


def extensions_library_path() -> str:
    """Path of onnxruntime-extensions' custom-op library; one clear error when it is missing."""
    try:
        import onnxruntime_extensions
    except ImportError as exc:
        raise ExtensionsNotInstalledError(
            "the model uses onnxruntime-extensions ops (domain "
            f"{' or '.join(EXTENSIONS_DOMAINS)}), which is not installed: {TEXT_EXTRA_HINT}",
            name="onnxruntime_extensions") from exc
    return onnxruntime_extensions.get_library_path()


def _register(opts: ort.SessionOptions, key: str, path: str, what: str) -> None:
    done = _config_entry(opts, key)
    if done == path:
        return
    if done is not None:
        raise LibraryLoadError(
            f"these SessionOptions already have the {what} library {done} registered; "
            f"cannot register {path} as well (use new SessionOptions).")
    try:
        opts.register_custom_ops_library(path)
    except Exception as exc:  # ORT raises a bare RuntimeError/Fail with dlopen's text
        # The library refuses an ORT older than its C API floor itself (ops/register.cc says
        # "too old"): then the runtime, not the library, needs replacing.
        if what != "MaskedMHA":
            fix = "Reinstall it for this onnxruntime (pip install --force-reinstall onnxruntime-extensions)."
        elif "too old" in str(exc):
            fix = "Upgrade onnxruntime (pip install 'onnxruntime>=1.17')."
        else:
            fix = "Rebuild it for this platform (pip install --force-reinstall maskedmha)."
        raise LibraryLoadError(
            f"onnxruntime {ort.__version__} could not load the {what} library {path}: {exc}. "
            f"{fix}") from exc
    opts.add_session_config_entry(key, path)


def extensions_options(sess_options: ort.SessionOptions | None = None, *, model=None,
                       extensions: bool | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or new options) with onnxruntime-extensions' library registered if
    ``extensions`` is True, or if it is None and ``model`` (path, bytes or ModelProto) imports one
    of its domains; the MaskedMHA library is not touched (``compare`` runs the decomposed graph,
    which still holds the tokenizer, with this alone).  Idempotent like ``session_options``."""
    opts = sess_options if sess_options is not None else ort.SessionOptions()
    if extensions is None:
        extensions = model is not None and needs_extensions(model)
    if extensions:
        _register(opts, EXTENSIONS_KEY, extensions_library_path(), "onnxruntime-extensions")
    return opts


def session_options(sess_options: ort.SessionOptions | None = None, *, model=None,
                    extensions: bool | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or new options) with the custom-op library registered, and
    onnxruntime-extensions' library too when ``extensions`` is True or, by default, when ``model``
    (path, bytes or ModelProto; optional) imports one of its domains (``ai.onnx.contrib``,
    ``com.microsoft.extensions``).

    Idempotent: options this function has already registered a library on are returned as they
    are (a second ``register_custom_ops_library`` makes ORT fail with "Domain already set in
    registry" when the session is created)."""
    opts = sess_options if sess_options is not None else ort.SessionOptions()
    # Decide (and fail on a missing onnxruntime-extensions) before touching the options.
    if extensions is None:
        extensions = model is not None and needs_extensions(model)
    ext_path = extensions_library_path() if extensions else None
    _register(opts, REGISTERED_KEY, get_library_path(), "MaskedMHA")
    if ext_path is not None:
        _register(opts, EXTENSIONS_KEY, ext_path, "onnxruntime-extensions")
    return opts


def InferenceSession(path_or_bytes, sess_options: ort.SessionOptions | None = None,
                     providers=None, *, extensions: bool | None = None,
                     **kwargs) -> ort.InferenceSession:
    """``onnxruntime.InferenceSession`` with the MaskedMHA library registered (CPU EP by default),
    and onnxruntime-extensions' when the model imports one of its domains (``extensions=True`` /
    ``False`` decides instead).  The same ``sess_options`` may be passed for any number of
    sessions.  Options on which you registered onnxruntime-extensions yourself need
    ``extensions=False`` (ORT refuses a library registered twice, and only our own registrations
    are marked on the options)."""
    if providers is None:
        providers = ["CPUExecutionProvider"]
    opts = session_options(sess_options, model=path_or_bytes, extensions=extensions)
    return ort.InferenceSession(path_or_bytes, sess_options=opts, providers=providers, **kwargs)
