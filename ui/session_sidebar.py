"""The sidebar: every session, a search by title, and new / rename / duplicate / delete.

It shows any QAbstractItemModel whose rows are sessions; `id_role` is the role that holds
a session's id. Renaming edits the title in place (the model's setData does the rest).
"""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView, QGridLayout, QLineEdit, QListView, QMessageBox, QPushButton,
    QVBoxLayout, QWidget,
)  # fmt: skip


class SessionSidebar(QWidget):
    newRequested = Signal()
    newRemoteRequested = Signal()  # a session on a remote OpenAI-compatible endpoint
    openRequested = Signal(int)
    duplicateRequested = Signal(int)
    deleteRequested = Signal(int)

    def __init__(self, model: QAbstractItemModel, id_role: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("sessionSidebar")
        self.id_role = id_role
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(model)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.search = QLineEdit(self)
        self.search.setObjectName("sessionSearch")
        self.search.setPlaceholderText("Search sessions by title")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        self.list = QListView(self)
        self.list.setObjectName("sessionList")
        self.list.setModel(self.proxy)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.activated.connect(self._open_index)
        self.list.doubleClicked.connect(self._open_index)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addLayout(self._build_buttons())

    def _build_buttons(self) -> QGridLayout:
        grid = QGridLayout()
        specs = [
            ("newSessionButton", "New", self.newRequested.emit),
            ("openSessionButton", "Open", lambda: self._with_current(self.openRequested.emit)),
            ("renameSessionButton", "Rename", self.rename_current),
            ("duplicateSessionButton", "Duplicate",
             lambda: self._with_current(self.duplicateRequested.emit)),
            ("deleteSessionButton", "Delete", lambda: self._with_current(self.confirm_delete)),
            ("newRemoteSessionButton", "Remote…", self.newRemoteRequested.emit),
        ]  # fmt: skip
        for i, (name, text, slot) in enumerate(specs):
            button = QPushButton(text, self)
            button.setObjectName(name)
            button.clicked.connect(lambda _checked=False, s=slot: s())
            if name == "newRemoteSessionButton":
                button.setToolTip("New remote session: a vLLM cluster or another "
                                  "OpenAI-compatible server")
            grid.addWidget(button, i // 3, i % 3)
        return grid

    def current_session_id(self) -> int | None:
        index = self.list.currentIndex()
        return index.data(self.id_role) if index.isValid() else None

    def select_session(self, session_id: int) -> None:
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            if index.data(self.id_role) == session_id:
                self.list.setCurrentIndex(index)
                return

    def rename_current(self) -> None:
        if self.list.currentIndex().isValid():
            self.list.edit(self.list.currentIndex())

    def confirm_delete(self, session_id: int) -> None:
        """Ask first, without a nested event loop (the answer arrives as a signal)."""
        box = QMessageBox(
            QMessageBox.Icon.Question, "Delete session",
            "Delete this session and all its messages?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self,
        )  # fmt: skip
        box.setObjectName("confirmDeleteBox")
        box.finished.connect(lambda _result: self._deleted(box, session_id))
        box.open()

    def _deleted(self, box: QMessageBox, session_id: int) -> None:
        box.deleteLater()
        if box.standardButton(box.clickedButton()) == QMessageBox.StandardButton.Yes:
            self.deleteRequested.emit(session_id)

    def _open_index(self, index: QModelIndex) -> None:
        if index.isValid():
            self.openRequested.emit(index.data(self.id_role))

    def _with_current(self, action) -> None:
        session_id = self.current_session_id()
        if session_id is not None:
            action(session_id)
