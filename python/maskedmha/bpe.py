"""Byte-level BPE (GPT-2's scheme) twice: a pure-Python tokenizer, and the same tokenizer as an
ONNX graph built on onnxruntime-extensions' ``GPT2Tokenizer`` op.  Torch-free.

Why ``GPT2Tokenizer`` (domain ``ai.onnx.contrib``): of onnxruntime-extensions' tokenizer ops it is
the one that takes a *batch* of strings and itself pads to the longest one and returns the
attention mask, which is where a ``key_padding_mask`` comes from.  Its BERT ops
(``BertTokenizer``, ``HfBertTokenizer``, ``BasicTokenizer``) take one string (or one pair) per call
and the package's pre/post-processing ``BertTokenizer`` step says "only support batch size 1";
``WordpieceTokenizer`` returns token strings, not ids.  Byte-level BPE also has no unknown token:
every byte sequence, any script, any emoji, tokenizes.

The graph (``tokenizer_model``) is ``GPT2Tokenizer`` (pads with id 0, mask 0) followed by standard
ops: a BOS token (``<|endoftext|>``, as GPT-2 uses it) prepended to every row, so that an empty
string still has one token to attend to (a row with no valid key has no softmax); the rows cut
to ``max_positions`` tokens, BOS included (documented truncation: a longer string keeps its first
``max_positions - 1`` tokens); ``key_padding_mask = attention_mask == 0`` (True = padding, PyTorch's
convention).  ``ByteBPE.batch`` computes exactly that in Python.
"""
from __future__ import annotations

import collections
import json
import os
import unicodedata

import numpy as np

SPECIAL_TOKEN = "<|endoftext|>"
"""GPT-2's only special token; onnxruntime-extensions' GPT2Tokenizer uses it as unk/BOS/EOS and
emits its id where the text contains it literally (so does ``ByteBPE.encode``)."""

PAD_ID = 0
"""The id GPT2Tokenizer writes into padded positions (masked out: the value never matters)."""

