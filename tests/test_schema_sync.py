"""The op's contract is written once per language: ops/schema.h (C++) and symbolic/schema.py
(Python); docs/MaskedMHA.md's tables are checked against the Python one by test_spec_tables.py.
This test reads the C++ header as text and checks it agrees with symbolic/schema.py: domain, op
type, version, the inputs in order (and, against the document, which are required), the outputs,
the attributes with their defaults."""
from __future__ import annotations

import re
from pathlib import Path

from maskedmha.symbolic import schema

ROOT = Path(__file__).resolve().parent.parent
HEADER = (ROOT / "ops" / "schema.h").read_text()


def _header_string(name: str) -> str:
    m = re.search(rf'constexpr const char\* {name} = "([^"]*)";', HEADER)
    assert m, f"{name} not found in ops/schema.h"
    return m.group(1)


def _header_inputs() -> list[tuple[str, bool]]:
    body = re.search(r"kInputs\[kNumInputs\] = \{(.*?)\n\};", HEADER, re.S).group(1)
    return [(n, r == "true") for n, r in re.findall(r'\{"(\w+)", (true|false)\}', body)]


def _header_outputs() -> list[str]:
    body = re.search(r"kOutputNames\[kNumOutputs\] = \{(.*?)\n\};", HEADER, re.S).group(1)
    return re.findall(r'"(\w+)"', body)


def _header_attributes() -> dict:
    """name -> default (None when required), in declaration order."""
    out = {}
    for name, dflt, required in re.findall(
            r'IntAttribute k\w+ = \{"(\w+)", (-?\d+), (true|false)\};', HEADER):
        out[name] = None if required == "true" else int(dflt)
    for name, dflt in re.findall(r'StringAttribute k\w+ = \{"(\w+)", "(\w*)",', HEADER):
        out[name] = dflt
    order = re.findall(r'(?:Int|String)Attribute k\w+ = \{"(\w+)"', HEADER)
    return {n: out[n] for n in order}


def test_domain_op_version():
    assert _header_string("kDomain") == schema.DOMAIN
    assert _header_string("kOpType") == schema.OP_TYPE
    version = int(re.search(r"kOpsetVersion = (\d+);", HEADER).group(1))
    assert version == schema.OPSET_VERSION


def test_inputs():
    header = _header_inputs()
    assert [n for n, _ in header] == list(schema.INPUT_NAMES)
    assert [req for _, req in header] == [n in schema.REQUIRED_INPUTS for n in schema.INPUT_NAMES]
    enum = re.search(r"enum Input : int \{(.*?)\};", HEADER, re.S).group(1)
    assert len(re.findall(r"k\w+", enum)) == len(header) + 1  # + kNumInputs


def test_outputs():
    assert _header_outputs() == list(schema.OUTPUT_NAMES)


def test_attributes_and_defaults():
    header = _header_attributes()
    assert list(header) == list(schema.ATTRIBUTES)
    assert {k: v for k, v in header.items() if v is not None} == schema.ATTRIBUTE_DEFAULTS


def test_no_name_spelled_outside_the_schema():
    """ops/ takes every input, attribute and domain name from schema.h (comments aside)."""
    names = set(schema.INPUT_NAMES) | set(schema.ATTRIBUTES) | {schema.DOMAIN}
    for path in sorted((ROOT / "ops").glob("*.[ch]*")):
        if path.name == "schema.h":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', code):
                assert literal not in names, f"{path.name}:{number} spells {literal!r}"
