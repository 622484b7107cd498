"""Runnable alternatives for one Point (ORT sessions or PyTorch eager), and PyTorch's answer to
check them against."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import graphs
from grid import Point

ALTERNATIVES = ["fused", "decomposed", "ort_attention", "ort_mha", "onnx_attention", "openvino",
                "torch_compile", "torch"]
# Timed only when --alternatives names them, and never "the fastest alternative" that fused is
# compared with: fused_skip is our own kernel with the opt-in skip_padded_queries=1 (padded query
# rows come out 0, so it is checked against PyTorch with those rows zeroed).
OPT_IN = ["fused_skip"]
OURS = ("fused", "fused_skip")
# Not ONNX graphs: PyTorch eager, and two compilers that start from the PyTorch module.
TORCH_BASED = ("torch", "torch_compile", "openvino")
# memory.py's child process knows the ONNX graphs and eager torch only.
NO_MEMORY_CHILD = ("torch_compile", "openvino")
REL_TOL = 1e-4      # max |alt - reference| / max |reference|


def parse_names(text: str) -> list[str]:
    """A comma-separated list of alternatives (a command-line flag) as names; ValueError naming
    the unknown ones."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = set(names) - set(ALTERNATIVES) - set(OPT_IN)
    if unknown:
        raise ValueError(f"unknown alternatives: {sorted(unknown)}")
    return names


def session_options(threads: int, spin: bool, library: str | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Sessions are timed round-robin: a pool that keeps spinning after its run would steal a core
    # from the next alternative.  Off by default for every ORT session alike (--spin turns it on).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if library:
        opts.register_custom_ops_library(library)
    return opts


def library_path() -> str:
    import maskedmha
    return maskedmha.get_library_path()


class OrtRunner:
    def __init__(self, model_bytes: bytes, feeds: dict, threads: int, spin: bool, library=None):
        self.session = ort.InferenceSession(model_bytes, session_options(threads, spin, library),
                                            providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in names}

    def __call__(self) -> np.ndarray:
        return self.session.run(["output"], self.feeds)[0]


def torch_module(p: Point, w: graphs.Weights, dtype=torch.float32) -> torch.nn.MultiheadAttention:
    m = torch.nn.MultiheadAttention(p.E, p.H, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.from_numpy(w.w_in))
        m.in_proj_bias.copy_(torch.from_numpy(w.b_in))
        m.out_proj.weight.copy_(torch.from_numpy(w.w_out))
        m.out_proj.bias.copy_(torch.from_numpy(w.b_out))
    return m


def torch_args(p: Point, feeds: dict, dtype=torch.float32):
    """(query, key, value, kwargs) for nn.MultiheadAttention.forward."""
    q = torch.from_numpy(feeds["query"]).to(dtype)
    kv = torch.from_numpy(feeds["memory"]).to(dtype) if p.cross else q
    kw = {"need_weights": False}
    if "key_padding_mask" in feeds:
        kw["key_padding_mask"] = torch.from_numpy(feeds["key_padding_mask"])
    if p.mask == "random":
        kw["attn_mask"] = torch.from_numpy(feeds["attn_mask"])
    elif p.mask == "causal":
        kw["attn_mask"] = torch.from_numpy(graphs.causal_mask(p.L, p.S))
        kw["is_causal"] = True
    return q, kv, kv, kw


class TorchRunner:
    """PyTorch eager nn.MultiheadAttention under no_grad (its fast path when it applies)."""

    def __init__(self, p: Point, w: graphs.Weights, feeds: dict):
        self.module = torch_module(p, w)
        self.args = torch_args(p, feeds)

    def __call__(self) -> np.ndarray:
        q, k, v, kw = self.args
        with torch.no_grad():
            return self.module(q, k, v, **kw)[0].numpy()


class _MHACall(torch.nn.Module):
    """nn.MultiheadAttention called as the graphs are: positional tensors in the order
    input_names() gives (query, memory, key_padding_mask, attn_mask, as the point has them), the
    causal mask built inside, need_weights=False.  What OpenVINO converts and torch.compile
    compiles."""

    def __init__(self, p: Point, module: torch.nn.MultiheadAttention):
        super().__init__()
        self.mha, self.names = module, input_names(p)
        causal = torch.from_numpy(graphs.causal_mask(p.L, p.S)) if p.mask == "causal" else None
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, *tensors):
        t = dict(zip(self.names, tensors))
        kv = t.get("memory", t["query"])
        kw = {"need_weights": False, "key_padding_mask": t.get("key_padding_mask")}
        if "attn_mask" in t:
            kw["attn_mask"] = t["attn_mask"]
        elif self.causal is not None:
            kw["attn_mask"], kw["is_causal"] = self.causal, True
        return self.mha(t["query"], kv, kv, **kw)[0]


