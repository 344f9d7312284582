"""How much of the model's context a pane uses: system prompt, history and reply."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget,
)  # fmt: skip

from ui.chat_types import ContextUsage

SEGMENT_COLORS = {"system": "#8e6cbf", "history": "#4e79a7", "reply": "#59a14f"}
WARN_SHARE = 0.9  # the label turns red from here
NEAR_FULL_COLOR = "#c0392b"


class ContextBar(QWidget):
    """A thin bar: three coloured segments against the context length."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.usage: ContextUsage | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(120, 8)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        rect = QRectF(self.rect())
        painter.fillRect(rect, self.palette().mid())
        usage = self.usage
        x = 0.0
        for name, tokens in self._segments(usage):
            width = rect.width() * min(tokens / usage.limit, 1.0 - x / rect.width())
            painter.fillRect(QRectF(x, 0, width, rect.height()), QColor(SEGMENT_COLORS[name]))
            x += width
        painter.end()

    @staticmethod
    def _segments(usage: ContextUsage | None) -> list[tuple[str, int]]:
        if usage is None or usage.limit <= 0:
            return []
        return [("system", usage.system), ("history", usage.history), ("reply", usage.reply)]


class ContextGauge(QWidget):
    """The bar, a one-line summary, and (when it would overflow) a warning with an offer."""

    dropOldestRequested = Signal()
    warningDismissed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("contextGauge")
        self.bar = ContextBar(self)
        self.label = QLabel("context: model loading…", self)
        self.label.setObjectName("contextLabel")
        # Room for the longest count up front: a label that grows as a reply streams would
        # widen the pane, and so re-lay out the whole window, many times a second.
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance(
            "888,888 / 888,888 tokens") + 4)
        self._near = False
        self.warning = self._build_warning()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.warning)

    def _build_warning(self) -> QFrame:
        frame = QFrame(self)
        frame.setObjectName("contextWarning")
        frame.setFrameShape(QFrame.Shape.StyledPanel)
        self.warning_label = QLabel(frame)
        self.warning_label.setWordWrap(True)
        self.drop_button = QPushButton("Drop oldest turns and send", frame)
        self.drop_button.setObjectName("dropOldestButton")
        self.drop_button.clicked.connect(self.dropOldestRequested)
        dismiss = QPushButton("Keep them", frame)
        dismiss.setObjectName("keepTurnsButton")
        dismiss.clicked.connect(self.hide_warning)
        dismiss.clicked.connect(self.warningDismissed)
        layout = QHBoxLayout(frame)
        layout.addWidget(self.warning_label, 1)
        layout.addWidget(self.drop_button)
        layout.addWidget(dismiss)
        frame.hide()
        return frame

    def set_usage(self, usage: ContextUsage) -> None:
        self.bar.usage = usage
        self.bar.update()
        self.label.setText(f"{usage.total:,} / {usage.limit:,} tokens")
        self.label.setToolTip(
            f"system prompt {usage.system:,} · history {usage.history:,} · "
            f"reply {usage.reply:,} of a {usage.limit:,}-token context"
        )
        near = usage.limit > 0 and usage.total >= WARN_SHARE * usage.limit
        if near != self._near:
            self._near = near
            palette = self.palette()
            if near:
                palette.setColor(QPalette.ColorRole.WindowText, QColor(NEAR_FULL_COLOR))
            self.label.setPalette(palette)

    def show_warning(self, text: str, can_drop: bool) -> None:
        self.warning_label.setText(text)
        self.drop_button.setVisible(can_drop)
        self.warning.show()

    def hide_warning(self) -> None:
        self.warning.hide()

    @property
    def warning_visible(self) -> bool:
        return not self.warning.isHidden()
