"""`maskedmha triton` (issue 17): the Triton model repository entry it writes.

config.pbtxt is parsed with protobuf's text_format into Triton's own ``inference.ModelConfig``
(tritonclient's model_config_pb2, loaded by file path: tritonclient is installed without its
grpc dependency) and every field is checked against the ONNX file as ONNX Runtime reports it
(the checks Triton's ONNX Runtime backend makes when it loads a model: input count, names, data
types, dims with the batch axis).  The copied model then runs in an ORT session built exactly as
the configuration describes (its op_library_filename registered, its thread count, inputs named
and typed as it says), fused (ORT's profile shows MaskedMHA kernels), against PyTorch."""
from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.utils import np_to_triton_dtype  # numpy only; tritonclient.http needs gevent

import maskedmha
from helpers.exporting import close
from helpers.fused_model import E as FUSED_E
from helpers.fused_model import feeds as fused_feeds
from helpers.fused_model import fused_model
from helpers.reference import no_fastpath
from maskedmha.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LIBRARY = os.path.basename(maskedmha.get_library_path())

# Triton data type -> (ONNX Runtime's type string, numpy dtype): what the backend maps them to.
TRITON_TO_ORT = {"TYPE_FP32": ("tensor(float)", np.float32),
                 "TYPE_BOOL": ("tensor(bool)", np.bool_),
                 "TYPE_INT64": ("tensor(int64)", np.int64),
                 "TYPE_FP16": ("tensor(float16)", np.float16)}


def _model_config_pb2():
    """tritonclient/grpc/model_config_pb2.py by path: importing tritonclient.grpc needs grpc."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None, "tritonclient is a test dependency (scripts/setup.sh installs it)"
    path = os.path.join(spec.submodule_search_locations[0], "grpc", "model_config_pb2.py")
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


PB2 = _model_config_pb2()


def read_config(entry) -> "PB2.ModelConfig":
    with open(os.path.join(entry, "config.pbtxt"), encoding="utf-8") as f:
        return text_format.Parse(f.read(), PB2.ModelConfig())


def _one_line_error(capsys, argv, *needles):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskedmha: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _write(capsys, argv) -> str:
    rc = main(["triton", *argv])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "", (rc, out, err)
    return out


# --- the configuration against the model, as Triton's backend checks it ---------------------------

def session_from_config(entry, cfg, profile_dir) -> ort.InferenceSession:
    """The session Triton's ONNX Runtime backend creates for one instance of ``cfg``."""
    opts = ort.SessionOptions()
    # All graph optimizations: the backend's default (its README, "level").
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for lib in cfg.model_operations.op_library_filename:
        opts.register_custom_ops_library(lib)
    if "intra_op_thread_count" in cfg.parameters:
        opts.intra_op_num_threads = int(cfg.parameters["intra_op_thread_count"].string_value)
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(str(profile_dir), "ort_profile")
    model = os.path.join(entry, "1", cfg.default_model_filename or "model.onnx")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def check_against_session(cfg, sess):
    """Every input and output of ``cfg``: the session has it, with that type, and the dims (with
    the batch axis in front when max_batch_size > 0; reshape when given) are the model's, -1 for
    its dynamic axes; nothing more, nothing less."""
    def full(io):
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        return ([-1] if cfg.max_batch_size > 0 else []) + dims

    for ios, infos in ((cfg.input, sess.get_inputs()), (cfg.output, sess.get_outputs())):
        by_name = {i.name: i for i in infos}
        assert [io.name for io in ios] == [i.name for i in infos]
        for io in ios:
            dtype = PB2.DataType.Name(io.data_type)
            assert TRITON_TO_ORT[dtype][0] == by_name[io.name].type, (io.name, dtype)
            model_dims = [d if isinstance(d, int) else -1 for d in by_name[io.name].shape]
            assert full(io) == model_dims, (io.name, full(io), by_name[io.name].shape)
            assert all(d >= 1 or d == -1 for d in io.dims), io