def input_names(p: Point) -> list[str]:
    names = ["query"] + (["memory"] if p.cross else [])
    names += ["key_padding_mask"] if p.pad > 0 else []
    return names + (["attn_mask"] if p.mask == "random" else [])


class TorchCompileRunner:
    """torch.compile (inductor, CPU) of nn.MultiheadAttention, static shapes; compiled and run
    twice here, so compilation is not part of the timed calls."""

    def __init__(self, p: Point, w: graphs.Weights, feeds: dict):
        import os

        import torch._dynamo
        import torch._inductor.config
        torch._dynamo.reset()  # each point compiles afresh: no recompile-limit fall back to eager
        if os.environ.get("MASKEDMHA_ISA") in ("avx2", "generic"):
            # run.py --isa: inductor's generated C++ at most 256-bit vectors (ATen and MKL are
            # capped by the variables run.py sets)
            torch._inductor.config.cpp.simdlen = 256 if os.environ["MASKEDMHA_ISA"] == "avx2" else 1
        self.fn = torch.compile(_MHACall(p, torch_module(p, w)), dynamic=False)
        self.args = [torch.from_numpy(feeds[n]) for n in input_names(p)]
        self()
        self()

    def __call__(self) -> np.ndarray:
        with torch.no_grad():
            return self.fn(*self.args).numpy()


class OpenVinoRunner:
    """OpenVINO: openvino.convert_model of the PyTorch module, compiled for CPU with f32
    inference precision (its default on CPUs with bf16 or f16 support is lower precision),
    latency mode, the benchmark's thread count."""

    def __init__(self, p: Point, w: graphs.Weights, feeds: dict, threads: int):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hint
        names = input_names(p)
        example = tuple(torch.from_numpy(feeds[n]) for n in names)
        with torch.no_grad():
            model = ov.convert_model(_MHACall(p, torch_module(p, w)), example_input=example)
        config = {hint.inference_precision: ov.Type.f32, props.inference_num_threads: threads,
                  hint.performance_mode: hint.PerformanceMode.LATENCY}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [feeds[n] for n in names]

    def __call__(self) -> np.ndarray:
        return self.request.infer(self.inputs)[0].copy()


def reference(p: Point, w: graphs.Weights, feeds: dict) -> np.ndarray:
    """nn.MultiheadAttention evaluated in float64, one batch item at a time (bounded memory)."""
    m = torch_module(p, w, torch.float64)
    q, k, v, kw = torch_args(p, feeds, torch.float64)
    outs = []
    with torch.no_grad():
        for b in range(p.B):
            kwb = dict(kw)
            if "key_padding_mask" in kw:
                kwb["key_padding_mask"] = kw["key_padding_mask"][b:b + 1]
            outs.append(m(q[b:b + 1], k[b:b + 1], v[b:b + 1], **kwb)[0])
    return torch.cat(outs).numpy()


def expected(name: str, ref: np.ndarray, feeds: dict) -> np.ndarray:
    """What alternative ``name`` must return: PyTorch's answer, with the padded query rows zeroed
    for fused_skip (its documented output there)."""
    if name != "fused_skip":
        return ref
    out = ref.copy()
    out[feeds["key_padding_mask"]] = 0.0
    return out


def check(out: np.ndarray, ref: np.ndarray) -> tuple[bool, float, float]:
    """(ok, max abs diff, max abs diff relative to max |ref|); NaN anywhere fails."""
    if out.shape != ref.shape:
        return False, float("inf"), float("inf")
    diff = np.abs(out.astype(np.float64) - ref)
    if not np.all(np.isfinite(diff)):
        return False, float("nan"), float("nan")
    abs_diff = float(diff.max()) if diff.size else 0.0
    rel = abs_diff / max(float(np.abs(ref).max()) if ref.size else 1.0, 1e-30)
    return rel <= REL_TOL, abs_diff, rel


def model_for(name: str, p: Point, w: graphs.Weights):
    """The ONNX model of an ORT alternative (raises graphs.NotApplicable)."""
    return graphs.BUILDERS[name](p, w)


def make_runner(name: str, p: Point, w: graphs.Weights, feeds: dict, threads: int, spin: bool,
                model=None):
    if name == "torch":
        return TorchRunner(p, w, feeds)
    if name == "torch_compile":
        return TorchCompileRunner(p, w, feeds)
    if name == "openvino":
        return OpenVinoRunner(p, w, feeds, threads)
    model = model if model is not None else model_for(name, p, w)
    lib = library_path() if name in OURS else None
    return OrtRunner(model.SerializeToString(), feeds, threads, spin, lib)
