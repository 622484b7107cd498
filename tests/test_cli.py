"""The `maskedmha` command: demo, compare, info, doctor, optimize, attach, --version, and one-line
errors (exit status 2, no traceback) for every user mistake."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import maskedmha
from helpers.fused_model import E, fused_model
from helpers.fused_model import feeds as fused_feeds
from maskedmha.cli import main


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskedmha", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def _one_line_error(capsys, argv, *needles, code=2):
    """main(argv) fails with ONE stderr line 'maskedmha: ...' naming the problem."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskedmha: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _argparse_error(capsys, argv, *needles):
    """Option-parsing errors exit through argparse: still one line, status 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    _, err = capsys.readouterr()
    assert e.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskedmha: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    paths = {"with": d / "with.onnx", "without": d / "without.onnx", "text": d / "notes.onnx",
             "empty": d / "empty.onnx", "dir": d / "folder.onnx", "relu": d / "relu.onnx"}
    onnx.save(fused_model(with_fallback=True), paths["with"])
    onnx.save(fused_model(with_fallback=False), paths["without"])
    paths["text"].write_text("this is not a model\n")
    paths["empty"].write_bytes(b"")
    paths["dir"].mkdir()
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(g), paths["relu"])
    good = fused_feeds(3, 6)
    np.savez(d / "good.npz", **good)
    np.savez(d / "lacking.npz", x=good["x"])
    np.savez(d / "extra.npz", **good, typo=good["x"])
    np.savez(d / "dtype.npz", x=good["x"].astype(np.float64), key_padding_mask=good["key_padding_mask"])
    np.savez(d / "rank.npz", x=good["x"][0], key_padding_mask=good["key_padding_mask"])
    np.savez(d / "fixed.npz", x=good["x"][:, :, :4], key_padding_mask=good["key_padding_mask"])
    np.save(d / "single.npy", good["x"])
    return {k: str(v) for k, v in paths.items()} | {"d": str(d)}


# --- errors: one line, status 2 ---------------------------------------------------------------

@pytest.mark.parametrize("command", ["compare", "info", "attach", "optimize"])
@pytest.mark.parametrize("which,needle", [
    ("text", "is not a readable ONNX model"), ("empty", "is empty"), ("dir", "is a directory"),
    ("missing", "no such file")])
def test_bad_model_files(capsys, files, command, which, needle, tmp_path):
    path = files.get(which, str(tmp_path / "missing.onnx"))
    argv = [command, path] + ([str(tmp_path / "out.onnx")] if command in ("attach", "optimize") else [])
    _one_line_error(capsys, argv, needle, path)


@pytest.mark.parametrize("command", ["compare", "attach"])
def test_model_without_maskedmha_nodes(capsys, files, tmp_path, command):
    argv = [command, files["relu"]] + ([str(tmp_path / "o.onnx")] if command == "attach" else [])
    _one_line_error(capsys, argv, "no com.maskedmha::MaskedMHA node")


@pytest.mark.parametrize("npz,needles", [
    ("nowhere.npz", ["--inputs", "no such file"]),
    ("lacking.npz", ["lacks graph input(s) 'key_padding_mask'"]),
    ("extra.npz", ["'typo'", "no input for"]),
    ("dtype.npz", ["'x' is float64", "expects float32"]),
    ("rank.npz", ["'x' has rank 2", "expects rank 3"]),
    ("fixed.npz", ["'x' has size 4 on axis 2", "fixes it at 8"]),
    ("single.npy", ["single array"]),
])
def test_bad_inputs_files(capsys, files, npz, needles):
    _one_line_error(capsys, ["compare", files["with"], "--inputs", f"{files['d']}/{npz}"], *needles)


def test_inputs_that_are_not_npz(capsys, files):
    _one_line_error(capsys, ["compare", files["with"], "--inputs", files["text"]], "not an .npz file")
    _one_line_error(capsys, ["compare", files["with"], "--inputs", files["dir"]], "is a directory")


def test_dim_naming_no_dimension(capsys, files):
    _one_line_error(capsys, ["compare", files["with"], "--dim", "bogus=3"],
                    "no dimension named 'bogus'", "batch, len")


def test_dim_with_inputs_is_refused(capsys, files):
    _one_line_error(capsys, ["compare", files["with"], "--inputs", f"{files['d']}/good.npz",
                             "--dim", "batch=3"], "--dim", "no effect with --inputs")


@pytest.mark.parametrize("argv,needles", [
    (["--runs", "0"], ["--runs", "at least 1, got 0"]),
    (["--runs", "-3"], ["--runs", "at least 1"]),
    (["--threads", "0"], ["--threads", "at least 1"]),
    (["--runs", "many"], ["--runs", "whole number"]),
    (["--dim", "batch"], ["--dim", "NAME=INT"]),
    (["--dim", "batch=x"], ["--dim", "NAME=INT"]),
    (["--dim", "batch=0"], ["--dim", "INT >= 1"]),
])
def test_bad_option_values(capsys, files, argv, needles):
    _argparse_error(capsys, ["compare", files["with"], *argv], *needles)


def test_no_command_and_unknown_command(capsys):
    _argparse_error(capsys, [], "required: COMMAND", "maskedmha --help")
    _argparse_error(capsys, ["frobnicate"], "invalid choice: 'frobnicate'")


def test_errors_have_no_traceback_in_a_real_process(files):
    res = _cli("compare", files["text"])
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("maskedmha: "), res.stderr
    assert "Traceback" not in res.stderr


def test_version():
    res = _cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"maskedmha {maskedmha.__version__}"


def test_every_option_has_help():
    from maskedmha.cli import _parser
    parser = _parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in [("maskedmha", parser)] + list(subs.items()):
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        assert sub.format_help()


# --- compare ------------------------------------------------------------------------------------

def test_compare_prints_inputs_spread_and_table(files):
    res = _cli("compare", files["with"], "--runs", "5", "--dim", "batch=3", "--dim", "len=6")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert re.search(r"^  x\s+float32\s+\(3, 6, 8\)\s+random normal$", out, re.M), out
    assert re.search(r"^  key_padding_mask\s+bool\s+\(3, 6\)\s+padding mask", out, re.M), out
    assert re.search(r"\| nodes\s+\| 1\s+\| \d+", out), out
    assert "com.maskedmha::MaskedMHA×1" in out
    lat = re.findall(r"([\d.]+) / ([\d.]+) / ([\d.]+) ms", out)
    assert len(lat) == 2 and all(float(a) <= float(b) <= float(c) for a, b, c in lat), out
    diff = float(re.search(r"max \|fused - decomposed\|: (\S+)", out).group(1))
    assert diff < 1e-4
    m = re.search(r"speed-up of fused over decomposed: ([\d.]+)x \(ratio of medians; run by run "
                  r"over 5 interleaved pairs: min ([\d.]+)x, median ([\d.]+)x, max ([\d.]+)x\)", out)
    assert m, out
    lo, mid, hi = map(float, m.group(2, 3, 4))
    assert lo <= mid <= hi


def test_compare_with_given_inputs(files):
    res = _cli("compare", files["with"], "--runs", "2", "--inputs", f"{files['d']}/good.npz")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^  x\s+float32\s+\(3, 6, 8\)\s+given$", res.stdout, re.M), res.stdout


def test_compare_spread_numbers():
    """The speed-up spread is over interleaved pairs of runs, min/median/max of each graph exact."""
    from maskedmha.compare import Comparison, GraphReport, format_table
    f = GraphReport("fused", 1, {}, median_ms=2.0, times_ms=[1.0, 2.0, 8.0])
    d = GraphReport("decomposed", 9, {}, median_ms=4.0, times_ms=[4.0, 4.0, 4.0])
    text = format_table(Comparison(f, d, 0.0, 0.0, 0))
    assert "1.000 / 2.000 / 8.000 ms" in text and "4.000 / 4.000 / 4.000 ms" in text
    assert "2.00x (ratio of medians; run by run over 3 interleaved pairs: min 0.50x, median 2.00x, max 4.00x)" in text
    assert "fused latencies vary more than 2x" in text and "decomposed latencies" not in text


def _index_model() -> onnx.ModelProto:
    """Like a PyG GPS layer: node features gathered through an int64 edge_index (2, num_edges),
    then one MaskedMHA over the edges.  Random int64 values in [0, 10) index past num_nodes."""
    rng = np.random.default_rng(0)
    w = {"w": rng.standard_normal((3 * E, E)).astype(np.float32),
         "wo": rng.standard_normal((E, E)).astype(np.float32),
         "zero": np.array(0, dtype=np.int64), "axes": np.array([0], dtype=np.int64)}
    nodes = [helper.make_node("Gather", ["edge_index", "zero"], ["src"], axis=0),
             helper.make_node("Gather", ["x", "src"], ["feat"], axis=0),
             helper.make_node("Unsqueeze", ["feat", "axes"], ["q"]),
             helper.make_node("MaskedMHA", ["q", "q", "q", "w", "", "", "", "wo"], ["y"],
                              domain="com.maskedmha", num_heads=2)]
    g = helper.make_graph(
        nodes, "gps_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_nodes", E]),
         helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "num_edges", E])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.maskedmha", 1)])
    m.ir_version = 9
    return m


def test_compare_feeds_index_safe_integers(tmp_path):
    path = str(tmp_path / "gps.onnx")
    onnx.save(_index_model(), path)
    res = _cli("compare", path, "--runs", "2", "--dim", "num_edges=9")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^  edge_index\s+int64\s+\(2, 9\)\s+integers in \[0, 2\)", res.stdout, re.M), res.stdout


def test_index_safe_integers_stay_below_the_smallest_axis():
    from maskedmha.inputs import index_bound, random_feeds
    assert index_bound([2, 9]) == 2 and index_bound([]) == 1 and index_bound([0, 5]) == 5
    feeds = random_feeds(_index_model(), {"num_edges": 50, "num_nodes": 3})
    ei = feeds["edge_index"]
    assert ei.dtype == np.int64 and ei.min() >= 0 and ei.max() < 2 and len(np.unique(ei)) == 2


def test_compare_runtime_failure_is_one_line(capsys, tmp_path):
    """num_nodes=1 makes the [0, 2) indices out of range: ORT's error, in one line, status 1."""
    path = str(tmp_path / "gps.onnx")
    onnx.save(_index_model(), path)
    line = _one_line_error(capsys, ["compare", path, "--runs", "1", "--dim", "num_nodes=1"],
                           "running", "failed", "--inputs", code=1)
    assert "Traceback" not in line