def feeds_as_config_says(cfg, arrays: dict) -> dict:
    """``arrays`` checked against the configuration: every input named, with its data type and
    dims (-1: any size; a batch axis in front when batching)."""
    assert set(arrays) == {io.name for io in cfg.input}
    for io in cfg.input:
        a = arrays[io.name]
        assert a.dtype == TRITON_TO_ORT[PB2.DataType.Name(io.data_type)][1], io.name
        shape = a.shape[1:] if cfg.max_batch_size > 0 else a.shape
        if cfg.max_batch_size > 0:
            assert 1 <= a.shape[0] <= cfg.max_batch_size
        assert len(shape) == len(io.dims) and all(d in (-1, s) for d, s in zip(io.dims, shape))
    return arrays


def kernels_run(sess) -> set:
    with open(sess.end_profiling()) as f:
        return {e["args"].get("op_name") for e in json.load(f) if e.get("cat") == "Node"}


# --- models ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """README's "Use" export, smaller: padding + causal masks, dynamic batch and lengths."""
    torch.manual_seed(0)
    model = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                 dim_feedforward=64, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    src_pad = torch.zeros(2, 7, dtype=torch.bool)
    src_pad[0, 5:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5)
    masks = {"src_key_padding_mask": src_pad, "memory_key_padding_mask": src_pad,
             "tgt_mask": causal}
    path = tmp_path_factory.mktemp("transformer") / "transformer.onnx"
    maskedmha.export(model, (src, tgt), str(path), kwargs=masks, input_names=["src", "tgt", *masks],
                     dynamic_axes={"src": {0: "batch", 1: "src_len"},
                                   "tgt": {0: "batch", 1: "tgt_len"},
                                   "src_key_padding_mask": {0: "batch", 1: "src_len"},
                                   "memory_key_padding_mask": {0: "batch", 1: "src_len"},
                                   "tgt_mask": {0: "tgt_len", 1: "tgt_len"}},
                     exporter="dynamo")
    return model, str(path)


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory):
    """One nn.MultiheadAttention on unbatched [len, E] inputs with a [len] padding mask: every
    input and output starts with the dynamic axis 'len', which is not a batch axis."""
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(16, 2).eval()
    x, kpm = torch.randn(6, 16), torch.zeros(6, dtype=torch.bool)
    names = ["query", "key", "value", "key_padding_mask"]
    path = tmp_path_factory.mktemp("unbatched") / "mha.onnx"
    maskedmha.export(mha, (x, x, x), str(path),
                     kwargs={"key_padding_mask": kpm, "need_weights": False},
                     input_names=names, output_names=["attn_output"],
                     dynamic_axes={n: {0: "len"} for n in names + ["attn_output"]},
                     exporter="dynamo")
    return mha, str(path)


# --- the demo Transformer -------------------------------------------------------------------------

