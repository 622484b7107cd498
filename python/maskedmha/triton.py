"""`maskedmha triton MODEL.onnx REPO_DIR`: one entry of a Triton Inference Server model repository
for an ONNX file with MaskedMHA nodes, served by Triton's ONNX Runtime backend:

    REPO_DIR/NAME/config.pbtxt            the model configuration, written here as text
    REPO_DIR/NAME/1/model.onnx            the file, byte for byte (and its external data files)
    REPO_DIR/NAME/libmaskedmha_ops.so     the custom-op library, loaded through model_operations

Torch-free and tritonclient-free: the configuration is plain protobuf text, which
tests/test_triton.py parses into Triton's own ``ModelConfig`` message.

Why the library path in the configuration is absolute: the ONNX Runtime backend passes each
``model_operations.op_library_filename`` unchanged to ORT's ``RegisterCustomOpsLibrary``
(triton-inference-server/onnxruntime_backend, src/onnxruntime.cc), which hands it to ``dlopen``:
a relative path would resolve against the server process's working directory, not the model's
folder, and a bare file name is searched on the library path (LD_LIBRARY_PATH).  Triton's core
does not rewrite the field.  So the path is where the server sees the copied library: the
repository's absolute path here, or ``--server-repository`` (the folder the repository is mounted
at in the server's container), or ``--library-path`` verbatim.

Why the batch axis is looked up by name: Triton concatenates requests along axis 0 when
``max_batch_size > 0``.  An unbatched attention model ([len, E] inputs) also has a dynamic axis 0
on every input and output, and batching it would let one request's tokens attend to another's:
wrong numbers, silently.  Triton's own auto-complete makes that guess from the shapes alone
(every leading dimension -1); this module writes the configuration instead and takes a leading
axis as the batch axis only when every input and output starts with the same symbol whose name
says batch (``--batch-dim NAME`` names another)."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ._library import get_library_path, library_file_name
from .modelfile import DOMAIN, OP_TYPE, UsageError, mha_nodes

DEFAULT_MAX_BATCH_SIZE = 4
"""The ONNX Runtime backend's own ``default-max-batch-size`` (its auto-complete's choice)."""

VERSION = "1"
"""The model version folder written (Triton serves the highest version by default)."""

# ONNX element type -> Triton data type (Triton's model_config.proto DataType; the ONNX Runtime
# backend's ModelConfigDataTypeToOnnxDataType maps the same pairs back).
TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.UINT8: "TYPE_UINT8", TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.INT8: "TYPE_INT8", TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16", TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.DOUBLE: "TYPE_FP64", TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.STRING: "TYPE_STRING",
}


@dataclass
class Tensor:
    """One input or output as config.pbtxt states it."""
    name: str
    data_type: str                 # TYPE_FP32, TYPE_BOOL, ...
    dims: list[int]                # -1 for a dynamic axis; without the batch axis when batching
    reshape: list[int] | None = None  # the model's shape when dims had to be [1] (a scalar item)


@dataclass
class Config:
    """Everything config.pbtxt says, and why (notes)."""
    name: str
    max_batch_size: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    library_path: str | None       # op_library_filename; None: the model has no MaskedMHA node
    instances: int = 1
    threads: int | None = None     # intra_op_thread_count
    dynamic_batching: bool = False
    batch_dim: str | None = None   # the ONNX symbol taken as Triton's batch axis
    mha_nodes: int = 0
    source: str = ""
    notes: list[str] = field(default_factory=list)


# --- reading the model ---------------------------------------------------------------------------

def _onnx_dims(vi: onnx.ValueInfoProto, what: str) -> tuple[int, list]:
    """(elem_type, dims) of a graph input/output; dims: ints, symbol names, None for unnamed."""
    if not vi.type.HasField("tensor_type"):
        raise UsageError(f"{what} '{vi.name}' is not a tensor ({vi.type.WhichOneof('value')}): "
                         "Triton's ONNX Runtime backend serves tensors only")
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise UsageError(f"{what} '{vi.name}' has no shape in the file: Triton needs its rank "
                         "(dims); export with shapes or add them with onnx.shape_inference")
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or None)
    return tt.elem_type, dims


def _shape_text(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def model_tensors(model: onnx.ModelProto) -> tuple[list, list]:
    """([(name, elem_type, dims)] of the inputs a request must feed, [same] of the outputs).
    Initializers listed as graph inputs (older IR) are weights, not request inputs: ORT reports
    them as overridable initializers and Triton's backend does not count them."""
    inits = {i.name for i in model.graph.initializer}
    ins = [(vi.name, *_onnx_dims(vi, "input")) for vi in model.graph.input if vi.name not in inits]
    outs = [(vi.name, *_onnx_dims(vi, "output")) for vi in model.graph.output]
    if not outs:
        raise UsageError("the model has no outputs")
    return ins, outs


