"""maskedmha's sessions register onnxruntime-extensions' library when (and only when) the model
imports one of its domains, or when told to; a missing package is one clear error.  The model is
maskedmha.bpe's tokenizer graph (GPT2Tokenizer, ai.onnx.contrib): no torch needed."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import maskedmha
from maskedmha import bpe
from maskedmha.session import (EXTENSIONS_KEY, REGISTERED_KEY, ExtensionsNotInstalledError,
                               extensions_options, model_domains, needs_extensions)

from helpers.fused_model import feeds as mha_feeds, fused_model


@pytest.fixture(scope="module")
def tokenizer():
    return bpe.train(["the cat sat on the mat", "the dog sat on the log"] * 2, 20)


@pytest.fixture(scope="module")
def tok_model(tokenizer):
    return bpe.tokenizer_model(tokenizer, max_positions=16)


def _entry(opts, key):
    try:
        return opts.get_session_config_entry(key) or None
    except RuntimeError:
        return None


def _extensions_library():
    import onnxruntime_extensions

    return onnxruntime_extensions.get_library_path()


def _run(sess, texts):
    return sess.run(None, {"text": np.array(texts, dtype=object)})


def test_model_domains_from_path_bytes_and_proto(tok_model, tmp_path):
    path = tmp_path / "tok.onnx"
    onnx.save(tok_model, path)
    want = {"ai.onnx", "ai.onnx.contrib"}
    assert model_domains(tok_model) == want
    assert model_domains(str(path)) == want
    assert model_domains(path) == want
    assert model_domains(tok_model.SerializeToString()) == want
    assert needs_extensions(str(path))
    plain = fused_model(with_fallback=True)
    assert "ai.onnx.contrib" not in model_domains(plain)
    assert not needs_extensions(plain)
    # Not a model / no such file: no domains, ORT reports the real problem itself.
    assert model_domains(b"\xff\xff\xff") == set()
    assert model_domains(str(tmp_path / "missing.onnx")) == set()


def test_session_registers_extensions_for_a_model_that_imports_them(tok_model, tokenizer):
    data = tok_model.SerializeToString()
    opts = ort.SessionOptions()
    sess = maskedmha.InferenceSession(data, opts)
    ids, pad = _run(sess, ["the cat", "", "the dog sat"])
    want_ids, want_pad = tokenizer.batch(["the cat", "", "the dog sat"], 16)
    np.testing.assert_array_equal(pad, want_pad)
    np.testing.assert_array_equal(np.where(pad, 0, ids), np.where(want_pad, 0, want_ids))
    assert _entry(opts, EXTENSIONS_KEY) == _extensions_library()
    assert _entry(opts, REGISTERED_KEY) == maskedmha.get_library_path()
    # Idempotent: the same options serve a second session (a second registration would fail it
    # with "Domain already set in registry").
    _run(maskedmha.InferenceSession(data, opts), ["again"])


def test_plain_model_does_not_get_extensions():
    opts = ort.SessionOptions()
    sess = maskedmha.InferenceSession(fused_model(with_fallback=True).SerializeToString(), opts)
    sess.run(None, mha_feeds())
    assert _entry(opts, EXTENSIONS_KEY) is None


def test_explicit_override(tok_model):
    data = tok_model.SerializeToString()
    with pytest.raises(Exception, match="GPT2Tokenizer"):  # ORT: not a registered op
        maskedmha.InferenceSession(data, extensions=False)
    opts = maskedmha.session_options(extensions=True)  # no model needed
    assert _entry(opts, EXTENSIONS_KEY) == _extensions_library()
    _run(ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]), ["x"])
    # And given the model, session_options decides like InferenceSession.
    opts = maskedmha.session_options(model=data)
    assert _entry(opts, EXTENSIONS_KEY) == _extensions_library()


@pytest.mark.parametrize("first", ["extensions", "maskedmha"])
def test_either_registration_order(tok_model, first):
    """Both libraries on one options object, whichever goes first; each library binds only its
    own ops (the tokenizer graph runs, and so does a fused MaskedMHA model)."""
    opts = ort.SessionOptions()
    if first == "extensions":
        extensions_options(opts, extensions=True)
        maskedmha.session_options(opts)
    else:
        maskedmha.session_options(opts)
        extensions_options(opts, extensions=True)
    _run(ort.InferenceSession(tok_model.SerializeToString(), opts,
                              providers=["CPUExecutionProvider"]), ["a b"])
    sess = ort.InferenceSession(fused_model(with_fallback=False).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    sess.run(None, mha_feeds())


def test_extensions_options_leaves_maskedmha_out(tok_model):
    opts = extensions_options(model=tok_model)
    assert _entry(opts, EXTENSIONS_KEY) == _extensions_library()
    assert _entry(opts, REGISTERED_KEY) is None


def test_missing_package_is_one_clear_error(tok_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # import now fails
    opts = ort.SessionOptions()
    with pytest.raises(ExtensionsNotInstalledError, match=r'maskedmha\[text\].*onnxruntime-extensions'):
        maskedmha.InferenceSession(tok_model.SerializeToString(), opts)
    # Nothing was registered on the caller's options before the error.
    assert _entry(opts, REGISTERED_KEY) is None
    # A model without extensions ops still runs without the package.
    maskedmha.InferenceSession(fused_model(with_fallback=True).SerializeToString()).run(
        None, mha_feeds())
