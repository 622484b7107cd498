"""Placeholder: the export API is being written (see symbolic/)."""


def export(*args, **kwargs):
    raise NotImplementedError("maskedmha.export is not written yet")
