"""The model manager's Local models tab: the models on this machine, with Load, Add and
Delete. Rows are any objects with LocalModel's fields (name, kind, size_on_disk,
architecture, context_length, supported, why_not, repo_id, path, and optionally runs_as:
"native Llama" / "generic (transformers X)", shown as "Runs here"): the app gives them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QFileDialog, QHBoxLayout, QHeaderView, QMenu, QMessageBox, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)  # fmt: skip

from ui.model_types import error_colour, fit_style, human_bytes, row_table

COLUMNS = ("Model", "Kind", "Size on disk", "Architecture", "Context", "Fit", "Runs here")
FIT_COLUMN = 5
KIND_LABELS = {"hf-cache": "HF cache", "bundled": "bundled", "folder": "folder", "gguf": "GGUF"}


class LocalModelsView(QWidget):
    loadRequested = Signal(str)  # what to pass to the engine: a repo id, a path, "" = bundled
    addRequested = Signal(str)  # a folder or .gguf path to add to the list
    deleteRequested = Signal(str)  # a cached repo id, confirmed by the user
    removeRequested = Signal(str)  # a user-added path to drop from the list (files stay)
    refreshRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("localModels")
        self.models: list[Any] = []
        self.table = self._build_table()
        self.load_button = self._button("Load", "localLoad", self._load_selected)
        self.add_button = self._button("Add folder or .gguf…", "localAdd", None)
        self.add_button.setMenu(self._add_menu())
        self.delete_button = self._button("Delete…", "localDelete", self._confirm_delete)
        refresh = self._button("Refresh", "localRefresh", self.refreshRequested.emit)
        self.confirm: QMessageBox | None = None
        buttons = QHBoxLayout()
        for button in (self.load_button, self.add_button, self.delete_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(refresh)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._selection_changed()

    def _button(self, text: str, name: str, slot) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        if slot is not None:
            button.clicked.connect(slot)
        return button

    def _build_table(self) -> QTableWidget:
        table = row_table(self, "localModelTable", COLUMNS)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        header = table.horizontalHeader()
        for column in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        # the reason a model does not run can be long: elided here, whole in the tooltip
        header.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        table.itemSelectionChanged.connect(self._selection_changed)
        table.doubleClicked.connect(self._load_selected)
        return table

    def _add_menu(self) -> QMenu:
        menu = QMenu(self)
        menu.addAction("A model folder…", lambda: self._ask_path(folder=True))
        menu.addAction("A .gguf file…", lambda: self._ask_path(folder=False))
        return menu

    # ---------------------------------------------------------------- contents
    def set_models(self, models: Sequence[Any], fits: Sequence[Any] | None = None) -> None:
        """The local models and, for each, its fit estimate (engine.fit_estimate's
        FitEstimate, or None) measured before it is loaded."""
        self.models = list(models)
        self.fits = list(fits) if fits is not None else [None] * len(self.models)
        self.table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            self._fill_row(row, model)
            self._fill_fit(row, self.fits[row])
        self._selection_changed()

    def _fill_fit(self, row: int, fit: Any | None) -> None:
        word, colour = fit_style(fit.level if fit is not None else None, self)
        item = QTableWidgetItem(word)
        if fit is not None:
            item.setToolTip(fit.sentence[:1].upper() + fit.sentence[1:])
        if colour:
            item.setForeground(QColor(colour))
        self.table.setItem(row, FIT_COLUMN, item)

    def _fill_row(self, row: int, model: Any) -> None:
        context = f"{model.context_length:,}" if model.context_length else "—"
        cells = {0: model.name, 1: KIND_LABELS.get(model.kind, model.kind),
                 2: human_bytes(model.size_on_disk), 3: model.architecture or "—", 4: context,
                 6: (getattr(model, "runs_as", "") or "yes") if model.supported else "no"}  # fmt: skip
        for column, text in cells.items():
            item = QTableWidgetItem(text)
            item.setToolTip(str(model.path) if column == 0 else model.why_not)
            if column in (2, 4):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, column, item)
        verdict = self.table.item(row, len(COLUMNS) - 1)
        if not model.supported:
            verdict.setText(f"no: {model.why_not}")
            verdict.setForeground(QColor(error_colour(self)))

    def selected(self) -> Any | None:
        rows = self.table.selectionModel().selectedRows()
        return self.models[rows[0].row()] if rows else None

    def select(self, row: int) -> None:
        self.table.selectRow(row)

    def _selection_changed(self) -> None:
        model = self.selected()
        self.load_button.setEnabled(model is not None and model.supported)
        self.delete_button.setEnabled(model is not None and model.kind != "bundled")
        removable = model is not None and model.kind in ("folder", "gguf")
        self.delete_button.setText("Remove from list…" if removable else "Delete…")

    # ---------------------------------------------------------------- actions
    def _load_selected(self, *_args) -> None:
        model = self.selected()
        if model is not None and model.supported:
            self.loadRequested.emit(load_target(model))

    def _ask_path(self, folder: bool) -> None:
        """A non-modal file dialog (no nested event loop): its answer arrives as a signal."""
        dialog = QFileDialog(self, "Add a model folder" if folder else "Add a .gguf file")
        dialog.setObjectName("localAddDialog")
        if folder:
            dialog.setFileMode(QFileDialog.FileMode.Directory)
        else:
            dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
            dialog.setNameFilter("GGUF models (*.gguf)")
        dialog.fileSelected.connect(self.addRequested.emit)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()

    def _confirm_delete(self) -> None:
        model = self.selected()
        if model is None or model.kind == "bundled":
            return
        box = QMessageBox(self)
        box.setObjectName("localDeleteConfirm")
        box.setIcon(QMessageBox.Icon.Question)
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        if model.kind == "hf-cache":
            box.setWindowTitle("Delete a model")
            box.setText(f"Delete {model.repo_id} from the Hugging Face cache?")
            box.setInformativeText(f"This frees {human_bytes(model.size_on_disk)}, and removes "
                                   "every file of the repo (all its GGUF files too).")  # fmt: skip
        else:
            box.setWindowTitle("Remove a model from the list")
            box.setText(f"Remove {model.name} from the list? Its files stay where they are.")
        box.finished.connect(lambda answer: self._answered(model, answer))
        box.finished.connect(box.deleteLater)
        self.confirm = box
        box.open()

    def _answered(self, model: Any, answer: int) -> None:
        self.confirm = None
        if answer != QMessageBox.StandardButton.Yes:
            return
        if model.kind == "hf-cache":
            self.deleteRequested.emit(model.repo_id)
        else:
            self.removeRequested.emit(str(model.path))


def load_target(model: Any) -> str:
    """"" for the bundled default (the engine's model=None); a cached safetensors repo by
    its id (the status bar then names it); a GGUF file or a folder by its path (a repo may
    hold several GGUF files)."""
    if model.kind == "bundled":
        return ""
    if model.kind == "hf-cache" and not str(model.path).endswith(".gguf"):
        return model.repo_id
    return str(model.path)
