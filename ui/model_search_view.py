"""The model manager's Hub search: free text, sort, format filter, and a results table with
parameters, size, license, gated, downloads, likes, whether pagedesk runs it, and the fit."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)  # fmt: skip

from ui.model_types import (
    SearchRow, error_colour, fit_style, human_bytes, human_count, row_table,
)

SORTS = {"downloads": "Most downloaded", "likes": "Most liked", "trending_score": "Trending"}
FORMATS = {"safetensors": "Safetensors", "gguf": "GGUF", "": "Any format"}
COLUMNS = ("Model", "Parameters", "Size", "License", "Gated", "Downloads", "Likes",
           "Runs here", "Fit")  # fmt: skip
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class ModelSearchView(QWidget):
    searchRequested = Signal(str, str, str)  # text, sort key, format ("" = any)
    modelChosen = Signal(str)  # repo id

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("modelSearch")
        self.rows: list[SearchRow] = []
        self.query = QLineEdit(self)
        self.query.setObjectName("searchInput")
        self.query.setPlaceholderText("Search text-generation models on the Hugging Face Hub…")
        self.query.returnPressed.connect(self.search)
        self.sort = self._combo("searchSort", SORTS)
        self.format = self._combo("searchFormat", FORMATS)
        self.button = QPushButton("Search", self)
        self.button.setObjectName("searchButton")
        self.button.clicked.connect(self.search)
        self.status = QLabel("", self)
        self.status.setObjectName("searchStatus")
        self.table = self._build_table()
        bar = QHBoxLayout()
        bar.addWidget(self.query, 1)
        for widget in (self.sort, self.format, self.button):
            bar.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)

    def _combo(self, name: str, options: dict[str, str]) -> QComboBox:
        combo = QComboBox(self)
        combo.setObjectName(name)
        for key, label in options.items():
            combo.addItem(label, key)
        return combo

    def _build_table(self) -> QTableWidget:
        table = row_table(self, "searchResults", COLUMNS)
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        table.itemSelectionChanged.connect(self._chosen)
        return table

    def search(self) -> None:
        self.status.setText("Searching the Hub…")
        self.button.setEnabled(False)
        self.searchRequested.emit(self.query.text().strip(), self.sort.currentData(),
                                  self.format.currentData())  # fmt: skip

    def set_results(self, rows: Sequence[SearchRow]) -> None:
        self.button.setEnabled(True)
        self.rows = list(rows)
        self.status.setText(f"{len(self.rows)} models" if self.rows else "No models found.")
        self.table.setRowCount(len(self.rows))
        for index, row in enumerate(self.rows):
            self._fill(index, row)

    def set_failed(self, sentence: str) -> None:
        self.button.setEnabled(True)
        self.status.setText(sentence)

    def _fill(self, index: int, row: SearchRow) -> None:
        runs = {True: "yes", False: "no", None: "?"}[row.supported]
        level, colour = fit_style(row.fit_level, self)
        cells = (row.repo_id, human_count(row.parameters), human_bytes(row.size_bytes),
                 row.license or "—", "gated" if row.gated else "", human_count(row.downloads),
                 human_count(row.likes), runs, level)  # fmt: skip
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if column in (1, 2, 5, 6):
                item.setTextAlignment(_RIGHT)
            self.table.setItem(index, column, item)
        self.table.item(index, 7).setToolTip(row.why_not or "Supported by pagedesk's engine.")
        if row.supported is False:
            self.table.item(index, 7).setForeground(QColor(error_colour(self)))
        fit = self.table.item(index, 8)
        fit.setToolTip(row.fit_sentence)
        if colour:
            fit.setForeground(QColor(colour))

    def _chosen(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.modelChosen.emit(self.rows[rows[0].row()].repo_id)
