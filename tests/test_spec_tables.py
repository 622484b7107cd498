"""docs/MaskedMHA.md and symbolic/schema.py state the op's contract twice (the prose for people,
the module for code): their tables must agree on the domain, op type, opset version, the input,
output and attribute names in order, and the attribute defaults.  The Markdown tables are parsed
as written."""
from __future__ import annotations

import ast
import os
import re

import pytest

from maskedmha.symbolic import schema

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "MaskedMHA.md")


def _sections() -> dict[str, list[str]]:
    """'## Heading' (its first word, lower case) -> the lines under it; "" -> the lines before
    the first heading."""
    sections, current = {"": []}, ""
    with open(SPEC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                current = line[3:].split()[0].lower()
                sections[current] = []
            else:
                sections[current].append(line.rstrip("\n"))
    return sections


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table in ``lines``: its header cells and its body rows' cells."""
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header, rule, *body = [_cells(ln) for ln in lines[start:end]]
    assert set("".join(rule)) <= set("-: "), f"not a table rule: {rule}"
    for row in body:
        assert len(row) == len(header), f"row {row} has {len(row)} cells, header {len(header)}"
    return header, body


def _rows(lines: list[str]) -> list[dict[str, str]]:
    header, body = _table(lines)
    return [dict(zip(header, row)) for row in body]


def _code(cell: str) -> str:
    """The text of a cell that is one `code span`."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"expected one `code` span, got {cell!r}"
    return m.group(1)


def _default(cell: str):
    """A documented default as a Python value: 0, 1, a quoted string; None for 'required'."""
    return None if cell == "required" else ast.literal_eval(cell.strip("`"))


@pytest.fixture(scope="module")
def sections():
    return _sections()


def test_identity_table_names_the_schema_op(sections):
    """The two-column table before the first section: domain, op type, opset version."""
    rows = dict(row[:2] for row in _table(sections[""])[1])
    assert _code(rows["domain"]) == schema.DOMAIN
    assert _code(rows["op type"]) == schema.OP_TYPE
    assert int(rows["opset version"]) == schema.OPSET_VERSION


def test_input_table_matches_schema(sections):
    rows = _rows(sections["inputs"])
    assert [int(r["#"]) for r in rows] == list(range(len(rows)))
    assert tuple(_code(r["name"]) for r in rows) == schema.INPUT_NAMES
    assert tuple(_code(r["name"]) for r in rows if r["required"] == "yes") == schema.REQUIRED_INPUTS


def test_output_table_matches_schema(sections):
    rows = _rows(sections["outputs"])
    assert [int(r["#"]) for r in rows] == list(range(len(rows)))
    assert tuple(_code(r["name"]) for r in rows) == schema.OUTPUT_NAMES


def test_attribute_table_matches_schema(sections):
    rows = _rows(sections["attributes"])
    assert tuple(_code(r["name"]) for r in rows) == schema.ATTRIBUTES
    documented = {_code(r["name"]): _default(r["default"]) for r in rows}
    assert {k: v for k, v in documented.items() if v is not None} == schema.ATTRIBUTE_DEFAULTS
    # Only num_heads is required (has no default), in both.
    assert [k for k, v in documented.items() if v is None] == \
        [a for a in schema.ATTRIBUTES if a not in schema.ATTRIBUTE_DEFAULTS] == ["num_heads"]


def test_a_disagreement_is_caught(sections, monkeypatch):
    """The check bites: a schema with two inputs swapped or another default fails it."""
    names = list(schema.INPUT_NAMES)
    names[9], names[10] = names[10], names[9]
    monkeypatch.setattr(schema, "INPUT_NAMES", tuple(names))
    with pytest.raises(AssertionError):
        test_input_table_matches_schema(sections)
    monkeypatch.setattr(schema, "ATTRIBUTE_DEFAULTS", dict(schema.ATTRIBUTE_DEFAULTS, is_causal=1))
    with pytest.raises(AssertionError):
        test_attribute_table_matches_schema(sections)