def test_transformer_entry_every_field(capsys, transformer, tmp_path):
    _, path = transformer
    repo = tmp_path / "repo"
    out = _write(capsys, [path, str(repo), "--name", "transformer", "--instances", "2",
                          "--threads", "1"])
    entry = repo / "transformer"
    assert sorted(os.listdir(entry)) == ["1", "config.pbtxt", LIBRARY]
    assert os.listdir(entry / "1") == ["model.onnx"]
    assert filecmp.cmp(path, entry / "1" / "model.onnx", shallow=False)
    assert filecmp.cmp(maskedmha.get_library_path(), entry / LIBRARY, shallow=False)

    cfg = read_config(entry)
    assert cfg.name == "transformer" and cfg.backend == "onnxruntime" and cfg.platform == ""
    # tgt_mask [tgt_len, tgt_len] has no batch axis: Triton must not batch, dims are full.
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert "tgt_mask" in out and "max_batch_size 0" in out
    types = {io.name: (PB2.DataType.Name(io.data_type), list(io.dims)) for io in cfg.input}
    assert types == {"src": ("TYPE_FP32", [-1, -1, 32]), "tgt": ("TYPE_FP32", [-1, -1, 32]),
                     "src_key_padding_mask": ("TYPE_BOOL", [-1, -1]),
                     "memory_key_padding_mask": ("TYPE_BOOL", [-1, -1]),
                     "tgt_mask": ("TYPE_FP32", [-1, -1])}
    assert len(cfg.output) == 1 and list(cfg.output[0].dims) == [-1, -1, 32]
    assert list(cfg.model_operations.op_library_filename) == [str(entry.resolve() / LIBRARY)]
    assert f"op_library_filename: {entry.resolve() / LIBRARY}" in out
    assert [(g.count, PB2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == \
        [(2, "KIND_CPU")]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"intra_op_thread_count": "1"}
    # Nothing else is set (max_batch_size 0 is proto3's default, so not listed).
    assert {f.name for f, _ in cfg.ListFields()} == {
        "name", "backend", "input", "output", "instance_group", "model_operations", "parameters"}


def test_transformer_runs_fused_as_configured(capsys, transformer, tmp_path):
    model, path = transformer
    repo = tmp_path / "repo"
    _write(capsys, [path, str(repo), "--name", "t", "--threads", "2"])
    cfg = read_config(repo / "t")
    sess = session_from_config(repo / "t", cfg, tmp_path)
    check_against_session(cfg, sess)

    torch.manual_seed(2)
    batch, src_len, tgt_len = 3, 6, 4               # not the export shape
    src, tgt = torch.randn(batch, src_len, 32), torch.randn(batch, tgt_len, 32)
    pad = torch.zeros(batch, src_len, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 1:] = True
    masks = {"src_key_padding_mask": pad, "memory_key_padding_mask": pad,
             "tgt_mask": torch.nn.Transformer.generate_square_subsequent_mask(tgt_len)}
    feeds = feeds_as_config_says(cfg, {"src": src.numpy(), "tgt": tgt.numpy(),
                                       **{k: v.numpy() for k, v in masks.items()}})
    # What Triton's client sends for these arrays is what the configuration declares.
    assert {k: np_to_triton_dtype(v.dtype) for k, v in feeds.items()} == {
        io.name: PB2.DataType.Name(io.data_type).removeprefix("TYPE_") for io in cfg.input}
    (got,) = sess.run(None, feeds)
    with torch.no_grad(), no_fastpath():
        expected = model(src, tgt, **masks)
    close(got, expected, "Triton-configured session vs PyTorch")
    # Fused: our op's kernel ran, not the fallback's standard ops (the only Softmax is theirs).
    ran = kernels_run(sess)
    assert "MaskedMHA" in ran and "Softmax" not in ran, ran


def test_serving_doc_client_uses_the_configured_inputs(capsys, transformer, tmp_path):
    """docs/serving.md's client (shown, not run: no server here) is Python that parses, and the
    inputs it sends are the ones the configuration for README's export declares."""
    import ast
    text = open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8").read()
    (block,) = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python")]
    tree = ast.parse(block)
    feeds = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", None) == "feeds")
    _, path = transformer
    _write(capsys, [path, str(tmp_path / "repo"), "--name", "transformer"])
    cfg = read_config(tmp_path / "repo" / "transformer")
    assert [k.value for k in feeds.keys] == [io.name for io in cfg.input]
    assert '"transformer"' in block


def test_dynamic_batching_refused_without_batch_axis(capsys, transformer, tmp_path):
    _, path = transformer
    _one_line_error(capsys, ["triton", path, str(tmp_path / "r"), "--dynamic-batching"],
                    "--dynamic-batching needs a batch axis", "tgt_mask")
    _one_line_error(capsys, ["triton", path, str(tmp_path / "r"), "--max-batch-size", "8"],
                    "--max-batch-size 8", "no batch axis", "tgt_mask")
    assert not (tmp_path / "r").exists()


# --- a model without a batch axis -----------------------------------------------------------------

def test_unbatched_model(capsys, unbatched, tmp_path):
    mha, path = unbatched
    repo = tmp_path / "repo"
    out = _write(capsys, [path, str(repo)])                  # --name defaults to the file stem
    cfg = read_config(repo / "mha")
    assert cfg.name == "mha" and cfg.max_batch_size == 0
    assert "'len', which is not named as a batch axis" in out and "--batch-dim len" in out
    assert [(io.name, PB2.DataType.Name(io.data_type), list(io.dims)) for io in cfg.input] == [
        ("query", "TYPE_FP32", [-1, 16]), ("key", "TYPE_FP32", [-1, 16]),
        ("value", "TYPE_FP32", [-1, 16]), ("key_padding_mask", "TYPE_BOOL", [-1])]
    assert [(io.name, list(io.dims)) for io in cfg.output] == [("attn_output", [-1, 16])]
    assert [(g.count, PB2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == \
        [(1, "KIND_CPU")]
    assert not cfg.parameters and not cfg.HasField("dynamic_batching")
    sess = session_from_config(repo / "mha", cfg, tmp_path)
    check_against_session(cfg, sess)

    def run(x, kpm):
        return sess.run(None, feeds_as_config_says(cfg, {"query": x, "key": x, "value": x,
                                                         "key_padding_mask": kpm}))[0]

    rng = np.random.default_rng(3)
    x1, x2 = (rng.standard_normal((n, 16)).astype(np.float32) for n in (5, 5))
    k1, k2 = np.zeros(5, bool), np.zeros(5, bool)
    k1[3:] = True
    got = run(x1, k1)
    with torch.no_grad(), no_fastpath():
        t = torch.from_numpy(x1)
        expected, _ = mha(t, t, t, key_padding_mask=torch.from_numpy(k1), need_weights=False)
    close(got, expected, "unbatched model, Triton-configured session vs PyTorch")
    assert "MaskedMHA" in kernels_run(sess)
    # Why axis 0 must not be batched here: two requests joined along it attend to each other.
    joined = run(np.concatenate([x1, x2]), np.concatenate([k1, k2]))
    assert np.abs(joined[:5] - got).max() > 1e-3


def test_unbatched_model_batching_options(capsys, unbatched, tmp_path):
    _, path = unbatched
    _one_line_error(capsys, ["triton", path, str(tmp_path / "r"), "--max-batch-size", "2"],
                    "--max-batch-size 2", "no batch axis", "--batch-dim len")
    _one_line_error(capsys, ["triton", path, str(tmp_path / "r"), "--batch-dim", "batch"],
                    "--batch-dim batch", "input 'query' [len, 16] does not start with it")
    # The user's word that 'len' is a batch axis is taken (their model, their semantics).
    _write(capsys, [path, str(tmp_path / "r"), "--batch-dim", "len"])
    cfg = read_config(tmp_path / "r" / "mha")
    assert cfg.max_batch_size == 4
    assert [list(io.dims) for io in cfg.input] == [[16], [16], [16], [1]]
    # key_padding_mask [len] is a scalar per item: dims [1], reshaped to the model's [].
    assert [io.HasField("reshape") for io in cfg.input] == [False, False, False, True]
    assert list(cfg.input[3].reshape.shape) == []


# --- a batched model: max_batch_size, dynamic batching --------------------------------------------

def test_batched_model_dynamic_batching(capsys, tmp_path):
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model(with_fallback=True), path)  # x [batch, len, 8], mask [batch, len]
    _write(capsys, [str(path), str(tmp_path / "default")])
    assert read_config(tmp_path / "default" / "fused").max_batch_size == 4   # the backend's default

    out = _write(capsys, [str(path), str(tmp_path / "repo"), "--name", "mha",
                          "--max-batch-size", "8", "--dynamic-batching"])
    assert "max_batch_size 8 along 'batch', dynamic batching" in out
    cfg = read_config(tmp_path / "repo" / "mha")
    assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size) == []
    assert [(io.name, PB2.DataType.Name(io.data_type), list(io.dims)) for io in cfg.input] == [
        ("x", "TYPE_FP32", [-1, FUSED_E]), ("key_padding_mask", "TYPE_BOOL", [-1])]
    assert [(io.name, list(io.dims)) for io in cfg.output] == [("y", [-1, FUSED_E])]
    sess = session_from_config(tmp_path / "repo" / "mha", cfg, tmp_path)
    check_against_session(cfg, sess)
    # What Triton's dynamic batcher does: requests of one shape joined along the batch axis.
    a, b = fused_feeds(2, 6), fused_feeds(3, 6)
    b["x"] = b["x"][::-1].copy()
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    joined = sess.run(None, feeds_as_config_says(cfg, both))[0]
    alone = [sess.run(None, feeds_as_config_says(cfg, f))[0] for f in (a, b)]
    np.testing.assert_allclose(joined, np.concatenate(alone), rtol=1e-5, atol=1e-6)
    assert "MaskedMHA" in kernels_run(sess)
    fallback = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, a)[0]
    np.testing.assert_allclose(alone[0], fallback, rtol=1e-5, atol=1e-5)
    _one_line_error(capsys, ["triton", str(path), str(tmp_path / "z"), "--max-batch-size", "0",
                             "--dynamic-batching"],
                    "--dynamic-batching needs --max-batch-size >= 1")


