"""Registering the library is idempotent: options that already carry it are left as they are
(ORT itself fails with "Domain already set in registry" on a second registration)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import maskedmha
from maskedmha._library import LIBRARY_ENV
from helpers.fused_model import feeds, fused_model


@pytest.fixture(scope="module")
def model_bytes():
    return fused_model(with_fallback=False).SerializeToString()


def test_session_options_of_session_options(model_bytes):
    opts = maskedmha.session_options(maskedmha.session_options())
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    assert sess.run(None, feeds())[0].shape == (2, 5, 8)


def test_two_sessions_share_one_options_object(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    first = maskedmha.InferenceSession(model_bytes, opts)
    second = maskedmha.InferenceSession(model_bytes, opts)
    a, b = (s.run(None, feeds())[0] for s in (first, second))
    np.testing.assert_array_equal(a, b)


def test_options_registered_with_another_library_are_refused(monkeypatch, tmp_path):
    opts = maskedmha.session_options()
    other = tmp_path / "libmaskedmha_ops.so"
    other.write_bytes(b"")  # never loaded: the check comes first
    monkeypatch.setenv(LIBRARY_ENV, str(other))
    with pytest.raises(maskedmha.LibraryLoadError, match="already have the MaskedMHA library .* registered"):
        maskedmha.session_options(opts)
