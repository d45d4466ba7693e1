"""The README's API table names each function's arguments as the code has them (issue #13 item 12:
the table listed ``sampled_consistency_pair(x, cdf, sigmas)``, the signature is ``(x, sigmas, cdf)``).

For every row whose first cell is a call ``name(arguments)`` of a noisefast attribute: the
arguments listed before a ``*`` are the function's leading positional parameters, in order, and
every argument listed after it is one of its keyword parameters.
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

import noisefast

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\|\s*`(?:noisefast\.)?([A-Za-z_][\w.]*)\((.*?)\)`")


def _split(arguments: str):
    """Top-level comma-separated items of an argument list (defaults may hold calls and tuples)."""
    items, depth, current = [], 0, ""
    for ch in arguments:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current.strip())
    return items


def _rows():
    text = README.read_text()
    table = text[text.index("<!-- api-table:start -->"):text.index("<!-- api-table:end -->")] \
        if "<!-- api-table:start -->" in text else text
    rows = []
    for line in table.splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match.group(1), _split(match.group(2))))
    return rows


def _resolve(dotted: str):
    obj = noisefast
    for part in dotted.split("."):
        if not hasattr(obj, part):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
                continue
            except ImportError:
                pytest.skip(f"{dotted}: optional dependency missing")
        obj = getattr(obj, part)
    return obj


ROWS = _rows()


def test_the_table_is_found():
    assert len(ROWS) > 20
    assert "sampled_consistency_pair" in {name for name, _ in ROWS}


@pytest.mark.parametrize("name, listed", ROWS, ids=[name for name, _ in ROWS])
def test_listed_arguments_match_the_signature(name, listed):
    params = list(inspect.signature(_resolve(name)).parameters.values())
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in params}
    keyword_only = False
    position = 0
    for item in listed:
        if item in ("...", "*"):
            keyword_only = keyword_only or item == "*"
            continue
        if item.startswith("*") and not item.startswith("**"):
            arg = item[1:]
            assert arg in by_name and by_name[arg].kind == inspect.Parameter.VAR_POSITIONAL, \
                f"README: {name}(... {item} ...), the signature has no *{arg}"
            keyword_only = True
            continue
        arg = item.split("=", 1)[0].strip()
        assert arg in by_name, f"README: {name} lists {arg!r}, the signature is {[p.name for p in params]}"
        if not keyword_only:
            assert position < len(positional) and positional[position] == arg, \
                f"README: {name} lists {arg!r} as positional argument {position}, the signature has {positional}"
            position += 1
