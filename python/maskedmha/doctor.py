"""`maskedmha doctor`: is this installation able to run (and export) MaskedMHA models?

Versions, the library's path, whether it registers into this onnxruntime and runs a MaskedMHA
node (in a child process: a library that crashes on load must be reported, not crash the report),
whether torch is installed (checked with importlib, never imported: it takes seconds) and the
instruction set the kernel will use."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys

ISA_ENV = "MASKEDMHA_ISA"
ISAS = ("generic", "avx2", "avx512")   # ops/cpu.h enum Isa order: a higher index is wider


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags Linux reports, or None when they cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def kernel_isa(env: dict | None = None, flags: set[str] | None = None) -> tuple[str | None, str]:
    """(isa, why): the instruction set the kernel picks, by the rule of ops/cpu.cc Detect().

    The library exports RegisterCustomOps only, so Python cannot ask it; this restates its rule:
    AVX-512F if the CPU has it, else AVX2 if it has AVX2 and FMA, else the portable loops (only
    x86 builds with GCC/Clang have the vector variants); MASKEDMHA_ISA=generic|avx2|avx512 lowers
    the choice, never raises it, and any other value is ignored.  The kernel asks CPUID through
    __builtin_cpu_supports, which also requires the OS to save the wider registers; Linux drops
    the avx512f/avx2 flags from /proc/cpuinfo in the same case, so the two agree.
    tests/test_cli_doctor.py checks this against the kernel's own numbers."""
    env = os.environ if env is None else env
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        best, why = "generic", f"{platform.machine()} CPU: the kernel has portable loops only"
    else:
        flags = cpu_flags() if flags is None else flags
        if flags is None:
            return None, "unknown: no /proc/cpuinfo to read the CPU's features from"
        if "avx512f" in flags:
            best, why = "avx512", "the CPU has AVX-512F"
        elif "avx2" in flags and "fma" in flags:
            best, why = "avx2", "the CPU has AVX2 and FMA, no AVX-512F"
        else:
            best, why = "generic", "the CPU has neither AVX-512F nor AVX2+FMA"
    want = env.get(ISA_ENV)
    if want is not None:
        if want not in ISAS:
            why += f"; {ISA_ENV}={want!r} is ignored (not one of {', '.join(ISAS)})"
        elif ISAS.index(want) < ISAS.index(best):
            best, why = want, f"{why}; lowered by {ISA_ENV}={want}"
        else:
            why += f"; {ISA_ENV}={want} cannot raise it"
    return best, why


_PROBE = r"""
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort
import maskedmha
E = 8
node = helper.make_node("MaskedMHA", ["x", "x", "x", "w", "", "", "", "wo"], ["y"],
                        domain="com.maskedmha", num_heads=2)
rng = np.random.default_rng(0)
g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, E])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, E])],
                      [numpy_helper.from_array(rng.standard_normal((3 * E, E)).astype(np.float32), "w"),
                       numpy_helper.from_array(rng.standard_normal((E, E)).astype(np.float32), "wo")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.maskedmha", 1)])
m.ir_version = 9
try:
    sess = maskedmha.InferenceSession(m.SerializeToString())
    y, = sess.run(None, {"x": rng.standard_normal((1, 3, E)).astype(np.float32)})
    assert y.shape == (1, 3, E) and np.isfinite(y).all(), y
except Exception as exc:
    print(" ".join(str(exc).split())[:400])
    raise SystemExit(1)
print("OK")
"""


def probe_library() -> tuple[bool, str]:
    """Register the library into this onnxruntime and run one MaskedMHA node, in a child."""
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    if p.returncode == 0 and "OK" in p.stdout:
        return True, "yes: registered and ran a MaskedMHA node"
    if p.returncode < 0:
        return False, f"no: the process CRASHED (signal {-p.returncode}) loading or running it"
    msg = p.stdout.strip() or (p.stderr.strip().splitlines() or ["?"])[-1]
    return False, f"no: {msg}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> tuple[str, bool]:
    """(the text, whether everything needed to RUN models works).  Export is optional."""
    import maskedmha
    from ._library import LIBRARY_ENV, LibraryNotFoundError, get_library_path
    from .info import LIBRARY_MIN_ORT

    ok = True
    rows = [("maskedmha", f"{maskedmha.__version__} ({os.path.dirname(maskedmha.__file__)})"),
            ("python", f"{platform.python_version()} ({sys.executable})")]
    try:
        import onnxruntime as ort
        rows.append(("onnxruntime", f"{ort.__version__} (the library needs >= {LIBRARY_MIN_ORT})"))
    except ImportError as exc:
        rows.append(("onnxruntime", f"NOT IMPORTABLE: {exc}"))
        ok = False
    for mod in ("onnx", "numpy"):
        try:
            rows.append((mod, importlib.import_module(mod).__version__))
        except ImportError as exc:
            rows.append((mod, f"NOT IMPORTABLE: {exc}"))
            ok = False
    # find_spec, not import: importing torch takes seconds and `doctor` needs only to know.
    if importlib.util.find_spec("torch") is None:
        rows.append(("torch", 'not installed: export and demo unavailable (pip install "maskedmha[export]")'))
    else:
        extra = "" if importlib.util.find_spec("onnxscript") else \
            '; onnxscript missing: the dynamo exporter needs it (pip install "maskedmha[export]")'
        rows.append(("torch", f"{_version('torch') or 'installed'} (export available){extra}"))
    try:
        path = get_library_path()
        src = f" (from {LIBRARY_ENV})" if os.environ.get(LIBRARY_ENV) else ""
        rows.append(("library", f"{path}{src}, {os.path.getsize(path) / 1e6:.1f} MB"))
        if ok:
            loads, text = probe_library()
            ok = ok and loads
            rows.append(("registers", f"{text} (onnxruntime {ort.__version__})"))
    except LibraryNotFoundError as exc:
        rows.append(("library", f"MISSING: {exc}"))
        ok = False
    isa, why = kernel_isa()
    rows.append(("kernel ISA", f"{isa or '?'}: {why}"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    text += "\n\n" + ("everything needed to run MaskedMHA models works" if ok else
                      "PROBLEM: models with MaskedMHA nodes cannot run fused here (see above)")
    return text, ok
