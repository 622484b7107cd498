"""Raw text in, embeddings out: ONE ONNX file holding the tokenizer (onnxruntime-extensions'
GPT2Tokenizer, see ``maskedmha.bpe``), the padding to the longest string, the key padding mask
and a Transformer whose attention is fused MaskedMHA.  Needs torch (export) and
onnxruntime-extensions (run): ``pip install "maskedmha[export,text]"``.

    tok = maskedmha.bpe.train(corpus, 300)               # or ByteBPE.from_files(vocab, merges)
    model = TextEncoder(tok.vocab_size).eval()           # or any module(input_ids, key_padding_mask)
    export_text_model(model, tok, "text.onnx", max_positions=64)
    sess = maskedmha.InferenceSession("text.onnx")       # registers both libraries
    emb, = sess.run(None, {"text": np.array(["a sentence", "another one"], dtype=object)})

The file's one input is ``text`` (string [batch]); its output is the model's.  A string longer than
``max_positions - 1`` tokens is cut to that many (documented truncation, as the position table
ends there), an empty string is the BOS token alone, an empty batch gives an empty output.
"""
from __future__ import annotations

import onnx
import torch
from torch import nn

from .bpe import ByteBPE, tokenizer_model
from .export import export


class TextEncoder(nn.Module):
    """Token + learned position embeddings, ``nn.TransformerEncoder`` with
    ``src_key_padding_mask``, and the mean over the valid (not padded) tokens: (B, T) ids and a
    (B, T) bool mask (True = padding) -> (B, d_model) embeddings."""

    def __init__(self, vocab_size: int, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 128, max_positions: int = 64):
        super().__init__()
        self.max_positions = max_positions
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_positions, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0,
                                           batch_first=True)
        # enable_nested_tensor=False: the nested-tensor path would drop padded positions in eval
        # mode (outputs 0 there); the documented path keeps them (masked), as the export does.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(pos)[None]
        x = self.encoder(x, src_key_padding_mask=key_padding_mask)
        keep = (~key_padding_mask).unsqueeze(-1).to(x.dtype)
        # Every row holds its BOS token, so the count is >= 1; clamp keeps an all-padding row
        # (not produced by the tokenizer graph) finite.
        return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_text_model(model: nn.Module, tokenizer: ByteBPE, f=None, *, max_positions: int | None = None,
                      output_name: str = "embeddings", fused: bool = True,
                      fallback: bool = True) -> onnx.ModelProto:
    """Export ``model`` (called as ``model(input_ids, key_padding_mask)``) with
    ``maskedmha.export`` and put ``maskedmha.bpe.tokenizer_model(tokenizer, max_positions)`` in
    front of it with ``onnx.compose.merge_models``: one file from strings to ``output_name``.
    ``max_positions`` defaults to ``model.max_positions``.  ``fused``/``fallback`` as in
    ``maskedmha.export``.  Writes ``f`` when given; returns the model.

    Why onnx.compose and not onnxruntime-extensions' ``PrePostProcessor``: that tool rebuilds the
    ModelProto from the merged graph with only its own opset imports, so the exported file's
    model-local functions (MaskedMHA's standard-op fallback) and its com.maskedmha import would be
    lost; it also has no GPT2Tokenizer step.  ``merge_models`` keeps functions and imports."""
    table = getattr(model, "max_positions", None)
    if max_positions is None:
        if table is None:
            raise ValueError("export_text_model: give max_positions (the model's position table "
                             "size); the model has no max_positions attribute")
        max_positions = table
    if table is not None and max_positions > table:
        # Longer strings would index past the position table: an ORT Gather error at run time.
        raise ValueError(f"export_text_model: max_positions={max_positions} exceeds the model's "
                         f"position table ({table})")
    example_ids, example_pad = (torch.from_numpy(a) for a in tokenizer.batch(
        ["an example sentence to trace", "short"], max_positions))
    body = export(model, (example_ids, example_pad), None,
                  input_names=["input_ids", "key_padding_mask"], output_names=[output_name],
                  dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                "key_padding_mask": {0: "batch", 1: "tokens"},
                                output_name: {0: "batch"}},
                  fused=fused, fallback=fallback)
    front = tokenizer_model(tokenizer, max_positions, opset=_opset(body), ir_version=body.ir_version)
    merged = onnx.compose.merge_models(
        front, body, io_map=[("input_ids", "input_ids"), ("key_padding_mask", "key_padding_mask")],
        producer_name=body.producer_name, producer_version=body.producer_version)
    merged.graph.name = "text_to_" + output_name
    # merge_models lists a domain both models import twice (checked with onnx 1.23: the default
    # domain appears twice); versions agree (it refuses otherwise), so keep one entry per domain.
    seen, unique = set(), []
    for entry in merged.opset_import:
        if (entry.domain or "ai.onnx") not in seen:
            seen.add(entry.domain or "ai.onnx")
            unique.append(entry)
    del merged.opset_import[:]
    merged.opset_import.extend(unique)
    if f is not None:
        onnx.save(merged, f)
    return merged
