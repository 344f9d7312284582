"""ui/ holds widgets only: it never imports `app`, and from the engine only public types."""

from __future__ import annotations

import ast
from pathlib import Path

UI = Path(__file__).resolve().parent.parent / "ui"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ui_imports_neither_app_nor_engine_internals():
    files = sorted(UI.glob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            assert module.split(".")[0] != "app", f"{path.name} imports {module}"
            if module.startswith("engine"):
                assert module == "engine", f"{path.name} imports engine internals: {module}"
