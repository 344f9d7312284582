"""What the model manager's widgets show, as plain values the app fills in (the widgets
never import `app`): a search result, a chosen model's files, and the fit levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QAbstractItemView, QTableWidget, QWidget

# Fit levels (engine.fit_estimate) -> the words and colours (light theme, dark theme) the
# lists show, like LM Studio's "full GPU offload possible / likely fits / likely too large".
FIT_LEVELS = {
    "fits": ("Fits", "#2e7d32", "#81c784"),
    "tight": ("May fit", "#b26a00", "#ffb74d"),
    "too_large": ("Too large", "#c62828", "#ef6b6b"),
}


def is_dark(widget: QWidget) -> bool:
    return widget.palette().color(QPalette.ColorRole.Window).lightness() < 128


def fit_style(level: str | None, widget: QWidget) -> tuple[str, str]:
    """(word, colour) for a fit level; ("—", "") when there is no estimate."""
    if level not in FIT_LEVELS:
        return "—", ""
    word, light, dark = FIT_LEVELS[level]
    return word, dark if is_dark(widget) else light


def error_colour(widget: QWidget) -> str:
    """Red that reads on the widget's background: darker on light themes, lighter on dark."""
    return "#ef6b6b" if is_dark(widget) else "#c62828"


@dataclass(frozen=True, slots=True)
class SearchRow:
    repo_id: str
    parameters: int | None
    size_bytes: int | None  # the weights' size where the Hub says it, else None
    license: str
    gated: bool
    downloads: int
    likes: int
    supported: bool | None  # None: not known from the listing
    why_not: str
    fit_level: str | None
    fit_sentence: str


@dataclass(frozen=True, slots=True)
class FileRow:
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class ChosenModel:
    repo_id: str
    commit: str
    files: tuple[FileRow, ...]  # what a download fetches
    total_bytes: int
    gguf_files: tuple[FileRow, ...]  # every quantisation in the repo
    gguf_choice: str | None
    fit_level: str | None
    fit_sentence: str
    supported: bool | None
    why_not: str


def human_bytes(n: int | float | None) -> str:
    """1536 -> "1.5 KiB"; None -> "—"."""
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def human_count(n: int | None) -> str:
    """1_234_567 -> "1.2M"; parameters and downloads alike."""
    if n is None:
        return "—"
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def row_table(parent: QWidget, name: str, columns: Sequence[str]) -> QTableWidget:
    """A read-only table of rows, one selectable at a time (the manager's lists)."""
    table = QTableWidget(0, len(columns), parent)
    table.setObjectName(name)
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    table.setAlternatingRowColors(True)
    return table
