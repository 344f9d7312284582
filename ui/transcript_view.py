"""The transcript: messages rendered as Markdown (code blocks included) in a QTextBrowser.

A streaming reply is re-rendered at most every RENDER_INTERVAL_MS, however fast tokens
arrive, so several panes streaming at once stay cheap for the UI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QPalette, QTextBlockFormat, QTextCursor, QTextFormat
from PySide6.QtWidgets import QTextBrowser, QWidget

from ui.chat_types import ChatMessage
from ui.transcript_markdown import transcript_markdown

RENDER_INTERVAL_MS = 100


class TranscriptView(QTextBrowser):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chatTranscript")
        self.setOpenExternalLinks(True)
        self._messages: list[ChatMessage] = []
        self._streaming: ChatMessage | None = None
        self._markdown = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_INTERVAL_MS)
        self._timer.timeout.connect(self._render)

    @property
    def markdown(self) -> str:
        """The Markdown source last rendered."""
        return self._markdown

    def set_messages(self, messages: list[ChatMessage], streaming: ChatMessage | None = None) -> None:
        self._messages = list(messages)
        self._streaming = streaming
        self._render()

    def set_streaming(self, message: ChatMessage | None) -> None:
        """Show (or, with None, drop) the reply being written; rendered on the next tick."""
        self._streaming = message
        if not self._timer.isActive():
            self._timer.start()

    def drop_streaming(self) -> None:
        """Forget the streaming reply without rendering (set_messages follows)."""
        self._streaming = None
        self._timer.stop()

    def flush(self) -> None:
        """Render now what is pending."""
        if self._timer.isActive():
            self._render()

    def _render(self) -> None:
        self._timer.stop()
        bar = self.verticalScrollBar()
        position, at_bottom = bar.value(), bar.value() >= bar.maximum() - 8
        self._markdown = transcript_markdown(self._messages, self._streaming)
        self.setMarkdown(self._markdown)
        self._shade_code_blocks()
        bar.setValue(bar.maximum() if at_bottom else position)

    def _shade_code_blocks(self) -> None:
        """Give code blocks a background, as chat apps do (Qt's Markdown reader marks them
        as fenced, pre-formatted blocks but paints them like paragraphs)."""
        shade = QTextBlockFormat()
        shade.setBackground(self.palette().color(QPalette.ColorRole.AlternateBase))
        cursor = QTextCursor(self.document())
        block = self.document().begin()
        cursor.beginEditBlock()
        while block.isValid():
            if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
                cursor.setPosition(block.position())
                cursor.mergeBlockFormat(shade)
            block = block.next()
        cursor.endEditBlock()
