"""Where the compiled custom-op library is, and a clear error when it is not there.

The library ships inside the package (``pip install .`` builds it with CMake).  Paths are resolved
from the package's own ``__path__``, never from the current directory, so a stray file of the same
name in the working directory can never be loaded by accident.
"""
from __future__ import annotations

import os
import sys

LIBRARY_ENV = "MASKEDMHA_LIBRARY"
"""Environment variable naming another build of the library (e.g. the sanitizer build)."""

_LIBRARY_NAMES = {
    "linux": "libmaskedmha_ops.so",
    "darwin": "libmaskedmha_ops.dylib",
    "win32": "maskedmha_ops.dll",
}


class LibraryNotFoundError(FileNotFoundError):
    """The custom-op shared library is missing: the package was not built or installed fully."""


def library_file_name() -> str:
    return _LIBRARY_NAMES.get(sys.platform, _LIBRARY_NAMES["linux"])


def get_library_path() -> str:
    """Absolute path of the custom-op shared library, to pass to
    ``onnxruntime.SessionOptions.register_custom_ops_library`` (or ORT's C/C++ API)."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not os.path.isabs(override):
            raise LibraryNotFoundError(
                f"{LIBRARY_ENV}={override!r} must be an absolute path "
                "(relative paths would depend on the current directory)")
        if not os.path.isfile(override):
            raise LibraryNotFoundError(f"{LIBRARY_ENV}={override!r}: no such file")
        return override

    import maskedmha  # the package's search path also covers editable installs

    name = library_file_name()
    searched = []
    for entry in maskedmha.__path__:
        candidate = os.path.join(os.path.abspath(entry), name)
        searched.append(candidate)
        if os.path.isfile(candidate):
            return candidate
    raise LibraryNotFoundError(
        f"maskedmha's custom-op library {name} was not found (looked in: {', '.join(searched)}). "
        "Install the package with `pip install .` so that CMake builds it, or set "
        f"{LIBRARY_ENV} to the absolute path of a build.")
