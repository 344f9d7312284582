"""One request's block table as a row of cells: logical block i -> the physical block id it
maps to, coloured like the grid, so a learner sees a sequence scattered over the cache."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QMouseEvent, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from engine import KVSnapshot
from ui.kv_grid import HIGHLIGHT, SHARED_OUTLINE

CELL_H = 22
INDEX_H = 12  # the small logical index above each cell
GAP = 2


class KVBlockTable(QWidget):
    """Paints the row; `blockClicked` gives the physical id of a clicked cell."""

    blockClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvBlockTable")
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.snap: KVSnapshot | None = None
        self.request_id: str | None = None
        self.color_of: Callable[[int], QColor] = lambda _b: QColor("#888888")
        self.highlighted: set[int] = set()

    def set_request(self, snap: KVSnapshot | None, request_id: str | None) -> None:
        self.snap, self.request_id = snap, request_id
        self.setFixedSize(self.sizeHint())
        self.update()

    def table(self) -> tuple[int, ...]:
        if self.snap is None or self.request_id is None:
            return ()
        return self.snap.block_tables.get(self.request_id, ())

    def cell_width(self) -> int:
        digits = len(str(max(self.snap.num_blocks - 1, 0))) if self.snap else 2
        return self.fontMetrics().horizontalAdvance("0" * digits) + 12

    def sizeHint(self) -> QSize:
        n = len(self.table())
        return QSize(max(n * (self.cell_width() + GAP), 1), INDEX_H + CELL_H + 2)

    def cell_rect(self, logical: int) -> QRect:
        return QRect(logical * (self.cell_width() + GAP), INDEX_H, self.cell_width(), CELL_H)

    def logical_at(self, pos: QPoint) -> int | None:
        i = pos.x() // (self.cell_width() + GAP)
        return i if 0 <= i < len(self.table()) and pos.y() >= INDEX_H else None

    def paintEvent(self, event: QPaintEvent) -> None:
        table = self.table()
        if not table:
            return
        painter = QPainter(self)
        small = QFont(self.font())
        small.setPixelSize(9)
        muted = self.palette().color(QPalette.ColorRole.PlaceholderText)
        for i, block in enumerate(table):
            self._paint_cell(painter, i, block, small, muted)
        painter.end()

    def _paint_cell(self, painter: QPainter, i: int, block: int, small: QFont,
                    muted: QColor) -> None:  # fmt: skip
        snap, r = self.snap, self.cell_rect(i)
        color = self.color_of(block)
        painter.fillRect(r, color)
        empty = 1 - min(int(snap.num_filled[block]) / max(snap.block_size, 1), 1.0)
        if empty > 0:  # the unfilled share on top, lighter, as in the grid
            top = QRect(r.x(), r.y(), r.width(), round(r.height() * empty))
            painter.fillRect(top, QColor(255, 255, 255, 120))
        if snap.ref_counts[block] > 1 or block in self.highlighted:
            pen = QPen(QColor(*(HIGHLIGHT if block in self.highlighted else SHARED_OUTLINE)), 2)
            painter.setPen(pen)
            painter.drawRect(r.adjusted(1, 1, -1, -1))
        painter.setFont(self.font())
        dark_text = color.lightnessF() > 0.6
        painter.setPen(QColor(20, 20, 20) if dark_text else QColor(255, 255, 255))
        painter.drawText(r, Qt.AlignmentFlag.AlignCenter, str(block))
        painter.setFont(small)
        painter.setPen(muted)
        painter.drawText(QRect(r.x(), 0, r.width(), INDEX_H), Qt.AlignmentFlag.AlignCenter, str(i))

    def tooltip_for(self, logical: int) -> str:
        snap, block = self.snap, self.table()[logical]
        return (f"logical {logical} → physical {block}\n"
                f"fill {int(snap.num_filled[block])} / {snap.block_size}, "
                f"ref count {int(snap.ref_counts[block])}")  # fmt: skip

    def mousePressEvent(self, event: QMouseEvent) -> None:
        i = self.logical_at(event.position().toPoint())
        if i is not None:
            self.blockClicked.emit(self.table()[i])

    def event(self, event) -> bool:
        if event.type() == event.Type.ToolTip:
            i = self.logical_at(event.pos())
            if i is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPos(), self.tooltip_for(i), self)
            return True
        return super().event(event)
