"""Settings are read through typed objects (dataclasses of `setting(...)` fields, built with `load`), never with
a bare `scoring.settings.read(...)` elsewhere: one place says what a component reads, with its types and defaults."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The registry itself, and the stack's typed config (its derived defaults read single variables by design).
ALLOWED = {"scoring/settings.py", "stack/config.py"}
# Files allowed a bare read for now (none: keep it so, the test below fails on a stale entry).
TODO: set[str] = set()
SKIP_DIRS = {".venv", ".git", "tests", ".local", "node_modules"}


def _sources() -> list[Path]:
    return [p for p in REPO.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(REPO).parts)]


def bare_reads(tree: ast.AST) -> list[int]:
    """Lines calling scoring.settings.read: as an imported name (`read(...)`, any alias) or through the module
    (`settings.read(...)`, any alias)."""
    names, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "scoring.settings":
            names |= {a.asname or a.name for a in node.names if a.name == "read"}
        elif isinstance(node, ast.ImportFrom) and node.module == "scoring":
            modules |= {a.asname or a.name for a in node.names if a.name == "settings"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "scoring.settings" and a.asname}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in names) or (
                isinstance(func, ast.Attribute) and func.attr == "read" and isinstance(func.value, ast.Name)
                and func.value.id in modules):
            lines.append(node.lineno)
    return lines


def test_the_scan_finds_every_spelling() -> None:
    code = ("from scoring.settings import read as r\nfrom scoring import settings as s\nimport scoring.settings as m\n"
            "r('A')\ns.read('B')\nm.read('C')\nother.read('D')\n")
    assert bare_reads(ast.parse(code)) == [4, 5, 6]


def test_settings_are_read_only_through_typed_objects() -> None:
    found = {}
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        if rel in ALLOWED:
            continue
        lines = bare_reads(ast.parse(path.read_text(), filename=rel))
        if lines:
            found[rel] = lines
    assert set(found) <= TODO, {k: v for k, v in found.items() if k not in TODO}


def test_the_todo_list_holds_only_files_that_still_need_it() -> None:
    """Once a TODO file reads through a typed object, it leaves the list (so the list cannot go stale)."""
    still = {rel for rel in TODO if (REPO / rel).exists() and bare_reads(ast.parse((REPO / rel).read_text()))}
    assert still == TODO, f"remove from TODO: {sorted(TODO - still)}"
