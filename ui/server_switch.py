"""The switch that starts / stops the OpenAI-compatible server, and the address to copy."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLineEdit, QToolButton, QWidget


class ServerSwitch(QWidget):
    toggled = Signal(bool)  # the person wants the server on / off

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("serverPanel")
        self.switch = QCheckBox("OpenAI-compatible server", self)
        self.switch.setObjectName("serverSwitch")
        self.switch.toggled.connect(self.toggled)
        self.address = QLineEdit(self)
        self.address.setObjectName("serverAddress")
        self.address.setReadOnly(True)
        self.address.setPlaceholderText("off")
        self.address.setFixedWidth(220)
        self.copy_button = QToolButton(self)
        self.copy_button.setObjectName("copyAddressButton")
        self.copy_button.setText("Copy")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self.copy_address)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.switch)
        layout.addWidget(self.address)
        layout.addWidget(self.copy_button)
        layout.addStretch(1)

    def _set_checked(self, on: bool) -> None:
        self.switch.blockSignals(True)
        self.switch.setChecked(on)
        self.switch.blockSignals(False)

    def set_available(self, available: bool, reason: str = "") -> None:
        self.switch.setEnabled(available)
        self.switch.setToolTip(reason)

    def set_busy(self, text: str) -> None:
        self.switch.setEnabled(False)
        self.address.setText(text)

    def set_running(self, url: str) -> None:
        self._set_checked(True)
        self.switch.setEnabled(True)
        self.address.setText(url)
        self.copy_button.setEnabled(True)

    def set_stopped(self, message: str = "") -> None:
        self._set_checked(False)
        self.switch.setEnabled(True)
        self.address.setText(message)
        self.copy_button.setEnabled(False)

    def copy_address(self) -> None:
        QGuiApplication.clipboard().setText(self.address.text())
