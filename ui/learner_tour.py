"""A short guided tour: captions that point at the live panels, one at a time.

Each stop names a widget (by objectName) and says what to look at there. The caption is a
small frame floated over the window next to its target; Next moves on, Close ends it."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPoint, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget


@dataclass(frozen=True, slots=True)
class TourStop:
    target: str  # objectName of the widget it points at
    title: str
    text: str


TOUR = (
    TourStop("kvCacheView", "A block is a page of the KV cache",
             "Each cell is one physical block: the keys and values of block-size tokens, for "
             "every layer. A chat's blocks take its pane's colour and need not be next to each "
             "other: the block table (under the grid) maps its logical blocks to physical ones, "
             "as an OS maps pages. Hover a cell to read the tokens it holds."),
    TourStop("kvCacheView", "Sharing: one block, several owners",
             "When two requests begin with the same tokens (the same system prompt, n samples of "
             "one prompt), the full blocks of that prefix are stored once and counted: a white "
             "outline and a number show the ref count. Freed blocks stay as cached-free (hatched) "
             "until the space is needed: a later prompt that starts the same way revives them."),
    TourStop("batchTimelineView", "Continuous batching",
             "Each column is one engine step, each row a request. Requests join the running batch "
             "at any step and leave the moment they finish; a long prompt is cut into chunks that "
             "share a step with other requests' decodes. The line below counts the steps fixed, "
             "padded batches would have needed."),
    TourStop("batchTimelineView", "Preemption",
             "When no free block is left, the newest running request is preempted: its blocks are "
             "freed (a red mark), it waits, and later recomputes its prompt and what it had written "
             "in one prefill. Try Small cache, then Experiments ▸ Fill the small cache."),
    TourStop("throughputView", "Throughput",
             "Prefill tokens come in bursts, decode tokens at a steady rate that grows with the "
             "batch: one step computes a token for every running request for about the price of "
             "one. Time to first token and the gap between tokens are what a chat user feels."),
    TourStop("learnerToolbar", "Take it slowly",
             "Pause stops the engine between steps; Step runs exactly one, and its batch appears "
             "as a new column. Slow motion waits after every step."),
)  # fmt: skip


class LearnerTour(QFrame):
    finished = Signal()

    def __init__(self, window: QWidget, stops: tuple[TourStop, ...] = TOUR):
        super().__init__(window)
        self.setObjectName("learnerTour")
        self.setFrameShape(QFrame.Shape.Box)
        self.setAutoFillBackground(True)
        self.setFixedWidth(380)
        self.window_, self.stops, self.index = window, stops, 0
        self.title = QLabel(self)
        self.title.setObjectName("tourTitle")
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.text = QLabel(self)
        self.text.setObjectName("tourText")
        self.text.setWordWrap(True)
        self.counter = QLabel(self)
        self.next_button = QPushButton("Next", self)
        self.next_button.setObjectName("tourNext")
        self.next_button.clicked.connect(self.next)
        close = QPushButton("Close", self)
        close.setObjectName("tourClose")
        close.clicked.connect(self.end)
        row = QHBoxLayout()
        row.addWidget(self.counter, 1)
        row.addWidget(close)
        row.addWidget(self.next_button)
        column = QVBoxLayout(self)
        column.addWidget(self.title)
        column.addWidget(self.text)
        column.addLayout(row)

    def start(self) -> None:
        self.index = 0
        self._show_stop()

    def next(self) -> None:
        if self.index + 1 >= len(self.stops):
            self.end()
            return
        self.index += 1
        self._show_stop()

    def end(self) -> None:
        self.hide()
        self.finished.emit()

    def _show_stop(self) -> None:
        stop = self.stops[self.index]
        self.title.setText(stop.title)
        self.text.setText(stop.text)
        self.counter.setText(f"{self.index + 1} / {len(self.stops)}")
        self.next_button.setText("Done" if self.index + 1 == len(self.stops) else "Next")
        self.adjustSize()
        self.move(self._place_near(self.window_.findChild(QWidget, stop.target)))
        self.show()
        self.raise_()

    def _place_near(self, target: QWidget | None) -> QPoint:
        """Beside the target when it is visible (inside the window), else in the middle."""
        win = self.window_.rect()
        if target is None or not target.isVisible():
            return QPoint((win.width() - self.width()) // 2, (win.height() - self.height()) // 2)
        top_left = target.mapTo(self.window_, QPoint(0, 0))
        x = top_left.x() + 12
        y = top_left.y() + 12
        x = max(0, min(x, win.width() - self.width()))
        y = max(0, min(y, win.height() - self.height()))
        return QPoint(x, y)


def tour_targets(stops: tuple[TourStop, ...] = TOUR) -> set[str]:
    return {s.target for s in stops}

