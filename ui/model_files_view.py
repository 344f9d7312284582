"""The chosen model: the files a download would fetch with their sizes and total, a GGUF
quantisation picker when the repo has several, the fit sentence, and Download."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)  # fmt: skip

from ui.model_types import ChosenModel, error_colour, fit_style, human_bytes


class ModelFilesView(QWidget):
    ggufChosen = Signal(str, str)  # repo id, .gguf file
    downloadRequested = Signal(str, str)  # repo id, .gguf file ("" = the plan's default)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("modelFiles")
        self.chosen: ChosenModel | None = None
        self.title = QLabel("Choose a model in the list to see its files.", self)
        self.title.setObjectName("chosenTitle")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.picker = QComboBox(self)
        self.picker.setObjectName("ggufPicker")
        self.picker.activated.connect(self._picked)
        self.picker_label = QLabel("Quantisation:", self)
        self.table = self._build_table()
        self.total = self._label("chosenTotal")
        self.fit = self._label("fitSentence")
        self.support = self._label("chosenSupport")
        self.download = QPushButton("Download", self)
        self.download.setObjectName("downloadButton")
        self.download.clicked.connect(self._download)
        self._layout()
        self.clear()

    def _label(self, name: str) -> QLabel:
        label = QLabel("", self)
        label.setObjectName(name)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _build_table(self) -> QTableWidget:
        table = QTableWidget(0, 2, self)
        table.setObjectName("chosenFiles")
        table.setHorizontalHeaderLabels(("File", "Size"))
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.verticalHeader().hide()
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        return table

    def _layout(self) -> None:
        picker = QHBoxLayout()
        picker.addWidget(self.picker_label)
        picker.addWidget(self.picker, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.total, 1)
        bottom.addWidget(self.download)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addLayout(picker)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.fit)
        layout.addWidget(self.support)
        layout.addLayout(bottom)

    # ---------------------------------------------------------------- states
    def clear(self, text: str = "Choose a model in the list to see its files.") -> None:
        self.chosen = None
        self.title.setText(text)
        self.table.setRowCount(0)
        for label in (self.total, self.fit, self.support):
            label.setText("")
        self._show_picker(False)
        self.download.setEnabled(False)

    def set_loading(self, repo_id: str) -> None:
        self.clear(f"{repo_id}: asking the Hub for its files…")

    def set_failed(self, repo_id: str, sentence: str) -> None:
        self.clear(repo_id)
        self.support.setText(sentence)
        self.support.setStyleSheet(f"color: {error_colour(self)};")

    def set_chosen(self, chosen: ChosenModel) -> None:
        self.chosen = chosen
        self.title.setText(f"{chosen.repo_id} @ {chosen.commit[:10]}")
        self.table.setRowCount(len(chosen.files))
        for row, file in enumerate(chosen.files):
            size = QTableWidgetItem(human_bytes(file.size))
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, 0, QTableWidgetItem(file.path))
            self.table.setItem(row, 1, size)
        self.total.setText(f"{len(chosen.files)} files, {human_bytes(chosen.total_bytes)} in all")
        self._fill_picker(chosen)
        self._show_fit(chosen)
        self.download.setEnabled(True)

    def _fill_picker(self, chosen: ChosenModel) -> None:
        self.picker.clear()
        for file in chosen.gguf_files:
            self.picker.addItem(f"{file.path}  ({human_bytes(file.size)})", file.path)
        if chosen.gguf_choice:
            self.picker.setCurrentIndex(max(0, self.picker.findData(chosen.gguf_choice)))
        self._show_picker(len(chosen.gguf_files) > 1)

    def _show_picker(self, visible: bool) -> None:
        self.picker.setVisible(visible)
        self.picker_label.setVisible(visible)

    def _show_fit(self, chosen: ChosenModel) -> None:
        word, colour = fit_style(chosen.fit_level, self)
        sentence = chosen.fit_sentence
        self.fit.setText(f"{word}: {sentence}" if colour else sentence)
        self.fit.setStyleSheet(f"color: {colour};" if colour else "")
        if chosen.supported is False:
            self.support.setText(f"pagedesk cannot run this model: {chosen.why_not}")
            self.support.setStyleSheet(f"color: {error_colour(self)};")
        else:
            self.support.setText("")
            self.support.setStyleSheet("")

    # ---------------------------------------------------------------- actions
    def _picked(self, index: int) -> None:
        if self.chosen is not None and index >= 0:
            self.ggufChosen.emit(self.chosen.repo_id, self.picker.itemData(index))

    def _download(self) -> None:
        if self.chosen is not None:
            self.download.setEnabled(False)  # one click, one job
            self.downloadRequested.emit(self.chosen.repo_id, self.chosen.gguf_choice or "")
