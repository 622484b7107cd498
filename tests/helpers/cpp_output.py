"""What the C++ example programs print (examples/cpp: main.cc, text_main.cc) read back as arrays:
each output is a line `output NAME shape [d0,d1,...]` followed by one value per line."""
from __future__ import annotations

import numpy as np


def parse_outputs(stdout: str) -> dict:
    """{output name: float32 array} from a program's stdout."""
    outs, name, shape, vals = {}, None, None, []
    for line in stdout.splitlines():
        if line.startswith("output "):
            if name is not None:
                outs[name] = np.array(vals, np.float32).reshape(shape)
            _, name, _, dims = line.split()
            shape = [int(d) for d in dims.strip("[]").split(",") if d]
            vals = []
        else:
            vals.append(float(line))
    if name is not None:
        outs[name] = np.array(vals, np.float32).reshape(shape)
    return outs
