"""Writes what the C++ text example runs: a small text encoder (byte-level BPE vocabulary learned
from a built-in corpus, token + position embeddings, 2-layer nn.TransformerEncoder with
src_key_padding_mask, mean over the valid tokens) exported by maskedmha.text.export_text_model to
DIR/text_model.onnx: one string input, embeddings out.  Also writes the vocabulary
(DIR/vocab.json, DIR/merges.txt) and, when TEXTs are given, PyTorch's own output for them
(DIR/expected_output.npy; the strings tokenized in Python by the same vocabulary).

    python examples/cpp/make_text_model.py DIR [TEXT ...]

Needs torch and onnxruntime-extensions (pip install "maskedmha[export,text]"); the C++ program
needs neither Python nor torch (but see README.md about the extensions wheel's library).
"""
import os
import sys

import numpy as np
import torch

from maskedmha import bpe
from maskedmha.text import TextEncoder, export_text_model

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention masks hide the padding of short sentences in a batch.",
    "Raw text in, embeddings out: one ONNX file from strings to vectors.",
    "Ünïcödé text, naïve café — déjà vu!",
    "数据 和 模型 的 注意力",
    "It's 2026; we've 12 cats & 3 dogs' toys.",
]
MAX_POSITIONS = 64

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
texts = sys.argv[2:]
os.makedirs(out_dir, exist_ok=True)
tokenizer = bpe.train(CORPUS, 300)
tokenizer.save(out_dir)
torch.manual_seed(0)
model = TextEncoder(tokenizer.vocab_size, max_positions=MAX_POSITIONS).eval()
export_text_model(model, tokenizer, os.path.join(out_dir, "text_model.onnx"))
written = ["text_model.onnx", "vocab.json", "merges.txt"]
if texts:
    ids, pad = tokenizer.batch(texts, MAX_POSITIONS)
    torch.backends.mha.set_fastpath_enabled(False)  # the path maskedmha matches (see README, "Use")
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(pad)).numpy()
    np.save(os.path.join(out_dir, "expected_output.npy"), expected)
    written.append("expected_output.npy")
print(f"wrote {', '.join(os.path.join(out_dir, w) for w in written)}")