# --- other models and mistakes --------------------------------------------------------------------

def _tiny(inputs, outputs, nodes, name="tiny") -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_model_without_maskedmha_nodes(capsys, tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(_tiny([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                    [helper.make_node("Relu", ["x"], ["y"])]), path)
    out = _write(capsys, [str(path), str(tmp_path / "repo")])
    assert "note: the model holds no com.maskedmha::MaskedMHA node" in out
    entry = tmp_path / "repo" / "relu"
    assert sorted(os.listdir(entry)) == ["1", "config.pbtxt"]             # no library copied
    cfg = read_config(entry)
    assert not cfg.HasField("model_operations") and cfg.max_batch_size == 4
    check_against_session(cfg, session_from_config(entry, cfg, tmp_path))


def test_scalars_types_and_sizes(capsys, tmp_path):
    """A per-item scalar of a batched model is dims [1] reshaped to [] (Triton has no empty
    dims); types without a Triton data type and size-0 axes are refused."""
    path = tmp_path / "scale.onnx"
    onnx.save(_tiny([helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch_size", 4]),
                     helper.make_tensor_value_info("s", TensorProto.INT64, ["batch_size"])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch_size", 4])],
                    [helper.make_node("Identity", ["x"], ["y"])]), path)
    _write(capsys, [str(path), str(tmp_path / "repo")])
    cfg = read_config(tmp_path / "repo" / "scale")
    s = cfg.input[1]
    assert (PB2.DataType.Name(s.data_type), list(s.dims), s.HasField("reshape"),
            list(s.reshape.shape)) == ("TYPE_INT64", [1], True, [])
    assert PB2.DataType.Name(cfg.input[0].data_type) == "TYPE_FP16"
    check_against_session(cfg, session_from_config(tmp_path / "repo" / "scale", cfg, tmp_path))

    for vi, needles in [
            (helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2]), ["'x' is COMPLEX64"]),
            (helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 2]), ["size 0 on axis 0"]),
            (helper.make_tensor_value_info("x", TensorProto.FLOAT, None), ["'x' has no shape"])]:
        bad = tmp_path / "bad.onnx"
        y = helper.make_tensor_value_info("y", vi.type.tensor_type.elem_type, [2])
        onnx.save(_tiny([vi], [y], [helper.make_node("Identity", ["x"], ["y"])]), bad)
        _one_line_error(capsys, ["triton", str(bad), str(tmp_path / "no")], *needles)
    assert not (tmp_path / "no").exists()


