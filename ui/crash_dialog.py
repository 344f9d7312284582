"""Shown instead of dying: what went wrong (the traceback) and where the log is."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget,
)  # fmt: skip


class CrashDialog(QDialog):
    def __init__(self, traceback_text: str, log_path: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("crashDialog")
        self.setWindowTitle("pagedesk hit an unexpected error")
        self.resize(720, 420)
        intro = QLabel(
            "Something went wrong. pagedesk keeps running; your chats are saved.\n"
            f"The full log is in: {log_path}", self
        )  # fmt: skip
        intro.setObjectName("crashLogPath")
        intro.setWordWrap(True)
        self.details = QPlainTextEdit(traceback_text, self)
        self.details.setObjectName("crashTraceback")
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        copy = QPushButton("Copy details", self)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        copy.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(f"{traceback_text}\nlog: {log_path}")
        )
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.details, 1)
        layout.addWidget(buttons)
