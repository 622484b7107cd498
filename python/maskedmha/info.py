"""`maskedmha info MODEL.onnx`: what a file holds (IR version, opsets, each MaskedMHA node's
configuration, its fallback functions) and which ONNX Runtime releases will run it, with and
without the library.  Torch-free: it reads the file with onnx alone (and the op's schema and
fallback constants from maskedmha.symbolic, which import no torch).

The runtime statements come from measurements recorded in symbolic/attach.py and
symbolic/fallback.py (ORT 1.17.3 ... 1.32.0):

- ORT 1.17-1.18 read IR <= 9 only; 1.19 and later read IR 10.
- The library negotiates ORT's C API from version 17: it loads into ORT >= 1.17.
- ORT >= 1.27 choose a model-local function by (domain, name, overload); 1.19-1.26 ignore
  ``overload`` and run the LAST function with the node's (domain, name) for every node.  So a
  file whose fallback is ONE function runs it on every ORT that reads its IR version, and a file
  with several (told apart by ``overload``) runs its fallback on ORT >= 1.27 only; attach.py puts
  a guard function first and last so that 1.19-1.26 refuse such a file at session creation
  instead of running another node's body.
"""
from __future__ import annotations

import os
import subprocess
import sys

import onnx
from onnx import helper

from maskedmha.symbolic.fallback import GUARD_DOMAIN
from maskedmha.symbolic.schema import ATTRIBUTE_DEFAULTS as _DEFAULTS, ATTRIBUTES, INPUT_NAMES

from .modelfile import DOMAIN, OP_TYPE, mha_nodes, type_table, type_text

# Every attribute in the op's order with its default (None: required, num_heads).
ATTRIBUTE_DEFAULTS = {name: _DEFAULTS.get(name) for name in ATTRIBUTES}

LIBRARY_MIN_ORT = "1.17"       # the C API version RegisterCustomOps negotiates from (ops/ort_api.h)
OVERLOADS_MIN_ORT = "1.27"     # first ORT that honours FunctionProto/NodeProto.overload
# Lowest ORT that reads a given IR version (ORT 1.17-1.18: IR <= 9; 1.19+: IR 10).  Newer IR
# versions are not tabled: they have not been measured here.
_ORT_FOR_IR = {10: "1.19"}


def min_ort_for_ir(ir: int) -> str | None:
    """Lowest ORT release (>= the 1.17 floor of this package) that reads IR ``ir``; None when
    unknown (IR > 10)."""
    if ir <= 9:
        return LIBRARY_MIN_ORT
    return _ORT_FOR_IR.get(ir)


def _later(a: str, b: str) -> str:
    return max(a, b, key=lambda v: tuple(int(x) for x in v.split(".")))


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = {}
    for name, default in ATTRIBUTE_DEFAULTS.items():
        v = values.get(name, default)
        out[name] = v.decode() if isinstance(v, bytes) else v
    return out


def fallback_functions(model: onnx.ModelProto) -> tuple[list, list]:
    """The file's com.maskedmha::MaskedMHA functions: (fallback bodies, guard functions)."""
    funcs = [f for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE]
    guards = [f for f in funcs if any(n.domain == GUARD_DOMAIN for n in f.node)]
    return [f for f in funcs if f not in guards], guards


def node_lines(model: onnx.ModelProto) -> list[str]:
    """Two or three lines per MaskedMHA node: attributes, inputs present (and the
    variable-length mode when sequence_offsets is given), fallback it uses."""
    table = type_table(model)
    out = []
    for i, node in enumerate(mha_nodes(model)):
        a = _attrs(node)
        ins = list(node.input) + [""] * (len(INPUT_NAMES) - len(node.input))
        need_weights = len(node.output) > 1 and bool(node.output[1])
        heads = a["num_heads"] if a["num_heads"] is not None else "MISSING"
        out.append(f"  {node.name or f'#{i}'}: num_heads={heads} is_causal={a['is_causal']} "
                   f"add_zero_attn={a['add_zero_attn']} fully_masked_row={a['fully_masked_row']} "
                   f"average_attn_weights={a['average_attn_weights']} "
                   f"need_weights={'yes' if need_weights else 'no'} "
                   f"skip_padded_queries={a['skip_padded_queries']}")
        present = []
        for k in (4, 6, 8, 9, 10):
            if ins[k]:
                present.append(INPUT_NAMES[k])
        for k in (11, 12, 13):
            if ins[k]:
                known = table.get(ins[k])
                present.append(f"{INPUT_NAMES[k]} {type_text(*known) if known else '(type not recorded)'}")
        weights = "separate q/k/v projection weights" if ins[4] else "packed in_proj_weight"
        # sequence_offsets changes what query/key/value hold: say so in words
        mode = ("variable-length mode (packed (T, E) token rows, attention per sequence); "
                if ins[13] else "")
        out.append(f"      {mode}{weights}; optional inputs: {', '.join(present) or 'none'}")
        if node.overload:
            out.append(f"      overload {node.overload!r}")
    return out


