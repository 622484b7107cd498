"""Placeholder: decompose() is being written (see symbolic/)."""


def decompose(model):
    raise NotImplementedError("maskedmha.decompose is not written yet")
