"""The "New remote session" dialog: a base URL, an API key, and a model from its /v1/models.

The dialog checks nothing itself: "Check" emits `checkRequested(url, key)`, and the app
answers with `show_models` (the list, with each model's max_model_len where the server
gives it) or `show_error` (inline, under the fields). "Create" is enabled once a model is
picked and emits `createRequested(url, key, model, max_model_len or 0)`. Non-modal (open(),
no nested event loop).
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QPushButton,
    QVBoxLayout, QWidget,
)  # fmt: skip

EXAMPLE_URL = "http://gpu-cluster.example:8000"


class RemoteSessionDialog(QDialog):
    checkRequested = Signal(str, str)  # url, key
    createRequested = Signal(str, str, str, int)  # url, key, model, max_model_len (0: unknown)

    def __init__(self, key_note: str, parent: QWidget | None = None):
        """`key_note`: where the key will be kept (the OS keyring, or memory for this run)."""
        super().__init__(parent)
        self.setObjectName("remoteSessionDialog")
        self.setWindowTitle("New remote session")
        self.models: list[tuple[str, int | None]] = []
        self.url = QLineEdit(self)
        self.url.setObjectName("remoteUrl")
        self.url.setPlaceholderText(EXAMPLE_URL)
        self.key = QLineEdit(self)
        self.key.setObjectName("remoteKey")
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("empty for a server without --api-key")
        self.key_note = QLabel(key_note, self)
        self.key_note.setObjectName("remoteKeyNote")
        self.key_note.setWordWrap(True)
        self.check_button = QPushButton("Check and list models", self)
        self.check_button.setObjectName("remoteCheckButton")
        self.check_button.clicked.connect(self._check)
        self.model = QComboBox(self)
        self.model.setObjectName("remoteModel")
        self.model.currentIndexChanged.connect(self._model_changed)
        self.context = QLabel("", self)
        self.context.setObjectName("remoteContextLabel")
        self.status = QLabel("Enter the server's URL and key, then check them.", self)
        self.status.setObjectName("remoteStatus")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.buttons = QDialogButtonBox(self)
        self.create_button = self.buttons.addButton("Create", QDialogButtonBox.ButtonRole.AcceptRole)
        self.create_button.setObjectName("remoteCreateButton")
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self._create)
        self.buttons.rejected.connect(self.reject)
        self._build_layout()
        self.url.textChanged.connect(self._fields_changed)
        self.key.textChanged.connect(self._fields_changed)
        self._fields_changed()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Base URL", self.url)
        form.addRow("API key", self.key)
        form.addRow("", self.key_note)
        form.addRow("", self.check_button)
        form.addRow("Model", self.model)
        form.addRow("Context", self.context)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.resize(520, self.sizeHint().height())

    # ---------------------------------------------------------------- the app's answers
    def show_checking(self) -> None:
        self.check_button.setEnabled(False)
        self._set_status("Checking…", error=False)

    def show_models(self, models: Sequence[tuple[str, int | None]]) -> None:
        """The endpoint answered: (model id, max_model_len or None) for each model."""
        self.check_button.setEnabled(True)
        self.models = list(models)
        self.model.clear()
        for model_id, _ in self.models:
            self.model.addItem(model_id)
        if self.models:
            self._set_status(f"{len(self.models)} model(s) served. Pick one and create the "
                             "session.", error=False)  # fmt: skip
        else:
            self._set_status("The server answered but serves no model.", error=True)
        self._model_changed()

    def show_error(self, message: str) -> None:
        self.check_button.setEnabled(True)
        self.models = []
        self.model.clear()
        self._set_status(message, error=True)
        self._model_changed()

    # ---------------------------------------------------------------- inside
    def _set_status(self, text: str, error: bool) -> None:
        self.status.setText(text)
        self.status.setProperty("error", error)
        self.status.setStyleSheet("color: #c0392b;" if error else "")

    def _fields_changed(self) -> None:
        self.check_button.setEnabled(bool(self.url.text().strip()))
        if self.models:  # what was listed belongs to the old URL or key
            self.models = []
            self.model.clear()
            self._set_status("Check again: the URL or key changed.", error=False)
        self._model_changed()

    def _model_changed(self, _index: int = -1) -> None:
        i = self.model.currentIndex()
        ok = 0 <= i < len(self.models)
        self.create_button.setEnabled(ok)
        length = self.models[i][1] if ok else None
        self.context.setText(f"{length:,} tokens (max_model_len)" if length else
                             ("not given by the server" if ok else ""))  # fmt: skip

    def _check(self) -> None:
        self.checkRequested.emit(self.url.text().strip(), self.key.text())

    def _create(self) -> None:
        i = self.model.currentIndex()
        if not 0 <= i < len(self.models):
            return
        model_id, length = self.models[i]
        self.createRequested.emit(self.url.text().strip(), self.key.text(), model_id, length or 0)
        self.accept()