def test_existing_entry_needs_force(capsys, tmp_path):
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model(with_fallback=True), path)
    repo = tmp_path / "repo"
    _write(capsys, [str(path), str(repo)])
    (repo / "fused" / "2").mkdir()                # a later version Triton would serve instead
    before = (repo / "fused" / "config.pbtxt").read_text()
    _one_line_error(capsys, ["triton", str(path), str(repo), "--max-batch-size", "2"],
                    "already exists", "--force")
    assert (repo / "fused" / "config.pbtxt").read_text() == before
    _write(capsys, [str(path), str(repo), "--max-batch-size", "2", "--force"])
    assert sorted(os.listdir(repo / "fused")) == ["1", "config.pbtxt", LIBRARY]
    assert read_config(repo / "fused").max_batch_size == 2
    assert sorted(os.listdir(repo)) == ["fused"]                         # no work folders left


def test_library_path_in_the_server(capsys, tmp_path):
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model(with_fallback=True), path)
    _write(capsys, [str(path), str(tmp_path / "a"), "--server-repository", "/models/"])
    assert list(read_config(tmp_path / "a" / "fused").model_operations.op_library_filename) == \
        [f"/models/fused/{LIBRARY}"]
    _write(capsys, [str(path), str(tmp_path / "b"), "--library-path", "/opt/maskedmha/lib.so"])
    assert list(read_config(tmp_path / "b" / "fused").model_operations.op_library_filename) == \
        ["/opt/maskedmha/lib.so"]
    assert os.path.isfile(tmp_path / "b" / "fused" / LIBRARY)   # the copy to install there
    c = str(tmp_path / "c")
    _one_line_error(capsys, ["triton", str(path), c, "--library-path", "lib/x.so"],
                    "--library-path lib/x.so", "absolute path")
    _one_line_error(capsys, ["triton", str(path), c, "--server-repository", "models"],
                    "--server-repository models", "absolute path")


