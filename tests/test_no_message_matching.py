"""No shipped code decides on the text of an exception's message (MLflow may reword any of them): decisions are
made on exception classes and error codes (scoring.registry's typed RegistryErrors).

The check reads every module of the shipped packages and looks, inside each `except ... as name:` block, for a
comparison that reads `str(name)` (or `name.message`, `name.args`): `"x" in str(exc)`, `str(exc).startswith(...)`,
`str(exc) == ...`, `re.search(..., str(exc))`. Formatting the message into another one is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("scoring", "serving", "plugins", "dags", "stack")
_TEXT_TESTS = {"startswith", "endswith", "find", "index", "count", "search", "match", "fullmatch", "findall"}


def _reads_text_of(node: ast.AST, name: str) -> bool:
    """`str(name)`, `str(name).lower()`, `name.message`, `name.args` (possibly inside other expressions)."""
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("str", "repr")
                and sub.args and isinstance(sub.args[0], ast.Name) and sub.args[0].id == name):
            return True
        if (isinstance(sub, ast.Attribute) and sub.attr in ("message", "args") and isinstance(sub.value, ast.Name)
                and sub.value.id == name):
            return True
    return False


def _is_exception_type(annotation: ast.AST | None) -> bool:
    name = annotation.id if isinstance(annotation, ast.Name) else getattr(annotation, "attr", "")
    return name.endswith(("Exception", "Error"))


def _scopes(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """(code, name) pairs where `name` holds an exception: `except ... as name:` blocks, and functions with a
    parameter annotated as an exception (e.g. `def _missing(exc: MlflowException)`)."""
    scopes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.name is not None:
            scopes.append((node, node.name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes += [(node, a.arg) for a in node.args.args + node.args.kwonlyargs if _is_exception_type(a.annotation)]
    return scopes


def message_matches(source: str) -> list[tuple[int, str]]:
    """(line, code) of every decision on an exception's message text in `source`."""
    found = set()
    for scope, name in _scopes(ast.parse(source)):
        for node in ast.walk(scope):
            hit = False
            if isinstance(node, ast.Compare):
                hit = _reads_text_of(node, name)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _TEXT_TESTS:
                hit = any(_reads_text_of(arg, name) for arg in [node.func.value, *node.args])
            if hit:
                found.add((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_the_check_finds_what_it_looks_for():
    source = '''
try:
    pass
except MlflowException as exc:
    if "not found" in str(exc).lower() or any(s in str(exc) for s in FAILURES):
        pass
    if str(exc).startswith("API request"):
        pass
    if re.search("Connection refused", str(exc)) or exc.args[0] == "x":
        pass
    raise RegistryError(f"cannot read: {exc}") from exc  # formatting it is fine


def _missing(exc: MlflowException) -> bool:
    return "not found" in str(exc).lower()
'''
    lines = [line for line, _ in message_matches(source)]
    assert lines == [5, 5, 7, 9, 9, 15], message_matches(source)


def test_no_shipped_code_decides_on_message_text():
    found = []
    for package in SHIPPED:
        for path in sorted((REPO / package).rglob("*.py")):
            found += [f"{path.relative_to(REPO)}:{line}: {code}" for line, code in message_matches(path.read_text())]
    assert found == [], "decisions on exception message text:\n" + "\n".join(found)
