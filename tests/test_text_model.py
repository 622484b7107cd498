"""Raw text in, embeddings out: maskedmha.text.export_text_model's one file (GPT2Tokenizer +
padding + key padding mask + TransformerEncoder with fused MaskedMHA + masked mean) against
PyTorch on the same strings tokenized in Python, with the kernel (fused) and without it (the
file's standard-op fallback, and decompose()); bad inputs get clear errors or the documented
truncation."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import maskedmha
from maskedmha import bpe
from maskedmha.decompose import decompose
from maskedmha.session import extensions_options
from maskedmha.text import TextEncoder, export_text_model

from helpers.reference import no_fastpath

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention masks hide the padding of short sentences in a batch.",
    "Ünïcödé text, naïve café — déjà vu!",
    "数据 和 模型 的 注意力",
    "It's 2026; we've 12 cats & 3 dogs' toys.",
] * 2
MAX_POSITIONS = 40

BATCHES = {
    "very_different_lengths": [
        "hi",
        "The quick brown fox jumps over the lazy dog while the attention masks hide the padding.",
        "",
        "数据 和 模型 的 注意力 — naïve café 😀",
    ],
    "single": ["déjà vu"],
    "eight": [f"sentence {i}: " + "the lazy dog " * i for i in range(8)],
}


@pytest.fixture(scope="module")
def tokenizer():
    return bpe.train(CORPUS, 200)


@pytest.fixture(scope="module")
def torch_model(tokenizer):
    torch.manual_seed(0)
    return TextEncoder(tokenizer.vocab_size, d_model=32, nhead=4, num_layers=2,
                       dim_feedforward=64, max_positions=MAX_POSITIONS).eval()


@pytest.fixture(scope="module")
def text_model(torch_model, tokenizer):
    return export_text_model(torch_model, tokenizer)


@pytest.fixture(scope="module")
def sessions(text_model):
    data = text_model.SerializeToString()
    return {
        # The library registered: MaskedMHA runs our kernel.
        "fused": maskedmha.InferenceSession(data),
        # Only onnxruntime-extensions: ORT runs the file's fallback function for MaskedMHA.
        "fallback": ort.InferenceSession(data, extensions_options(model=data),
                                         providers=["CPUExecutionProvider"]),
        # decompose(): the fallback inlined, standard ops plus the tokenizer.
        "decomposed": ort.InferenceSession(decompose(text_model).SerializeToString(),
                                           extensions_options(extensions=True),
                                           providers=["CPUExecutionProvider"]),
    }


def _reference(torch_model, tokenizer, texts, mask=True):
    ids, pad = tokenizer.batch(texts, MAX_POSITIONS)
    if not mask:
        pad = np.zeros_like(pad)
    with no_fastpath(), torch.no_grad():
        return torch_model(torch.from_numpy(ids), torch.from_numpy(pad)).numpy()


def _run(sess, texts):
    return sess.run(None, {"text": np.array(texts, dtype=object)})[0]


def _assert_close(got, want):
    assert got.shape == want.shape
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    assert float(np.max(np.abs(got - want), initial=0.0)) <= 1e-5 * scale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


def test_one_file_from_strings(text_model):
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in text_model.graph.input]
    assert inputs == [("text", 8)]  # TensorProto.STRING
    ops = [(n.domain, n.op_type) for n in text_model.graph.node]
    assert ("ai.onnx.contrib", "GPT2Tokenizer") in ops
    assert ops.count(("com.maskedmha", "MaskedMHA")) == 2  # one per encoder layer
    assert any(f.name == "MaskedMHA" for f in text_model.functions)  # the fallback travels along


@pytest.mark.parametrize("which", ["fused", "fallback", "decomposed"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_matches_pytorch(sessions, torch_model, tokenizer, which, batch):
    texts = BATCHES[batch]
    got = _run(sessions[which], texts)
    _assert_close(got, _reference(torch_model, tokenizer, texts))
    if batch == "very_different_lengths":
        # The check sees the mask: PyTorch without it gives other numbers.
        unmasked = _reference(torch_model, tokenizer, texts, mask=False)
        assert not np.allclose(got, unmasked, rtol=1e-3, atol=1e-3)


def test_rows_do_not_depend_on_their_batch(sessions):
    """What the padding mask is for: a sentence's embedding is the same alone and next to much
    longer ones."""
    texts = BATCHES["very_different_lengths"]
    together = _run(sessions["fused"], texts)
    for i, t in enumerate(texts):
        _assert_close(_run(sessions["fused"], [t])[0], together[i])


def test_too_long_string_is_truncated_as_documented(sessions, torch_model, tokenizer):
    long = "the lazy dog jumps " * 50
    assert len(tokenizer.encode(long)) > MAX_POSITIONS
    got = _run(sessions["fused"], [long, "short"])
    _assert_close(got, _reference(torch_model, tokenizer, [long, "short"]))
    # The same as the string cut to its first MAX_POSITIONS - 1 tokens (BOS is the first).
    ids, _ = tokenizer.batch([long], MAX_POSITIONS)
    with no_fastpath(), torch.no_grad():
        cut = torch_model(torch.from_numpy(ids), torch.zeros(ids.shape, dtype=torch.bool)).numpy()
    _assert_close(got[:1], cut)


def test_empty_batch_gives_empty_output(sessions):
    for which in ("fused", "fallback"):
        out = _run(sessions[which], [])
        assert out.shape == (0, 32) and out.dtype == np.float32


def test_non_string_input_is_a_clear_error(sessions):
    with pytest.raises(Exception, match=r"expected: \(tensor\(string\)\)"):
        sessions["fused"].run(None, {"text": np.array([1.0, 2.0], dtype=np.float32)})
    with pytest.raises(Exception, match="Invalid rank for input: text"):
        sessions["fused"].run(None, {"text": np.array([["a", "b"]], dtype=object)})


def test_numpy_unicode_arrays_work_too(sessions, torch_model, tokenizer):
    texts = ["naïve", "a longer sentence here"]
    got = sessions["fused"].run(None, {"text": np.array(texts)})[0]  # dtype <U22, not object
    _assert_close(got, _reference(torch_model, tokenizer, texts))


def test_max_positions_beyond_the_table_is_refused(torch_model, tokenizer):
    with pytest.raises(ValueError, match="exceeds the model's position table"):
        export_text_model(torch_model, tokenizer, max_positions=MAX_POSITIONS + 1)


def test_info_and_optimize_register_the_extensions_too(text_model, tmp_path):
    """`maskedmha info` runs the file with and without our library, `maskedmha optimize` runs ORT
    on it: both must also register onnxruntime-extensions for the tokenizer in front, or ORT
    refuses the file ('GPT2Tokenizer is not a registered function/op')."""
    import subprocess
    import sys
    src = tmp_path / "text.onnx"
    src.write_bytes(text_model.SerializeToString())
    info = subprocess.run([sys.executable, "-m", "maskedmha", "info", str(src)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr[-2000:]
    assert "GPT2Tokenizer" not in info.stdout, info.stdout
    assert "refused" not in info.stdout, info.stdout
    optimized = maskedmha.optimize(str(src), str(tmp_path / "opt.onnx"))
    assert any(n.op_type == "MaskedMHA" for n in optimized.graph.node)