def find_batch_dim(tensors: list, batch_dim: str | None) -> tuple[str | None, str]:
    """(the symbol to batch along, or None; why not, when None).  ``tensors``: (kind, name,
    elem_type, dims) for every input and output."""
    if batch_dim is not None:
        for kind, name, _, dims in tensors:
            if not dims or dims[0] != batch_dim:
                raise UsageError(f"--batch-dim {batch_dim}: {kind} '{name}' {_shape_text(dims)} "
                                 f"does not start with it (Triton batches along axis 0 of every "
                                 "input and output)")
        symbol = batch_dim
    else:
        first = tensors[0][3][0] if tensors[0][3] else None
        for kind, name, _, dims in tensors:
            if not dims or not isinstance(dims[0], str) or dims[0] != first:
                lead = ("has no axes" if not dims else "starts with "
                        + ("an unnamed dynamic axis" if dims[0] is None else repr(dims[0])))
                return None, (f"{kind} '{name}' {_shape_text(dims)} {lead}, not the dynamic axis "
                              f"{first!r} the others start with" if isinstance(first, str) else
                              f"{kind} '{name}' {_shape_text(dims)} {lead}: no shared dynamic "
                              "batch axis")
        if "batch" not in first.lower():
            return None, (f"every input and output starts with {first!r}, which is not named as "
                          f"a batch axis (pass --batch-dim {first} if it is one)")
        symbol = first
    for kind, name, _, dims in tensors:
        if symbol in dims[1:]:
            return None, (f"{symbol!r} also sizes axis {dims.index(symbol, 1)} of {kind} '{name}' "
                          f"{_shape_text(dims)}: Triton would batch axis 0 only")
    return symbol, ""


def _triton_tensor(kind: str, name: str, elem_type: int, dims: list, batched: bool) -> Tensor:
    dtype = TRITON_TYPES.get(elem_type)
    if dtype is None:
        type_name = TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
        raise UsageError(f"{kind} '{name}' is {type_name}, which Triton has no data type for")
    out = []
    for axis, d in enumerate(dims[1:] if batched else dims, start=1 if batched else 0):
        if isinstance(d, int) and d < 1:
            raise UsageError(f"{kind} '{name}' {_shape_text(dims)} has size {d} on axis {axis}: "
                             "Triton dims are >= 1 or -1 (dynamic)")
        out.append(d if isinstance(d, int) else -1)
    if not out:
        # Triton refuses empty dims: a scalar is dims [1], and a batched model reshapes it to the
        # model's [] (what the ONNX Runtime backend's auto-complete writes, and its validation
        # accepts for a scalar of a non-batching model).
        return Tensor(name, dtype, [1], [] if batched else None)
    return Tensor(name, dtype, out)


