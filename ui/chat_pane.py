"""One chat pane: a session's transcript, its input, and its controls.

The pane shows what it is told and says what the person wants through signals; a
controller (in app/) does the work. Edit-and-resend: "Edit last" puts the last user
message in the input box; Enter resends it in place of the original, Escape cancels.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QFileDialog, QFrame, QHBoxLayout, QLabel, QMenu, QPushButton, QSizePolicy, QToolButton,
    QVBoxLayout, QWidget,
)  # fmt: skip

from ui.chat_input import ChatInput
from ui.chat_settings_panel import ChatSettingsPanel
from ui.chat_types import ChatMessage, ChatSettings, ContextUsage
from ui.context_gauge import ContextGauge
from ui.transcript_view import TranscriptView

EXPORT_FORMATS = {"md": "Markdown (*.md)", "json": "JSON (*.json)"}


class ChatPane(QFrame):
    sendRequested = Signal(str)
    editedResendRequested = Signal(str)
    stopRequested = Signal()
    regenerateRequested = Signal()
    settingsChanged = Signal(object)  # ChatSettings
    dropOldestRequested = Signal()
    exportRequested = Signal(str, str)  # format ("md" | "json"), path
    closeRequested = Signal()
    messageSelected = Signal(int)  # index of a clicked message (len(messages): the live reply)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chatPane")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.messages: list[ChatMessage] = []
        self.streaming = False
        self.editing = False
        self._draft = ""
        self.transcript = TranscriptView(self)
        self.transcript.messageClicked.connect(self.messageSelected)
        self._flash = QTimer(self)
        self._flash.setSingleShot(True)
        self._flash.timeout.connect(lambda: self.set_highlighted(False))
        self.settings_panel = ChatSettingsPanel(self)
        self.settings_panel.hide()
        self.settings_panel.settingsChanged.connect(self.settingsChanged)
        self.gauge = ContextGauge(self)
        self.gauge.dropOldestRequested.connect(self.dropOldestRequested)
        self.input = ChatInput(self)
        self.input.submitted.connect(self.submit)
        self.input.cancelled.connect(self.cancel_edit)
        self.edit_note = QLabel("Editing your last message: Enter resends it, Esc cancels.", self)
        self.edit_note.setObjectName("editNote")
        self.edit_note.hide()
        self.color = QColor()
        self.color_strip = QWidget(self)  # the session's colour along the pane's top
        self.color_strip.setObjectName("sessionColorStrip")
        self.color_strip.setFixedHeight(4)
        self.color_strip.setAutoFillBackground(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 6, 6)
        layout.addWidget(self.color_strip)
        layout.addLayout(self._build_header())
        layout.addWidget(self.backend_label)
        layout.addWidget(self.settings_panel)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.gauge)
        layout.addWidget(self.edit_note)
        layout.addLayout(self._build_input_row())
        self._update_buttons()

    # ---------------------------------------------------------------- building
    def _build_header(self) -> QHBoxLayout:
        self.swatch = QLabel(self)
        self.swatch.setObjectName("sessionSwatch")
        self.swatch.setFixedSize(14, 14)
        self.swatch.setAutoFillBackground(True)
        self.title = QLabel("", self)
        self.title.setObjectName("paneTitle")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        # A long title is cut, not allowed to widen the pane (and with it the whole window,
        # which would re-lay out every pane and panel).
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.title.setMinimumWidth(40)
        self.backend_label = QLabel("", self)  # where replies come from, for a remote session
        self.backend_label.setObjectName("paneBackend")
        self.backend_label.setStyleSheet("color: palette(placeholder-text);")
        self.backend_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.backend_label.hide()
        self.settings_button = self._tool("settingsButton", "Settings", checkable=True)
        self.settings_button.toggled.connect(self.settings_panel.setVisible)
        self.export_button = self._tool("exportButton", "Export")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        menu.addAction("As Markdown…", lambda: self.ask_export_path("md"))
        menu.addAction("As JSON…", lambda: self.ask_export_path("json"))
        self.export_button.setMenu(menu)
        close = self._tool("closePaneButton", "✕")
        close.setToolTip("Close this pane (the session stays in the list)")
        close.clicked.connect(self.closeRequested)
        row = QHBoxLayout()
        row.addWidget(self.swatch)
        row.addWidget(self.title, 1)
        for button in (self.settings_button, self.export_button, close):
            row.addWidget(button)
        return row

    def _build_input_row(self) -> QHBoxLayout:
        self.send_button = self._button("sendButton", "Send", self.submit)
        self.stop_button = self._button("stopButton", "Stop", self.stopRequested.emit)
        self.regenerate_button = self._button(
            "regenerateButton", "Regenerate", self.regenerateRequested.emit
        )
        self.edit_button = self._button("editLastButton", "Edit last", self.begin_edit)
        buttons = QVBoxLayout()
        for b in (self.send_button, self.stop_button, self.regenerate_button, self.edit_button):
            buttons.addWidget(b)
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        return row

    def _tool(self, name: str, text: str, checkable: bool = False) -> QToolButton:
        button = QToolButton(self)
        button.setObjectName(name)
        button.setText(text)
        button.setCheckable(checkable)
        return button

    def _button(self, name: str, text: str, slot) -> QPushButton:
        button = QPushButton(text, self)
        button.setObjectName(name)
        button.clicked.connect(lambda _checked=False: slot())
        return button

    # ---------------------------------------------------------------- showing
    def set_session(self, title: str, color: str) -> None:
        self.title.setText(title)
        self.title.setToolTip(title)
        if QColor(color) != self.color:  # palettes, not style sheets: restyling is costly
            self.color = QColor(color)
            for strip in (self.swatch, self.color_strip):
                palette = strip.palette()
                palette.setColor(QPalette.ColorRole.Window, self.color)
                strip.setPalette(palette)

    def set_backend_label(self, text: str, tip: str = "") -> None:
        """Name the session's backend in the header ("" hides it: the embedded engine)."""
        self.backend_label.setText(text)
        self.backend_label.setToolTip(tip or text)
        self.backend_label.setVisible(bool(text))

    def set_settings(self, settings: ChatSettings) -> None:
        self.settings_panel.set_settings(settings)

    @property
    def highlighted(self) -> bool:
        return self.lineWidth() > 1

    def set_highlighted(self, on: bool, ms: int = 1500) -> None:
        """Frame the pane in its colour for a moment (a block of it was clicked in the KV
        panel), so the learner sees whose block that is."""
        if on and not self.highlighted:
            self._normal_palette = QPalette(self.palette())
            palette = self.palette()
            palette.setColor(QPalette.ColorRole.WindowText, self.color)
            self.setPalette(palette)
        elif not on and self.highlighted:
            self.setPalette(self._normal_palette)
        self.setFrameShape(QFrame.Shape.Box if on else QFrame.Shape.StyledPanel)
        self.setLineWidth(3 if on else 1)
        if on:
            self._flash.start(ms)

    def set_messages(self, messages: list[ChatMessage]) -> None:
        self.messages = list(messages)
        self.transcript.set_messages(self.messages)
        self._update_buttons()

    def set_streaming(self, streaming: bool) -> None:
        self.streaming = streaming
        if not streaming:
            self.transcript.drop_streaming()
        self._update_buttons()

    def show_reply(self, text: str) -> None:
        """The reply being written, so far."""
        self.transcript.set_streaming(ChatMessage("assistant", text, status="streaming"))

    def set_context(self, usage: ContextUsage) -> None:
        self.gauge.set_usage(usage)

    def show_context_warning(self, text: str, can_drop: bool) -> None:
        self.gauge.show_warning(text, can_drop)

    def hide_context_warning(self) -> None:
        self.gauge.hide_warning()

    def _update_buttons(self) -> None:
        has_user = any(m.role == "user" for m in self.messages)
        self.send_button.setEnabled(not self.streaming)
        self.stop_button.setEnabled(self.streaming)
        self.regenerate_button.setEnabled(not self.streaming and has_user)
        self.edit_button.setEnabled(not self.streaming and has_user)

    # ---------------------------------------------------------------- doing
    def submit(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.streaming:
            return
        self.input.clear()
        if self.editing:
            self._leave_edit()
            self.editedResendRequested.emit(text)
        else:
            self.sendRequested.emit(text)

    def begin_edit(self) -> None:
        last_user = next((m for m in reversed(self.messages) if m.role == "user"), None)
        if last_user is None or self.streaming:
            return
        if not self.editing:
            self._draft = self.input.toPlainText()
        self.editing = True
        self.edit_note.show()
        self.send_button.setText("Resend")
        self.input.setPlainText(last_user.content)
        self.input.setFocus()

    def cancel_edit(self) -> None:
        if self.editing:
            self._leave_edit()
            self.input.setPlainText(self._draft)

    def _leave_edit(self) -> None:
        self.editing = False
        self.edit_note.hide()
        self.send_button.setText("Send")

    def ask_export_path(self, fmt: str) -> None:
        """A non-modal save dialog (no nested event loop); the choice goes out as a signal."""
        dialog = QFileDialog(self, "Export session", f"{self.title.text() or 'session'}.{fmt}")
        dialog.setObjectName("exportDialog")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setNameFilter(EXPORT_FORMATS[fmt])
        dialog.setDefaultSuffix(fmt)
        dialog.fileSelected.connect(lambda path: self.exportRequested.emit(fmt, path))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
