"""The model manager's Hugging Face login bar (`hubLoginBar`): who is logged in, a token field
and Log in / Log out. It only says what it was told and emits what the user asked for; the
controller checks the token with the Hub and stores it in huggingface_hub's own token store."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

NOT_LOGGED_IN = "Not logged in: gated and private models need a token"


class HubLoginBar(QWidget):
    loginRequested = Signal(str)  # the token as typed (stripped); never kept by this widget
    logoutRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("hubLoginBar")
        self.status = QLabel(NOT_LOGGED_IN, self)
        self.status.setObjectName("hubLoginStatus")
        self.token_input = QLineEdit(self)
        self.token_input.setObjectName("hubTokenInput")
        self.token_input.setEchoMode(QLineEdit.EchoMode.Password)  # shoulder-surfing
        self.token_input.setPlaceholderText("hf_… access token")
        self.token_input.setMaximumWidth(260)
        self.login_button = QPushButton("Log in", self)
        self.login_button.setObjectName("hubLoginButton")
        self.logout_button = QPushButton("Log out", self)
        self.logout_button.setObjectName("hubLogoutButton")
        self.logout_button.setEnabled(False)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status, 1)
        layout.addWidget(self.token_input)
        layout.addWidget(self.login_button)
        layout.addWidget(self.logout_button)
        self.login_button.clicked.connect(self._login)
        self.token_input.returnPressed.connect(self._login)
        self.logout_button.clicked.connect(self.logoutRequested)

    def _login(self) -> None:
        token = self.token_input.text().strip()
        if token:
            self.set_busy("Checking the token with Hugging Face…")
            self.loginRequested.emit(token)

    def set_busy(self, text: str) -> None:
        """A check or a log-out is running: no second request meanwhile."""
        self.status.setText(text)
        self.login_button.setEnabled(False)
        self.logout_button.setEnabled(False)

    def set_user(self, name: str | None, note: str = "") -> None:
        """Logged in as `name` (None: not logged in); `note` qualifies it ("not checked")."""
        if name is None:
            self.status.setText(NOT_LOGGED_IN)
        else:
            self.status.setText(f"Logged in to Hugging Face as {name}{note}")
            self.token_input.clear()  # the token now lives in huggingface_hub's store only
        self.login_button.setEnabled(True)
        self.logout_button.setEnabled(name is not None)

    def set_stored(self, note: str) -> None:
        """A token is stored but could not be checked (offline, or the Hub refused it)."""
        self.status.setText(f"A Hugging Face token is stored ({note})")
        self.login_button.setEnabled(True)
        self.logout_button.setEnabled(True)