# --- info ---------------------------------------------------------------------------------------

def test_info_one_function(capsys, files):
    assert main(["info", files["with"]]) == 0
    out = capsys.readouterr().out
    assert "IR version 9; opsets: ai.onnx 17, com.maskedmha 1" in out
    assert re.search(r"#0: num_heads=2 is_causal=0 add_zero_attn=0 fully_masked_row=zero "
                     r"average_attn_weights=1 need_weights=no", out), out
    assert "optional inputs: in_proj_bias, out_proj_bias, key_padding_mask bool[batch,len]" in out
    assert "fallback functions: 1 com.maskedmha::MaskedMHA function, no `overload`" in out
    assert re.search(r"with the library: +onnxruntime >= 1\.17 ", out), out
    assert re.search(r"without it \(the fallback\): +onnxruntime >= 1\.17 \(one fallback function", out), out
    assert f"this onnxruntime ({ort.__version__}): with the library: session created; without it: session created" in out


def test_info_no_fallback(capsys, files):
    assert main(["info", files["without"]]) == 0
    out = capsys.readouterr().out
    assert "fallback functions: none" in out
    assert "without it (the fallback):  no: the file carries no fallback function" in out
    assert "maskedmha attach" in out
    assert re.search(r"without it: refused: .*MaskedMHA", out), out


