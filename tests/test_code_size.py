"""Size limits for the simulator's code: no module over 600 lines, no function over 80.

Long modules and functions are where one concern grows a second path (issue 12, item 7).
The limits are counted the simple way: physical lines of the file, and a function's lines
from its ``def`` to its last line (docstring and comments included, decorators not).
There is no allowlist: the last violations were split in issue 12; split new code the
same way rather than add exceptions here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sim", "hwprofiles", "xpusim")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _functions(tree: ast.Module) -> list[tuple[str, int]]:
    """(qualified name, line count) of every function and method, nested ones included."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                found.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_the_folders_exist() -> None:
    # Guards against the scan silently finding nothing after a move.
    assert all((ROOT / folder / "__init__.py").is_file() for folder in FOLDERS)


def test_no_module_over_the_limit() -> None:
    lines = {_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    long = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_no_function_over_the_limit() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, n in _functions(tree):
            if n > MAX_FUNCTION_LINES:
                long[f"{_name(path)}::{name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"


def test_the_function_scan_sees_methods_and_nested_functions() -> None:
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n")
    assert _functions(tree) == [("A.f", 3), ("A.f.g", 2)]