def make_config(model: onnx.ModelProto, name: str, *, library_path: str | None,
                max_batch_size: int | None = None, batch_dim: str | None = None,
                instances: int = 1, threads: int | None = None,
                dynamic_batching: bool = False, source: str = "") -> Config:
    """The configuration for ``model`` (see the module docstring for the batch-axis rule).
    ``max_batch_size``: None picks DEFAULT_MAX_BATCH_SIZE when the model has a batch axis and 0
    otherwise; 0 turns batching off; a positive value needs a batch axis.  ``library_path`` is
    left out when the model has no MaskedMHA node (a note says so)."""
    ins, outs = model_tensors(model)
    tensors = [("input", *t) for t in ins] + [("output", *t) for t in outs]
    notes = []
    symbol, why_not = find_batch_dim(tensors, batch_dim)
    if symbol is None:
        if batch_dim is not None:
            raise UsageError(f"--batch-dim {batch_dim}: {why_not}")
        if max_batch_size:
            raise UsageError(f"--max-batch-size {max_batch_size}: the model has no batch axis "
                             f"Triton could use ({why_not})")
        if dynamic_batching:
            raise UsageError(f"--dynamic-batching needs a batch axis, and the model has none "
                             f"({why_not})")
        notes.append(f"max_batch_size 0 (Triton will not batch requests): {why_not}")
        mbs = 0
    elif max_batch_size == 0:
        if dynamic_batching:
            raise UsageError("--dynamic-batching needs --max-batch-size >= 1, not 0")
        mbs, symbol = 0, None
    else:
        mbs = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
    n_nodes = len(mha_nodes(model))
    if not n_nodes:
        notes.append(f"the model holds no {DOMAIN}::{OP_TYPE} node: it does not need the "
                     "library, so the configuration has no model_operations and no library was "
                     "copied")
        library_path = None
    return Config(
        name=name, max_batch_size=mbs,
        inputs=[_triton_tensor("input", *t, batched=mbs > 0) for t in ins],
        outputs=[_triton_tensor("output", *t, batched=mbs > 0) for t in outs],
        library_path=library_path, instances=instances, threads=threads,
        dynamic_batching=dynamic_batching, batch_dim=symbol, mha_nodes=n_nodes, source=source,
        notes=notes)


# --- writing config.pbtxt ------------------------------------------------------------------------

def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 passes through)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tensor_block(t: Tensor) -> str:
    lines = [f"    name: {_quote(t.name)}", f"    data_type: {t.data_type}",
             f"    dims: [ {', '.join(map(str, t.dims))} ]"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: [ {', '.join(map(str, t.reshape))} ] }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_text(cfg: Config) -> str:
    """config.pbtxt for ``cfg`` (protobuf text format of Triton's ``inference.ModelConfig``)."""
    from . import __version__

    head = [f"# Written by `maskedmha triton` (maskedmha {__version__})"
            + (f" from {os.path.basename(cfg.source)}" if cfg.source else "") + "."]
    if cfg.batch_dim:
        head.append(f"# Batch axis: the model's {cfg.batch_dim!r} (axis 0 of every input and "
                    "output), left out of dims.")
    if cfg.library_path:
        head.append(f"# {cfg.mha_nodes} {DOMAIN}::{OP_TYPE} node(s), run by the library "
                    "below.  The ONNX Runtime backend dlopens")
        head.append("# op_library_filename as written: a relative path would resolve against "
                    "the server's working directory.")
    body = [f"name: {_quote(cfg.name)}", 'backend: "onnxruntime"',
            f"max_batch_size: {cfg.max_batch_size}",
            "input [\n" + ",\n".join(map(_tensor_block, cfg.inputs)) + "\n]",
            "output [\n" + ",\n".join(map(_tensor_block, cfg.outputs)) + "\n]",
            # KIND_CPU: the kernel is registered for ONNX Runtime's CPU execution provider.
            f"instance_group [\n  {{\n    count: {cfg.instances}\n    kind: KIND_CPU\n  }}\n]"]
    if cfg.dynamic_batching:
        body.append("dynamic_batching { }")
    if cfg.library_path:
        body.append(f"model_operations {{\n  op_library_filename: {_quote(cfg.library_path)}\n}}")
    if cfg.threads is not None:
        body.append('parameters { key: "intra_op_thread_count" value: { string_value: '
                    f'"{cfg.threads}" }} }}')
    return "\n".join(head + body) + "\n"


# --- writing the repository entry ----------------------------------------------------------------

def check_name(name: str) -> None:
    """A model name is one folder name in the repository."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name \
            or "\0" in name:
        raise UsageError(f"--name {name!r}: a model name is one folder name (no '/', not "
                         "empty, not starting with '.')")


def _external_files(model: onnx.ModelProto, model_path: str) -> list[str]:
    """Relative paths of the external data files the model's tensors name (they resolve against
    the model's folder, so they are copied next to 1/model.onnx)."""
    found: list[str] = []

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    for t in tensors(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        norm = os.path.normpath(location)
        if not location or os.path.isabs(location) or norm.startswith(".."):
            raise UsageError(f"{model_path}: tensor '{t.name}' keeps its data at {location!r}, "
                             "outside the model's folder: cannot copy it into the repository")
        if not os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(model_path)), norm)):
            raise UsageError(f"{model_path}: tensor '{t.name}' keeps its data in {location!r}, "
                             "which does not exist next to the model")
        if norm not in found:
            found.append(norm)
    return found