def _two_signature_model(need_weights_second: bool = True) -> onnx.ModelProto:
    """Two MaskedMHA nodes with different signatures (the second returns attention weights)."""
    m = fused_model(with_fallback=False)
    first = m.graph.node[0]
    second = helper.make_node("MaskedMHA", ["y"] + list(first.input[1:8]),
                              ["z", "attn"], domain="com.maskedmha", num_heads=4, name="second",
                              is_causal=1, average_attn_weights=0)
    first.name = "first"
    m.graph.node.append(second)
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "len", E]),
                           helper.make_tensor_value_info("attn", TensorProto.FLOAT, None)])
    from maskedmha.symbolic.attach import attach_functions
    return attach_functions(m)


def test_info_several_signatures(capsys, tmp_path):
    path = str(tmp_path / "two.onnx")
    onnx.save(_two_signature_model(), path)
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "first: num_heads=2 is_causal=0" in out
    assert "second: num_heads=4 is_causal=1 add_zero_attn=0 fully_masked_row=zero average_attn_weights=0 need_weights=yes" in out
    assert re.search(r"fallback functions: 2 com.maskedmha::MaskedMHA functions, told apart by "
                     r"`overload` \(2 with one\), plus 2 guard functions", out), out
    assert "onnxruntime >= 1.27 only" in out and "1.19-1.26 refuse" in out
    assert "IR version 10" in out


