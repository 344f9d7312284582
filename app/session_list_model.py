"""The sessions as a QAbstractListModel over the store (newest first), for the sidebar."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractListModel, QByteArray, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor

from app.store import Session, SessionStore

Index = QModelIndex | QPersistentModelIndex


class SessionListModel(QAbstractListModel):
    IdRole = Qt.ItemDataRole.UserRole + 1
    ColorRole = Qt.ItemDataRole.UserRole + 2

    def __init__(self, store: SessionStore, parent=None):
        super().__init__(parent)
        self.store = store
        self.sessions: list[Session] = store.list_sessions()

    # ---------------------------------------------------------------- Qt's model API
    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.sessions)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not self.checkIndex(index, QAbstractListModel.CheckIndexOption.IndexIsValid):
            return None
        session = self.sessions[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return session.title
        if role == Qt.ItemDataRole.DecorationRole:
            return QColor(session.color)
        if role == Qt.ItemDataRole.ToolTipRole:
            return session.title
        if role == self.IdRole:
            return session.id
        if role == self.ColorRole:
            return session.color
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        title = str(value).strip()
        if not title:
            return False
        self.rename(self.sessions[index.row()].id, title)
        return True

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return (Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
                | Qt.ItemFlag.ItemIsEditable | Qt.ItemFlag.ItemNeverHasChildren)  # fmt: skip

    def roleNames(self) -> dict[int, QByteArray]:
        names = super().roleNames()
        names[self.IdRole] = QByteArray(b"sessionId")
        names[self.ColorRole] = QByteArray(b"color")
        return names

    # ---------------------------------------------------------------- changes
    def row_of(self, session_id: int) -> int:
        return next((i for i, s in enumerate(self.sessions) if s.id == session_id), -1)

    def session(self, session_id: int) -> Session | None:
        row = self.row_of(session_id)
        return self.sessions[row] if row >= 0 else None

    def add(self, session: Session) -> None:
        self.beginInsertRows(QModelIndex(), 0, 0)
        self.sessions.insert(0, session)
        self.endInsertRows()

    def rename(self, session_id: int, title: str) -> None:
        self.store.rename_session(session_id, title)
        self.refresh(session_id)

    def refresh(self, session_id: int) -> None:
        """Re-read one session from the store (after its title or settings changed)."""
        row = self.row_of(session_id)
        fresh = self.store.get_session(session_id)
        if row < 0 or fresh is None:
            return
        self.sessions[row] = fresh
        index = self.index(row, 0)
        self.dataChanged.emit(index, index)

    def remove(self, session_id: int) -> None:
        row = self.row_of(session_id)
        if row < 0:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self.sessions[row]
        self.endRemoveRows()