def fallback_summary(model: onnx.ModelProto) -> tuple[str, str]:
    """(what the fallback functions are, which ORT runs the file WITHOUT the library)."""
    nodes = mha_nodes(model)
    bodies, guards = fallback_functions(model)
    ir_ort = min_ort_for_ir(model.ir_version)
    reads = (f"onnxruntime >= {ir_ort}" if ir_ort else
             f"an onnxruntime that reads IR {model.ir_version} (not measured here)")
    if not nodes:
        return ("none needed (no MaskedMHA node)", f"{reads} (no MaskedMHA node)")
    if not bodies:
        return ("none", "no: the file carries no fallback function; register the library, or "
                        "add the fallback with `maskedmha attach IN.onnx OUT.onnx`")
    with_overload = [f for f in bodies if f.overload]
    what = (f"{len(bodies)} {DOMAIN}::{OP_TYPE} function{'s' if len(bodies) > 1 else ''}, "
            + (f"told apart by `overload` ({len(with_overload)} with one)" if with_overload
               else "no `overload`")
            + (f", plus {len(guards)} guard function{'s' if len(guards) > 1 else ''}" if guards else ""))
    have = {f.overload for f in bodies}
    broken = [n for n in nodes if n.overload not in have]
    if broken and len(bodies) > 1:
        n = broken[0]
        return what, (f"broken: node {n.name!r} names overload {n.overload!r}, which no function "
                      "in the file has; re-attach with `maskedmha attach IN.onnx OUT.onnx`")
    if len(bodies) == 1:
        # One body: runtimes that ignore overload take it, runtimes that honour it find it.
        return what, f"{reads} (one fallback function: every ORT that reads IR {model.ir_version})"
    floor = _later(OVERLOADS_MIN_ORT, ir_ort) if ir_ort else OVERLOADS_MIN_ORT
    if guards:
        return what, (f"onnxruntime >= {floor} only (several fallback functions need `overload`; "
                      "ORT 1.19-1.26 refuse the file at session creation, 1.17-1.18 cannot read IR 10)")
    return what, (f"onnxruntime >= {floor} only; WARNING: ORT 1.19-1.26 would run the last function "
                  "for every node (wrong numbers or a crash) and nothing in the file stops them: "
                  "re-attach with `maskedmha attach IN.onnx OUT.onnx`")


def library_summary(model: onnx.ModelProto) -> str:
    ir_ort = min_ort_for_ir(model.ir_version)
    if ir_ort is None:
        return (f"an onnxruntime >= {LIBRARY_MIN_ORT} that reads IR {model.ir_version} (not "
                "measured here)")
    return (f"onnxruntime >= {_later(LIBRARY_MIN_ORT, ir_ort)} (the library loads into 1.17+; "
            f"IR {model.ir_version}: ORT 1.17-1.18 read IR <= 9, 1.19+ read IR 10)")


_PROBE = r"""
import sys
import onnxruntime as ort
path, with_library = sys.argv[1], sys.argv[2] == "1"
try:
    opts = ort.SessionOptions()
    # Both probes get onnxruntime-extensions' library when the model imports its domains (a
    # tokenizer in front): the question is only whether MaskedMHA runs with or without ours.
    from maskedmha.session import extensions_options, session_options
    if with_library:
        opts = session_options(opts, model=path)
    else:
        opts = extensions_options(opts, model=path)
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
except Exception as exc:
    print(" ".join(str(exc).split())[:300])
    sys.exit(1)
"""


def try_sessions(path: str) -> dict[str, str]:
    """Create a session on this onnxruntime with and without the library, each in a child
    process: a runtime that aborts on a file (ORT 1.19-1.26 did, on some fallback layouts) must
    not take `maskedmha info` down with it."""
    procs = {label: subprocess.Popen([sys.executable, "-c", _PROBE, path, flag],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label, flag in (("with the library", "1"), ("without it", "0"))}
    out = {}
    for label, p in procs.items():
        stdout, _ = p.communicate()
        if p.returncode == 0:
            out[label] = "session created"
        elif p.returncode < 0:
            out[label] = f"CRASHED (signal {-p.returncode})"
        else:
            out[label] = f"refused: {stdout.strip() or 'exit status ' + str(p.returncode)}"
    return out


def describe(model: onnx.ModelProto, path: str, check: bool = True) -> str:
    g = model.graph
    opsets = ", ".join(f"{i.domain or 'ai.onnx'} {i.version}" for i in model.opset_import)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    inits = {i.name for i in g.initializer}
    table = type_table(model)
    ins = [f"{vi.name} {type_text(*table[vi.name]) if vi.name in table else '?'}"
           for vi in g.input if vi.name not in inits]
    outs = [f"{vi.name} {type_text(*table[vi.name]) if vi.name in table else '?'}" for vi in g.output]
    nodes = mha_nodes(model)
    lines = [
        f"{path}",
        f"  IR version {model.ir_version}; opsets: {opsets or 'none'}"
        + (f"; producer: {producer}" if producer else ""),
        f"  inputs:  {', '.join(ins) or 'none'}",
        f"  outputs: {', '.join(outs) or 'none'}",
        f"  {len(g.node)} nodes, {len(g.initializer)} initializers, {len(model.functions)} "
        "model-local functions",
        "",
        f"MaskedMHA nodes: {len(nodes)}",
    ]
    lines += node_lines(model)
    what, fallback = fallback_summary(model)
    lines += ["", f"fallback functions: {what}", "", "runs on:",
              f"  with the library:           {library_summary(model) if nodes else 'not needed'}",
              f"  without it (the fallback):  {fallback}"]
    if check:
        import onnxruntime as ort
        res = try_sessions(os.path.abspath(path))
        lines.append(f"  this onnxruntime ({ort.__version__}): with the library: "
                     f"{res['with the library']}; without it: {res['without it']}")
    return "\n".join(lines)
