"""pagedesk's application layer: the entry point and the wiring of engine and window.

`create_window(data_dir, model=None)` builds the main window (not shown) on a running
QApplication with a qasync loop; Qt is imported only when it is called, so `pagedesk
demo` and `pagedesk serve` run where PySide6 is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_window(data_dir: str | Path, model: str | None = None) -> Any:
    from app.window import create_window as build

    return build(data_dir, model)
