"""One row of the ONNX Runtime release table: does THIS venv's onnxruntime load the library, run
the exported models fused, run their in-file fallback (or refuse it), and run decompose()'s output,
each compared with PyTorch itself?

    python tests/release_check.py            # a readable row
    python tests/release_check.py --json     # the row as JSON (scripts/ort_matrix.sh collects them)

Models (exported here, with torch): the demo nn.Transformer (key padding + causal masks) from both
exporters, one MHA with need_weights, one MHA with a float attn_mask from both exporters, and two
MHAs with 4 and 2 heads that share one input signature (the case an ORT that ignores function
overloads would run with the wrong function).  Every run happens in a child process, so a crash
inside onnxruntime is reported as "crash" in its cell instead of ending the check.

A release that cannot read the file's IR version (ORT 1.17-1.18 read IR <= 9; files whose
fallback needs overloads are IR 10) runs the same export with ``fallback=False`` (IR 9) fused.

A cell is one of: ok (PyTorch's numbers), refused (session creation failed with an error: allowed
for the in-file fallback only, and only for files that need more than one fallback function),
wrong (ran and differs from PyTorch), crash (the process died), error (failed otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("fused", "fallback", "decompose")


# ---- the models (parent process, needs torch) ------------------------------------------------

def _models():
    """name -> (module, args at export shape, args at another shape, input names, output names,
    dynamic axes, exporter, rel tolerance)."""
    import torch
    from torch import nn

    sys.path.insert(0, HERE)
    from helpers.cases import Case, build_module, dynamic_axes, input_names, make_inputs, output_names
    from maskedmha.demo import DYNAMIC_AXES, NAMES, DemoTranslator, demo_inputs

    models = {}
    torch.manual_seed(0)
    translator = DemoTranslator().eval()
    for exporter in ("dynamo", "torchscript"):
        models[f"transformer/{exporter}"] = (
            translator, demo_inputs(2, 12, 10), demo_inputs(3, 7, 9, seed=1), NAMES, ["output"],
            DYNAMIC_AXES, exporter, 2e-5)

    def case_model(case, exporter):
        module = build_module(case)
        a, b = make_inputs(case, 2, 5, 7), make_inputs(case, 3, 9, 4, seed=1)
        return (module, tuple(a.values()), tuple(b.values()), input_names(case, a),
                output_names(case), dynamic_axes(case), exporter, 1e-5)

    models["mha need_weights/dynamo"] = case_model(
        Case("weights", need_weights=True, kpm="bool"), "dynamo")
    float_mask = Case("float_mask", self_attn=False, attn_mask="float2")
    for exporter in ("dynamo", "torchscript"):
        models[f"mha float attn_mask/{exporter}"] = case_model(float_mask, exporter)

    class TwoHeads(nn.Module):
        """Two attentions alike but for their head count: same inputs, same masks."""

        def __init__(self):
            super().__init__()
            self.a = nn.MultiheadAttention(32, 4, batch_first=True)
            self.b = nn.MultiheadAttention(32, 2, batch_first=True)
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if "bias" in name:
                        p.normal_(0, 0.5)

        def forward(self, x, key_padding_mask):
            y = self.a(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
            return self.b(y, y, y, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def two_heads_args(batch, length, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, length, 32, generator=g)
        kpm = torch.arange(length)[None, :] >= torch.randint(1, length + 1, (batch,), generator=g)[:, None]
        return x, kpm

    torch.manual_seed(1)
    axes = {"x": {0: "batch", 1: "len"}, "key_padding_mask": {0: "batch", 1: "len"},
            "output": {0: "batch", 1: "len"}}
    models["two MHAs, 4 and 2 heads/dynamo"] = (
        TwoHeads().eval(), two_heads_args(2, 6, 0), two_heads_args(3, 9, 1),
        ["x", "key_padding_mask"], ["output"], axes, "dynamo", 1e-5)
    return models


def _reference(module, args):
    """PyTorch's documented path (the fast path off), as helpers.cases.reference."""
    import torch
    from helpers.reference import no_fastpath
    with no_fastpath(), torch.no_grad():
        out = module(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def export_all(out_dir: str) -> list[dict]:
    """Export every model to out_dir with its inputs and PyTorch's outputs at two shapes."""
    import onnx

    import maskedmha
    entries = []
    for i, (name, (module, a, b, names, outs, axes, exporter, rel)) in enumerate(_models().items()):
        path = os.path.join(out_dir, f"m{i}.onnx")
        maskedmha.export(module, a, path, input_names=names, output_names=outs,
                         dynamic_axes=axes, exporter=exporter)
        data = {}
        for tag, args in (("a", a), ("b", b)):
            tensors = [t for t in args if t is not None]
            for n, t in zip(names, tensors):
                data[f"{tag}/in/{n}"] = t.numpy()
            for k, e in enumerate(_reference(module, args)):
                data[f"{tag}/out/{k}"] = e
        np.savez(os.path.join(out_dir, f"m{i}.npz"), **data)
        saved = onnx.load(path)
        functions = sum(f.domain == maskedmha.DOMAIN for f in saved.functions)
        bare = None
        if saved.ir_version > 9:
            # What ORT 1.17-1.18 (IR <= 9) run fused: the same export without the fallback.
            bare = os.path.join(out_dir, f"m{i}.nofallback.onnx")
            maskedmha.export(module, a, bare, input_names=names, output_names=outs,
                             dynamic_axes=axes, exporter=exporter, fallback=False)
        entries.append(dict(name=name, path=path, bare=bare, data=os.path.join(out_dir, f"m{i}.npz"),
                            rel=rel, functions=functions))
    return entries


# ---- one run (child process: no torch needed) --------------------------------------------------

def _run_child(mode: str, path: str, data_path: str, rel: float) -> dict:
    import onnx
    import onnxruntime as ort

    import maskedmha
    sys.path.insert(0, HERE)
    try:
        if mode == "fused":
            sess = maskedmha.InferenceSession(path)
        elif mode == "fallback":
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        else:
            plain = maskedmha.decompose(onnx.load(path))
            sess = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the message is the cell's detail
        # ORT puts the reason after its source location: keep the end of the message.
        return {"status": "refused", "detail": " ".join(str(exc).split())[-300:]}
    data = np.load(data_path)
    worst = 0.0
    for tag in ("a", "b"):
        feeds = {k.split("/", 2)[2]: data[k] for k in data.files if k.startswith(f"{tag}/in/")}
        expected = [data[f"{tag}/out/{k}"] for k in range(sum(f.startswith(f"{tag}/out/") for f in data.files))]
        try:
            actual = sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            return {"status": "error", "detail": f"run: {str(exc).strip().splitlines()[0][:300]}"}
        for a, e in zip(actual, expected):
            if a.shape != e.shape or not np.array_equal(np.isnan(a), np.isnan(e)):
                return {"status": "wrong", "detail": f"shape {a.shape} vs {e.shape} or NaN pattern"}
            ok = ~np.isnan(e)
            if ok.any():
                scale = max(1.0, float(np.abs(e[ok]).max()))
                err = float(np.abs(a[ok].astype(np.float64) - e[ok]).max()) / scale
                worst = max(worst, err)
    if worst > rel:
        return {"status": "wrong", "detail": f"max |diff| {worst:.2e} of the output's scale"}
    return {"status": "ok", "detail": f"max |diff| {worst:.1e}"}


def _load_child() -> dict:
    import onnxruntime as ort

    import maskedmha
    try:
        maskedmha.session_options(ort.SessionOptions())
    except Exception as exc:  # noqa: BLE001
        return {"status": "refused", "detail": str(exc).strip().splitlines()[0][:300]}
    return {"status": "ok", "detail": ""}


def _spawn(*args: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode < 0:
        return {"status": "crash", "detail": f"signal {-proc.returncode}"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "detail": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def check(out_dir: str) -> dict:
    """The whole row for this venv's onnxruntime."""
    import onnxruntime as ort
    row = {"onnxruntime": ort.__version__, "library": _spawn("load"), "models": []}
    for entry in export_all(out_dir):
        cells = {mode: _spawn("run", mode, entry["path"], entry["data"], str(entry["rel"]))
                 for mode in MODES}
        if (entry["bare"] and cells["fused"]["status"] == "refused"
                and "IR version" in cells["fused"]["detail"]):
            cells["fused"] = _spawn("run", "fused", entry["bare"], entry["data"], str(entry["rel"]))
            cells["fused"]["detail"] += " (this release reads IR <= 9: the fallback=False export)"
        row["models"].append({"name": entry["name"], "functions": entry["functions"], **cells})
    return row


def problems(row: dict) -> list[str]:
    """What in the row breaks the product's promise (empty = the release is supported)."""
    found = []
    if row["library"]["status"] != "ok":
        found.append(f"library does not load: {row['library']['detail']}")
    for m in row["models"]:
        for mode in MODES:
            cell = m[mode]
            allowed = {"ok"} | ({"refused"} if mode == "fallback" and m["functions"] > 1 else set())
            if cell["status"] not in allowed:
                found.append(f"{m['name']} {mode}: {cell['status']} ({cell['detail']})")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the row as one JSON line")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.child:
        result = _load_child() if ns.child[0] == "load" else \
            _run_child(ns.child[1], ns.child[2], ns.child[3], float(ns.child[4]))
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        row = check(tmp)
    if ns.json:
        print(json.dumps(row))
    else:
        print(f"onnxruntime {row['onnxruntime']}: library {row['library']['status']} "
              f"{row['library']['detail']}")
        for m in row["models"]:
            print(f"  {m['name']:34s} " + "  ".join(f"{mode} {m[mode]['status']}" for mode in MODES))
            for mode in MODES:
                if m[mode]["status"] != "ok":
                    print(f"      {mode}: {m[mode]['detail']}")
    return 1 if problems(row) else 0


if __name__ == "__main__":
    sys.exit(main())