def test_relative_library_paths_do_not_resolve_against_the_model_folder(capsys, tmp_path):
    """Why op_library_filename is absolute: ORT's RegisterCustomOpsLibrary (which the backend
    calls with the field as written) dlopens the string, so a relative path resolves against the
    process's working directory and a bare name is searched on the library path only.  A fresh
    process each: a library dlopen has loaded once is found again by its name."""
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model(with_fallback=True), path)
    _write(capsys, [str(path), str(tmp_path / "repo")])
    code = ("import sys, onnxruntime as ort\n"
            "ort.SessionOptions().register_custom_ops_library(sys.argv[1])")

    def loads(name, cwd):
        return subprocess.run([sys.executable, "-c", code, name], cwd=cwd, capture_output=True,
                              timeout=120).returncode == 0

    entry = tmp_path / "repo" / "fused"
    assert loads(f"./{LIBRARY}", entry)                       # relative to the working directory
    assert not loads(f"fused/{LIBRARY}", entry)               # ... not to the model's folder
    assert not loads(LIBRARY, entry)                          # a bare name: the library path only
    assert loads(str(entry / LIBRARY), tmp_path)              # what the configuration holds


@pytest.mark.parametrize("argv,needles", [
    (["--name", "a/b"], ["--name 'a/b'", "one folder name"]),
    (["--name", ".hidden"], ["--name '.hidden'"]),
])
def test_bad_names(capsys, tmp_path, argv, needles):
    path = tmp_path / "fused.onnx"
    onnx.save(fused_model(with_fallback=True), path)
    _one_line_error(capsys, ["triton", str(path), str(tmp_path / "repo"), *argv], *needles)


def test_not_an_onnx_file(capsys, tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    _one_line_error(capsys, ["triton", str(text), str(tmp_path / "repo")],
                    "is not a readable ONNX model", str(text))
    _one_line_error(capsys, ["triton", str(tmp_path / "missing.onnx"), str(tmp_path / "repo")],
                    "no such file")
    assert not (tmp_path / "repo").exists()
    res = subprocess.run([sys.executable, "-m", "maskedmha", "triton", str(text),
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_runtime_needs_neither_torch_nor_tritonclient():
    code = ("import sys, maskedmha.triton, maskedmha.cli; "
            "bad = [m for m in ('torch', 'tritonclient') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_external_data_is_copied(capsys, tmp_path):
    """Weights kept outside the .onnx file resolve against the model's folder: they go into 1/."""
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True)
    onnx.save(fused_model(with_fallback=True), src / "fused.onnx", save_as_external_data=True,
              location="weights/fused.bin", size_threshold=0)
    _write(capsys, [str(src / "fused.onnx"), str(tmp_path / "repo")])
    entry = tmp_path / "repo" / "fused"
    assert filecmp.cmp(src / "weights" / "fused.bin", entry / "1" / "weights" / "fused.bin",
                       shallow=False)
    cfg = read_config(entry)
    sess = session_from_config(entry, cfg, tmp_path)
    check_against_session(cfg, sess)
    feeds = fused_feeds(2, 5)
    fallback = ort.InferenceSession(str(src / "fused.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], fallback.run(None, feeds)[0],
                               rtol=1e-5, atol=1e-5)
    os.remove(src / "weights" / "fused.bin")
    _one_line_error(capsys, ["triton", str(src / "fused.onnx"), str(tmp_path / "other")],
                    "'weights/fused.bin', which does not exist")
