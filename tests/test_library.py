"""Finding and loading the custom-op library: clear errors, never the current directory."""
from __future__ import annotations

import os

import onnxruntime as ort
import pytest

import maskedmha
from maskedmha._library import LIBRARY_ENV, library_file_name


def test_library_path_is_absolute_and_loads():
    path = maskedmha.get_library_path()
    assert os.path.isabs(path) and os.path.isfile(path)
    opts = maskedmha.session_options()
    assert isinstance(opts, ort.SessionOptions)


def test_current_directory_is_never_searched(tmp_path, monkeypatch):
    (tmp_path / library_file_name()).write_bytes(b"not a library")
    (tmp_path / "maskedmha").mkdir()
    (tmp_path / "maskedmha" / library_file_name()).write_bytes(b"not a library")
    monkeypatch.chdir(tmp_path)
    assert not maskedmha.get_library_path().startswith(str(tmp_path))


def test_relative_override_is_refused(monkeypatch):
    monkeypatch.setenv(LIBRARY_ENV, "libmaskedmha_ops.so")
    with pytest.raises(maskedmha.LibraryNotFoundError, match="absolute"):
        maskedmha.get_library_path()


def test_missing_library_names_the_file(monkeypatch, tmp_path):
    missing = str(tmp_path / "gone.so")
    monkeypatch.setenv(LIBRARY_ENV, missing)
    with pytest.raises(maskedmha.LibraryNotFoundError, match="gone.so"):
        maskedmha.session_options()


def test_missing_from_package_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    monkeypatch.setattr(maskedmha, "__path__", [str(tmp_path)])
    with pytest.raises(maskedmha.LibraryNotFoundError, match="pip install"):
        maskedmha.get_library_path()


def test_library_of_wrong_format_gives_load_error(monkeypatch, tmp_path):
    bogus = tmp_path / "libmaskedmha_ops.so"
    bogus.write_bytes(b"\x7fELF this is not a shared object")
    monkeypatch.setenv(LIBRARY_ENV, str(bogus))
    with pytest.raises(maskedmha.LibraryLoadError, match="could not load"):
        maskedmha.session_options()