def test_info_flags_overloads_without_guards_and_broken_overloads(capsys, tmp_path):
    """Files written before the guards (one function per configuration, told apart by overload
    alone) run the wrong body on ORT 1.19-1.26: info must say so; a node naming an overload no
    function has is reported as broken.  Derived from the file, not from how it was made."""
    from maskedmha.symbolic.fallback import GUARD_DOMAIN
    m = _two_signature_model()
    keep = [f for f in m.functions if not any(n.domain == GUARD_DOMAIN for n in f.node)]
    del m.functions[:]
    m.functions.extend(keep)
    path = str(tmp_path / "unguarded.onnx")
    onnx.save(m, path)
    assert main(["info", path, "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "told apart by `overload` (2 with one)" in out and "guard function" not in out
    assert "onnxruntime >= 1.27 only; WARNING: ORT 1.19-1.26 would run the last function" in out
    m.graph.node[0].overload = "nonexistent"
    onnx.save(m, path)
    assert main(["info", path, "--no-check"]) == 0
    assert "broken: node 'first' names overload 'nonexistent'" in capsys.readouterr().out




def test_info_and_doctor_never_import_torch(files):
    """Run with torch made unimportable (sys.modules['torch'] = None): both commands work and
    doctor says export is unavailable."""
    code = ("import sys; sys.modules['torch'] = None; from maskedmha.cli import main; "
            f"rc1 = main(['info', {files['with']!r}]); rc2 = main(['doctor']); "
            "assert sys.modules['torch'] is None; sys.exit(rc1 or rc2)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch        not installed: export and demo unavailable" in res.stdout
    assert "registers    yes" in res.stdout


# --- doctor -------------------------------------------------------------------------------------

def test_doctor(capsys):
    from maskedmha.doctor import kernel_isa
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"maskedmha    {maskedmha.__version__}" in out
    assert f"library      {maskedmha.get_library_path()}" in out
    assert f"registers    yes: registered and ran a MaskedMHA node (onnxruntime {ort.__version__})" in out
    assert f"kernel ISA   {kernel_isa()[0]}: " in out
    assert out.rstrip().endswith("everything needed to run MaskedMHA models works")


def test_doctor_reports_a_missing_library(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKEDMHA_LIBRARY", str(tmp_path / "nope.so"))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "library      MISSING: MASKEDMHA_LIBRARY=" in out and "PROBLEM" in out


# --- attach / optimize --------------------------------------------------------------------------

def _stock_matches_fused(original: str, written: str) -> None:
    feeds = fused_feeds(3, 6)
    expected = maskedmha.InferenceSession(original).run(None, feeds)
    got = ort.InferenceSession(written, providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)


def test_attach_makes_a_file_run_on_stock_ort(capsys, files, tmp_path):
    out = str(tmp_path / "attached.onnx")
    with pytest.raises(Exception):  # the premise: without fallback, stock ORT refuses it
        ort.InferenceSession(files["without"], providers=["CPUExecutionProvider"])
    assert main(["attach", files["without"], out]) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {out}: 1 fallback function(s) for 1 MaskedMHA node(s), IR 9")
    _stock_matches_fused(files["without"], out)


def test_attach_replaces_existing_and_handles_two_signatures(capsys, tmp_path):
    src, out = str(tmp_path / "two.onnx"), str(tmp_path / "two.attached.onnx")
    onnx.save(_two_signature_model(), src)
    assert main(["attach", src, out]) == 0
    text = capsys.readouterr().out
    assert "2 fallback function(s) for 2 MaskedMHA node(s) (told apart by overload, plus 2 guard " \
        "functions), replacing 4 the file carried, IR 10" in text
    if tuple(int(x) for x in ort.__version__.split(".")[:2]) >= (1, 27):  # overloads honoured
        feeds = fused_feeds(3, 6)
        expected = maskedmha.InferenceSession(src).run(None, feeds)
        got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, feeds)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_optimize_output_runs_on_stock_ort(capsys, files, tmp_path):
    out = str(tmp_path / "optimized.onnx")
    assert main(["optimize", files["without"], out, "--level", "basic"]) == 0
    assert re.match(rf"wrote {re.escape(out)}: 1 -> 1 nodes \(level basic\), 1 MaskedMHA nodes, "
                    r"1 fallback function\(s\) attached", capsys.readouterr().out)
    _stock_matches_fused(files["without"], out)


def test_output_into_a_missing_folder(capsys, files, tmp_path):
    for command in ("attach", "optimize"):
        _one_line_error(capsys, [command, files["without"], str(tmp_path / "no" / "o.onnx")],
                        "does not exist")


# --- demo ---------------------------------------------------------------------------------------

def test_demo_runs_and_matches_pytorch(tmp_path):
    res = _cli("demo", "--out", str(tmp_path), "--runs", "3")
    assert res.returncode == 0, res.stderr
    for label in ("fused", "decomposed"):
        diff = float(re.search(rf"max \|{label} - PyTorch\|:\s+(\S+)", res.stdout).group(1))
        assert diff < 1e-4, res.stdout
    assert (tmp_path / "demo_transformer.onnx").exists()
    assert (tmp_path / "demo_transformer.decomposed.onnx").exists()
