"""Modules by concern: no module of the bundle over 400 lines without its reason at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import covidct

from tests.conftest import bundle_modules

MAX_LINES = 400
REASON = "Longer than 400 lines because"


def test_the_walk_sees_the_linked_folders() -> None:
    names = {p.relative_to(Path(covidct.__file__).parent).parts[0] for p in bundle_modules()}
    assert {"preprocessing", "training", "export", "client", "benchmarks", "serving", "app"} <= names


def test_long_modules_say_why() -> None:
    unexplained = []
    for path in bundle_modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.name}: {text.count(chr(10))} lines")
    assert unexplained == [], f"split by concern, or say '{REASON} ...' in the module docstring: {unexplained}"
