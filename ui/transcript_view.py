"""The transcript: messages rendered as Markdown (code blocks included) in a QTextBrowser.

The history is rendered once per change; a streaming reply is re-rendered in place at
the end of the document (the history is not parsed again), at most every
RENDER_INTERVAL_MS however fast tokens arrive, so several panes streaming at once beside
long conversations stay cheap for the UI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QTimer, Signal
from PySide6.QtGui import QMouseEvent, QPalette, QTextBlockFormat, QTextCursor, QTextFormat
from PySide6.QtWidgets import QTextBrowser, QWidget

from ui.chat_types import ChatMessage
from ui.transcript_markdown import SEPARATOR, message_markdown, transcript_markdown

RENDER_INTERVAL_MS = 100


class TranscriptView(QTextBrowser):
    # index into the messages shown (len(messages) = the reply streaming now): the learner's
    # KV panel lights up the blocks that hold it
    messageClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chatTranscript")
        self.setOpenExternalLinks(True)
        self._messages: list[ChatMessage] = []
        self._streaming: ChatMessage | None = None
        self._tail_start = 0  # where the streaming reply begins in the document
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_INTERVAL_MS)
        self._timer.timeout.connect(self._render_tail)

    @property
    def markdown(self) -> str:
        """The Markdown source of what is shown."""
        return transcript_markdown(self._messages, self._streaming)

    def set_messages(self, messages: list[ChatMessage],
                     streaming: ChatMessage | None = None) -> None:  # fmt: skip
        """Show these messages: appended at the end when they only add to what is shown
        (a sent message, a finished reply), else rendered again from the top."""
        old, self._messages = self._messages, list(messages)
        self._streaming = streaming
        self._timer.stop()
        with self._scroll_kept():
            if self._only_appended(old):
                self._append(self._messages[len(old):])
            else:
                self.setMarkdown(transcript_markdown(self._messages) if self._messages else "")
                self._shade_code_blocks(0)
            self._tail_start = self.document().characterCount() - 1
            self._insert_tail()

    def _only_appended(self, old: list[ChatMessage]) -> bool:
        new = self._messages
        return (0 < len(old) < len(new) and new[: len(old)] == old
                and all(m.in_context for m in new[len(old):]))  # fmt: skip

    def _append(self, added: list[ChatMessage]) -> None:
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._tail_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        markdown = "\n\n".join(SEPARATOR + message_markdown(m) for m in added)
        cursor.insertMarkdown(markdown)
        self._shade_code_blocks(self._tail_start)

    def message_index_at(self, pos: QPoint) -> int | None:
        """Which message is drawn at this point of the viewport (None: a note, or nothing).
        Messages are separated by horizontal rules, so count the rules above the point."""
        block = self.cursorForPosition(pos).block()
        rules, b = 0, block.previous()
        while b.isValid():
            if b.blockFormat().hasProperty(QTextFormat.Property.BlockTrailingHorizontalRulerWidth):
                rules += 1
            b = b.previous()
        shown = self._shown_parts()
        return shown[rules] if rules < len(shown) else None

    def _shown_parts(self) -> list[int | None]:
        """Message index of each part between rules, as transcript_markdown lays them out."""
        parts: list[int | None] = []
        previous_in_context = True
        for i, m in enumerate(self._messages):
            if m.in_context and not previous_in_context:
                parts.append(None)  # the "no longer in context" note
            previous_in_context = m.in_context
            parts.append(i)
        if self._streaming is not None:
            parts.append(len(self._messages))
        return parts

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        super().mouseReleaseEvent(event)
        if not self.textCursor().hasSelection():  # a click, not a text selection
            index = self.message_index_at(event.position().toPoint())
            if index is not None:
                self.messageClicked.emit(index)

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
            self._render_tail()

    def _render_tail(self) -> None:
        self._timer.stop()
        with self._scroll_kept():
            self._insert_tail()

    def _insert_tail(self) -> None:
        """Replace everything after the history with the streaming reply, if any."""
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._tail_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        if self._streaming is not None:
            separator = SEPARATOR if self._messages else ""
            cursor.insertMarkdown(separator + message_markdown(self._streaming, streaming=True))
            self._shade_code_blocks(self._tail_start)

    def _scroll_kept(self):
        return _KeepScroll(self)

    def _shade_code_blocks(self, start: int) -> None:
        """Give code blocks a background, as chat apps do (Qt's Markdown reader marks them
        as fenced, pre-formatted blocks but paints them like paragraphs)."""
        shade = QTextBlockFormat()
        shade.setBackground(self.palette().color(QPalette.ColorRole.AlternateBase))
        cursor = QTextCursor(self.document())
        block = self.document().findBlock(start)
        cursor.beginEditBlock()  # one layout pass for all of them
        while block.isValid():
            if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
                cursor.setPosition(block.position())
                cursor.mergeBlockFormat(shade)
            block = block.next()
        cursor.endEditBlock()


class _KeepScroll:
    """Follow the end if the view was at the end; else stay where the reader is."""

    def __init__(self, view: QTextBrowser):
        self.bar = view.verticalScrollBar()

    def __enter__(self) -> None:
        self.position = self.bar.value()
        self.at_bottom = self.position >= self.bar.maximum() - 8

    def __exit__(self, *exc: object) -> None:
        self.bar.setValue(self.bar.maximum() if self.at_bottom else self.position)
