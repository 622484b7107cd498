"""maskedmha.bpe's Python tokenizer gives exactly the ids and padding mask of its ONNX twin
(onnxruntime-extensions' GPT2Tokenizer + BOS + truncation) on random Unicode text: what makes the
end-to-end comparison with PyTorch (test_text_model.py) a comparison of the same tokens."""
from __future__ import annotations

import random

import numpy as np
import pytest

import maskedmha
from maskedmha import bpe

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé text, naïve café — déjà vu!",
    "数据 和 模型 的 注意力",
    "It's 2026; we've 12 cats & 3 dogs' toys.",
    "  spaced   out\ttext\nnew lines  ",
] * 3

# Letters, digits, marks, symbols and every kind of whitespace the pre-tokenizer tells apart,
# including the characters where str.isspace() and the op disagree (U+001F, U+0085).
ALPHABET = list("abcdeftheTHE  '\t\n0123456789.,!?-éüßçñ数据模型注意") + [
    "😀", "\u00a0", "\u2003", "٣", "Ⅻ", "\u200b", "'s", "'ll", " 's", bpe.SPECIAL_TOKEN, "\r\n",
    "ﬁ", "\x1f", "\x85", "\u3000", "\u0301", "ǅ", "ʰ", "½", "²", "\u2028", "\x0b", "\x0c",
    "\U0001F468\u200d\U0001F469", " א", "ـ", "\x00"]

MAX_POSITIONS = 24


@pytest.fixture(scope="module")
def tokenizer():
    return bpe.train(CORPUS, 150)


@pytest.fixture(scope="module")
def session(tokenizer):
    return maskedmha.InferenceSession(bpe.tokenizer_model(tokenizer, MAX_POSITIONS).SerializeToString())


def _run(session, texts):
    return session.run(None, {"text": np.array(texts, dtype=object)})


def _assert_same(got, want):
    (ids, pad), (want_ids, want_pad) = got, want
    assert ids.dtype == np.int64 and pad.dtype == np.bool_
    np.testing.assert_array_equal(pad, want_pad)
    # Padded positions hold the op's filler; only valid positions carry meaning.
    np.testing.assert_array_equal(np.where(pad, 0, ids), np.where(want_pad, 0, want_ids))


def test_trained_vocabulary_merges(tokenizer):
    assert len(tokenizer.merges) > 100
    # Merges really shorten text: the test would not exercise BPE otherwise.
    assert len(tokenizer.encode("The quick brown fox")) < len("The quick brown fox")


def test_python_tokenizer_matches_the_op_on_random_unicode(tokenizer):
    big = maskedmha.InferenceSession(
        bpe.tokenizer_model(tokenizer, 10**6).SerializeToString())  # no truncation here
    rng = random.Random(0)
    for _ in range(400):
        texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30)))
                 for _ in range(rng.randint(1, 5))]
        _assert_same(_run(big, texts), tokenizer.batch(texts))


def test_padding_bos_and_truncation(session, tokenizer):
    texts = ["", "a", "the quick brown fox " * 20, "数据"]
    ids, pad = _run(session, texts)
    _assert_same((ids, pad), tokenizer.batch(texts, MAX_POSITIONS))
    assert ids.shape == (4, MAX_POSITIONS)           # the long string is cut, not an error
    assert (ids[:, 0] == tokenizer.bos_id).all()     # every row starts with BOS ...
    assert pad[0].tolist() == [False] + [True] * (MAX_POSITIONS - 1)  # ... the empty one has only it
    assert not pad[2].any()


def test_empty_batch_gives_an_empty_result(session, tokenizer):
    ids, pad = _run(session, [])
    assert ids.shape == pad.shape == (0, 1)
    assert tokenizer.batch([], MAX_POSITIONS)[0].shape == (0, 1)


def test_nul_ends_a_string_in_both(session, tokenizer):
    """The op reads each string as a C string; the Python twin does the same, on purpose."""
    _assert_same(_run(session, ["ab\x00cd", "ab"]), tokenizer.batch(["ab\x00cd", "ab"], MAX_POSITIONS))
    assert tokenizer.encode("ab\x00cd") == tokenizer.encode("ab")


def test_files_round_trip(tokenizer, tmp_path):
    again = bpe.ByteBPE.from_files(*tokenizer.save(str(tmp_path)))
    assert again.vocab == tokenizer.vocab and again.merges == tokenizer.merges
    assert again.encode("naïve café, it's 数据") == tokenizer.encode("naïve café, it's 数据")


def test_vocabulary_errors_are_clear(tokenizer):
    vocab = dict(tokenizer.vocab)
    del vocab[bpe.SPECIAL_TOKEN]
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        bpe.ByteBPE(vocab, tokenizer.merges)
    with pytest.raises(ValueError, match="256 byte tokens"):
        bpe.ByteBPE({"a": 0, bpe.SPECIAL_TOKEN: 1}, [])
    with pytest.raises(ValueError, match="max_positions"):
        bpe.tokenizer_model(tokenizer, 0)