EXTENSIONS_DOMAIN = "ai.onnx.contrib"
"""The domain onnxruntime-extensions registers GPT2Tokenizer in."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the vocabulary's alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_CHAR = bytes_to_unicode()
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


_CONTROL_SPACES = frozenset("\r\n\t\f\v")


def _kind(c: str) -> str:
    """GPT-2's pre-tokenizer classes: L (\\p{L}), N (\\p{N}), S (\\s), O (anything else).
    Whitespace as onnxruntime-extensions' pre-tokenizer defines it (bpe_utils.hpp, IsZ): the five
    control spaces and Unicode category Z; not str.isspace(), which also counts U+001C-U+001F and
    U+0085 (the op does not, and "\\x85's" then tokenizes differently)."""
    cat = unicodedata.category(c)[0]
    if c in _CONTROL_SPACES or cat == "Z":
        return "S"
    return cat if cat in "LN" else "O"


def pretokenize(text: str) -> list[str]:
    """GPT-2's split, ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``,
    written out by hand (Python's ``re`` has no ``\\p{L}``)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "'":
            suffix = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
            if suffix is not None:
                out.append(text[i:i + 1 + len(suffix)])
                i += 1 + len(suffix)
                continue
        j = i + 1 if text[i] == " " and i + 1 < n and _kind(text[i + 1]) != "S" else i
        kind = _kind(text[j])
        if kind != "S":  # ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+'
            k = j + 1
            while k < n and _kind(text[k]) == kind:
                k += 1
            out.append(text[i:k])
            i = k
            continue
        k = i
        while k < n and _kind(text[k]) == "S":
            k += 1
        if k < n and k - i > 1:  # '\s+(?!\S)' leaves the last space to the word after it
            k -= 1
        out.append(text[i:k])
        i = k
    return out


class ByteBPE:
    """A byte-level BPE vocabulary (``vocab``: token -> id, ``merges``: pairs in rank order) and
    its Python tokenizer, which agrees with onnxruntime-extensions' GPT2Tokenizer op on the same
    files (tests/test_text_tokenizer.py checks that on random Unicode text)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        missing = [b for b, c in _BYTE_CHAR.items() if c not in self.vocab]
        if missing:
            raise ValueError(f"a byte-level vocabulary needs all 256 byte tokens; {len(missing)} "
                             f"are missing (e.g. byte {missing[0]})")
        if SPECIAL_TOKEN not in self.vocab:
            raise ValueError(f"the vocabulary needs the token {SPECIAL_TOKEN!r} (BOS)")
        for a, b in self.merges:
            if a + b not in self.vocab:
                raise ValueError(f"merge {a!r} {b!r}: {a + b!r} is not in the vocabulary")
        self.bos_id = self.vocab[SPECIAL_TOKEN]
        self._cache: dict[str, list[int]] = {}

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_json: str, merges_txt: str) -> "ByteBPE":
        """GPT-2's file formats: vocab.json ({token: id}) and merges.txt ("a b" per line, an
        optional "#version" first line)."""
        with open(vocab_json, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            merges = [tuple(line.split(" ")) for line in f.read().splitlines()
                      if line and not line.startswith("#version")]
        return cls(vocab, merges)

    def save(self, directory: str) -> tuple[str, str]:
        """Write vocab.json and merges.txt into ``directory``; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        vocab_path = os.path.join(directory, "vocab.json")
        merges_path = os.path.join(directory, "merges.txt")
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write(self.vocab_json())
        with open(merges_path, "w", encoding="utf-8") as f:
            f.write(self.merges_text())
        return vocab_path, merges_path

    def vocab_json(self) -> str:
        return json.dumps(self.vocab, ensure_ascii=False)

    def merges_text(self) -> str:
        return "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    # -- tokenizing -------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        parts = [_BYTE_CHAR[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), len(self.ranks)), i)
                     for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == len(self.ranks):
                break
            first, second = self.merges[rank]
            merged, i = [], 0
            while i < len(parts):  # every occurrence, left to right, non-overlapping
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.vocab[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS), as GPT2Tokenizer computes them; like the op, which
        reads each string as a C string, it ignores everything from a NUL character on."""
        text = text.split("\0", 1)[0]
        ids: list[int] = []
        for k, piece in enumerate(text.split(SPECIAL_TOKEN)):
            if k:
                ids.append(self.bos_id)
            for word in pretokenize(piece):
                ids += self._bpe(word)
        return ids

    def batch(self, texts, max_positions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int64 (B, T), key_padding_mask bool (B, T), True = padding) of a batch, as
        the graph of ``tokenizer_model`` computes them: BOS first, padded with ``PAD_ID`` to the
        longest row, rows cut to ``max_positions`` tokens."""
        rows = [[self.bos_id] + self.encode(t) for t in texts]
        if max_positions is not None:
            rows = [r[:max_positions] for r in rows]
        width = max((len(r) for r in rows), default=1)  # an empty batch: (0, 1), BOS only
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        pad = np.ones((len(rows), width), dtype=bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            pad[i, :len(r)] = False
        return ids, pad


def train(corpus, num_merges: int) -> ByteBPE:
    """A small byte-level BPE vocabulary learned from ``corpus`` (an iterable of strings): the 256
    byte tokens, then up to ``num_merges`` merges of the most frequent adjacent pair (ties broken
    by the pair itself, so the result is deterministic), then ``<|endoftext|>``."""
    words = collections.Counter(w for text in corpus for w in pretokenize(text))
    seqs = {w: [_BYTE_CHAR[b] for b in w.encode("utf-8")] for w in words}
    vocab = {c: i for i, c in enumerate(_BYTE_CHAR[b] for b in range(256))}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        counts: collections.Counter = collections.Counter()
        for w, parts in seqs.items():
            for pair in zip(parts, parts[1:]):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < 2:
            break
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for w, parts in seqs.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            seqs[w] = merged
    vocab[SPECIAL_TOKEN] = len(vocab)
    return ByteBPE(vocab, merges)


def tokenizer_model(bpe: ByteBPE, max_positions: int, opset: int = 18, ir_version: int = 10):
    """An ONNX model: ``text`` (string [batch]) -> ``input_ids`` (int64 [batch, tokens]) and
    ``key_padding_mask`` (bool [batch, tokens], True = padding), computed by onnxruntime-extensions'
    GPT2Tokenizer and standard ops as the module docstring describes (``ByteBPE.batch`` is its
    Python twin).  ``opset`` / ``ir_version`` should be the model's it is merged with."""
    import onnx
    from onnx import TensorProto, helper

    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1 (the BOS token), got {max_positions}")

    def const(name, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, TensorProto.INT64, [len(values)], values))

    def v(name):  # the graph's inner values, named apart from any model it is merged with
        return "tokenizer/" + name

    nodes = [
        helper.make_node("GPT2Tokenizer", ["text"], [v("ids"), v("mask")], name="tokenize",
                         domain=EXTENSIONS_DOMAIN, vocab=bpe.vocab_json(),
                         merges=bpe.merges_text(), padding_length=-1),
        # One BOS column: shape (batch, 1), whatever the batch.
        helper.make_node("Shape", ["text"], [v("batch")]),
        const(v("one"), [1]),
        helper.make_node("Concat", [v("batch"), v("one")], [v("col_shape")], axis=0),
        helper.make_node("ConstantOfShape", [v("col_shape")], [v("bos_col")],
                         value=helper.make_tensor("bos", TensorProto.INT64, [1], [bpe.bos_id])),
        helper.make_node("ConstantOfShape", [v("col_shape")], [v("valid_col")],
                         value=helper.make_tensor("valid", TensorProto.INT64, [1], [1])),
        helper.make_node("Concat", [v("bos_col"), v("ids")], [v("ids_bos")], axis=1),
        helper.make_node("Concat", [v("valid_col"), v("mask")], [v("mask_bos")], axis=1),
        # Truncation to the model's positions (documented; a Gather past the table would fail).
        const(v("zero"), [0]),
        const(v("limit"), [max_positions]),
        helper.make_node("Slice", [v("ids_bos"), v("zero"), v("limit"), v("one")], ["input_ids"]),
        helper.make_node("Slice", [v("mask_bos"), v("zero"), v("limit"), v("one")], [v("mask_cut")]),
        helper.make_node("Equal", [v("mask_cut"), v("zero")], ["key_padding_mask"]),
    ]
    graph = helper.make_graph(
        nodes, "tokenizer",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("key_padding_mask", TensorProto.BOOL, ["batch", "tokens"])])
    return helper.make_model(graph, ir_version=ir_version, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(EXTENSIONS_DOMAIN, 1)])
