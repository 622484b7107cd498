"""pytest plugin for scripts/sanitize.sh: every onnxruntime session is made without the CPU
memory arena, so each tensor ORT allocates (the kernel's outputs included) is its own malloc
block with ASan red zones around it.  With the arena, an out-of-bounds write past an output
would land inside the arena's big block and go unnoticed."""
import onnxruntime as ort

_init = ort.InferenceSession.__init__


def _init_without_arena(self, path_or_bytes=None, sess_options=None, *args, **kwargs):
    if sess_options is None:
        sess_options = ort.SessionOptions()
    sess_options.enable_cpu_mem_arena = False
    _init(self, path_or_bytes, sess_options, *args, **kwargs)


ort.InferenceSession.__init__ = _init_without_arena