def library_path_in_server(repo_dir: str, name: str, library_path: str | None,
                           server_repository: str | None) -> str:
    """op_library_filename: ``library_path`` as given, else the copied library under the
    repository as the server sees it (``server_repository``, default: REPO_DIR's absolute path)."""
    if library_path is not None:
        if not os.path.isabs(library_path) and "/" in library_path:
            raise UsageError(f"--library-path {library_path}: give an absolute path (Triton's ONNX "
                             "Runtime backend dlopens it as written, so a relative path would "
                             "resolve against the server's working directory) or a bare file "
                             "name to be found on the server's library path")
        return library_path
    if server_repository is not None:
        if not server_repository.startswith("/"):
            raise UsageError(f"--server-repository {server_repository}: give the absolute path the "
                             "server mounts REPO_DIR at (e.g. /models)")
        root = server_repository.rstrip("/")  # "/" itself becomes "", giving "/NAME/..."
    else:
        root = os.path.abspath(repo_dir).rstrip("/")
    return f"{root}/{name}/{library_file_name()}"


def write_entry(model_path: str, repo_dir: str, cfg: Config, model: onnx.ModelProto,
                force: bool = False) -> str:
    """Write REPO_DIR/NAME (config.pbtxt, 1/model.onnx with its external data, the library when
    the config names it) and return its path.  The entry is assembled in a hidden folder of
    REPO_DIR (the same file system, so the final rename is atomic) and renamed into place: a
    server polling the repository never sees half of REPO_DIR/NAME (it may list the hidden
    folder meanwhile, which it cannot load: its name is not the configuration's).  ``force``
    replaces an existing entry, whole (other version folders in it would otherwise be served
    instead of the new model)."""
    if os.path.exists(repo_dir) and not os.path.isdir(repo_dir):
        raise UsageError(f"REPO_DIR {repo_dir} is a file, not a folder")
    entry = os.path.join(repo_dir, cfg.name)
    if os.path.lexists(entry) and not force:
        raise UsageError(f"{entry} already exists; pass --force to replace it (the whole folder)")
    extra = _external_files(model, model_path)
    library = get_library_path() if cfg.library_path else None
    os.makedirs(repo_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{cfg.name}.", dir=repo_dir)
    try:
        os.mkdir(os.path.join(work, VERSION))
        shutil.copyfile(model_path, os.path.join(work, VERSION, "model.onnx"))
        src_dir = os.path.dirname(os.path.abspath(model_path))
        for rel in extra:
            dst = os.path.join(work, VERSION, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(src_dir, rel), dst)
        if library:
            shutil.copyfile(library, os.path.join(work, library_file_name()))
        with open(os.path.join(work, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(config_text(cfg))
        os.chmod(work, 0o755)  # mkdtemp makes it 0700; the server may run as another user
        old = None
        if os.path.lexists(entry):
            old = work + ".old"
            os.rename(entry, old)
        os.rename(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if old:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old)
        else:
            os.remove(old)
    return entry


def summary(cfg: Config, entry: str, repo_dir: str, needs: str) -> str:
    """What the command prints: the files, the batching, the library path, notes, the command."""
    files = ["config.pbtxt", f"{VERSION}/model.onnx"] + (
        [library_file_name()] if cfg.library_path else [])
    batching = (f"max_batch_size {cfg.max_batch_size} along {cfg.batch_dim!r}"
                + (", dynamic batching" if cfg.dynamic_batching else "")
                if cfg.max_batch_size else "max_batch_size 0")
    lines = [f"wrote {entry}: {', '.join(files)}",
             f"  {len(cfg.inputs)} input(s), {len(cfg.outputs)} output(s), {batching}; "
             f"{cfg.instances} CPU instance(s)"
             + (f", {cfg.threads} intra-op thread(s) each" if cfg.threads else "")]
    if cfg.library_path:
        lines.append(f"  op_library_filename: {cfg.library_path} (the path the server must see)")
        lines.append(f"  the server's ONNX Runtime: {needs}")
    lines += [f"  note: {n}" for n in cfg.notes]
    lines.append(f"serve: tritonserver --model-repository={os.path.abspath(repo_dir)}")
    return "\n".join(lines)
