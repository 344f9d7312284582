"""The timeline's drawing surface: a step axis on top, request labels on the left, and the
cells as one image, with a scroll bar per direction that follows the newest step until the
learner scrolls back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QPoint, QRect, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import QAbstractScrollArea, QToolTip, QWidget

from ui.panel_types import OwnerResolver, no_owner
from ui.timeline_cells import render, row_slots, to_qimage
from ui.timeline_model import FINISHED_AFTER_CHUNK, FULL_HEIGHT, Row, TimelineModel, short_id

LABEL_W = 150  # request labels
HEADER_H = 18  # step numbers
ROW_H = 16
ZOOMS = (3, 4, 6, 8, 10, 14, 20, 28, 40)  # cell widths, px
NEUTRAL = QColor("#8d939c")  # rows whose owner the app does not know
RED = QColor("#e03131")
WITH_TEXT = FULL_HEIGHT | {FINISHED_AFTER_CHUNK}


class TimelineCanvas(QAbstractScrollArea):
    rowClicked = Signal(str)

    def __init__(self, model: TimelineModel, tooltip: Callable[[int], str],
                 parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.model = model
        self.resolver: OwnerResolver = no_owner
        self.cell_w = 10
        self.following = True
        self._tooltip = tooltip
        self._hover: int | None = None  # column index under the mouse
        self._rows: list[Row] = []  # rows alive in the window, in arrival order
        self._programmatic = False
        self._pixels: np.ndarray | None = None  # keeps the painted image's memory alive
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.horizontalScrollBar().valueChanged.connect(self._scrolled)
        self.verticalScrollBar().valueChanged.connect(self.viewport().update)
        self.viewport().setMouseTracking(True)
        self.setMinimumHeight(HEADER_H + 4 * ROW_H + 20)

    # --- geometry ---------------------------------------------------------------------------

    def visible_columns(self) -> int:
        return max(1, (self.viewport().width() - LABEL_W) // self.cell_w)

    def first_column(self) -> int:
        return self.horizontalScrollBar().value()

    def window(self) -> tuple[int, int]:
        """(first column index, number of columns drawn, the last one maybe partial)."""
        first = self.first_column()
        return first, max(0, min(self.visible_columns() + 1, len(self.model.columns) - first))

    def row_slots_shown(self) -> int:
        return max(1, (self.viewport().height() - HEADER_H) // ROW_H)

    def shown_rows(self) -> list[Row]:
        first = self.verticalScrollBar().value()
        return self._rows[first : first + self.row_slots_shown() + 1]

    def column_at(self, x: int) -> int | None:
        if x < LABEL_W:
            return None
        index = self.first_column() + (x - LABEL_W) // self.cell_w
        return index if index < len(self.model.columns) else None

    def row_at(self, y: int) -> Row | None:
        i = (y - HEADER_H) // ROW_H if y >= HEADER_H else -1
        rows = self.shown_rows()
        return rows[i] if 0 <= i < len(rows) else None

    def cell_rect(self, request_id: str, column_index: int) -> QRect | None:
        rows = [r.request_id for r in self.shown_rows()]
        first, count = self.window()
        if request_id not in rows or not first <= column_index < first + count:
            return None
        x = LABEL_W + (column_index - first) * self.cell_w
        return QRect(x, HEADER_H + rows.index(request_id) * ROW_H, self.cell_w, ROW_H)

    # --- scrolling ---------------------------------------------------------------------------

    def relayout(self) -> None:
        """After new steps, a resize or a zoom: scroll ranges, following, the window's rows."""
        bar = self.horizontalScrollBar()
        self._programmatic = True
        bar.setRange(0, max(0, len(self.model.columns) - self.visible_columns()))
        bar.setPageStep(self.visible_columns())
        if self.following:
            bar.setValue(bar.maximum())
        self._programmatic = False
        self._update_rows()

    def _scrolled(self, value: int) -> None:
        if not self._programmatic:
            self.following = value >= self.horizontalScrollBar().maximum()
        self._update_rows()

    def _update_rows(self) -> None:
        first, count = self.window()
        self._rows = self.model.rows_between(first, first + count - 1) if count else []
        vbar = self.verticalScrollBar()
        vbar.setRange(0, max(0, len(self._rows) - self.row_slots_shown()))
        vbar.setPageStep(self.row_slots_shown())
        if self.following:  # the oldest unfinished request on top: the running batch
            live = next((i for i, r in enumerate(self._rows) if not r.finished), 0)
            vbar.setValue(min(live, vbar.maximum()))
        self.viewport().update()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.relayout()

    def wheelEvent(self, event) -> None:  # noqa: N802
        if not event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(event)
            return
        x = int(event.position().x())
        anchor = self.column_at(x)
        i = ZOOMS.index(self.cell_w) if self.cell_w in ZOOMS else 4
        i = min(len(ZOOMS) - 1, max(0, i + (1 if event.angleDelta().y() > 0 else -1)))
        self.cell_w = ZOOMS[i]
        self.relayout()
        if anchor is not None and not self.following:  # keep the step under the mouse
            self.horizontalScrollBar().setValue(anchor - (x - LABEL_W) // self.cell_w)
        event.accept()

    # --- mouse -------------------------------------------------------------------------------

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position().toPoint()
        column = self.column_at(pos.x())
        if column != self._hover:
            self._hover = column
            self.viewport().update()
        text = self._hover_text(pos, column)
        if text:
            QToolTip.showText(event.globalPosition().toPoint(), text, self.viewport())
        else:
            QToolTip.hideText()

    def _hover_text(self, pos: QPoint, column: int | None) -> str:
        if column is not None:
            return self._tooltip(self.model.columns[column].record.step)
        row = self.row_at(pos.y())
        if row is None:
            return ""
        owner = self.resolver(row.parent_id)
        who = f"{owner.label}\n" if owner else ""
        return f"{who}request {row.request_id}\nfirst seen at step {row.first_step}"

    def leaveEvent(self, event) -> None:  # noqa: N802
        self._hover = None
        self.viewport().update()
        super().leaveEvent(event)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        row = self.row_at(int(event.position().y()))
        if row is not None and event.button() == Qt.MouseButton.LeftButton:
            self.rowClicked.emit(row.request_id)

    # --- painting ----------------------------------------------------------------------------

    def row_color(self, row: Row) -> QColor:
        owner = self.resolver(row.parent_id)
        return QColor(owner.color) if owner else NEUTRAL

    def paintEvent(self, _event) -> None:  # noqa: N802
        p = QPainter(self.viewport())
        pal = self.palette()
        p.fillRect(self.viewport().rect(), pal.color(QPalette.ColorRole.Base))
        rows = self.shown_rows()
        first, count = self.window()
        colors = [self.row_color(r) for r in rows]
        if rows and count:
            self._paint_cells(p, rows, colors, first, count)
        self._paint_header(p, first, count)
        self._paint_labels(p, rows, colors)
        self._paint_hover(p, first, count)
        if not self.model.columns:
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                       "No engine steps yet: send a message to see the batch.")  # fmt: skip
        p.end()

    def _paint_cells(self, p: QPainter, rows: list[Row], colors: list[QColor], first: int,
                     count: int) -> None:  # fmt: skip
        pal = self.palette()
        bgs = (pal.color(QPalette.ColorRole.Base), pal.color(QPalette.ColorRole.AlternateBase))
        cap = pal.color(QPalette.ColorRole.Text)
        slots = np.stack([row_slots(c, bgs[i % 2], RED, cap) for i, c in enumerate(colors)])
        codes = self.model.codes(rows, first, count)
        self._pixels = render(codes, slots, self.cell_w, ROW_H)
        p.drawImage(LABEL_W, HEADER_H, to_qimage(self._pixels))
        self._paint_token_counts(p, rows, colors, codes, first)

    def _paint_token_counts(self, p: QPainter, rows: list[Row], colors: list[QColor],
                            codes: np.ndarray, first: int) -> None:  # fmt: skip
        font = p.font()
        font.setPixelSize(ROW_H - 6)
        p.setFont(font)
        metrics = QFontMetrics(font)
        for r, c in zip(*np.nonzero(np.isin(codes, list(WITH_TEXT))), strict=True):
            column = self.model.columns[first + c]
            text = str(column.tokens.get(rows[r].request_id, ""))
            if metrics.horizontalAdvance(text) + 2 > self.cell_w - 1:
                continue  # too narrow: the tooltip has it, and zooming in shows it
            p.setPen(_text_on(colors[r]))
            cell = QRect(LABEL_W + int(c) * self.cell_w, HEADER_H + int(r) * ROW_H,
                         self.cell_w - 1, ROW_H)  # fmt: skip
            p.drawText(cell, Qt.AlignmentFlag.AlignCenter, text)

    def _paint_header(self, p: QPainter, first: int, count: int) -> None:
        pal = self.palette()
        p.fillRect(0, 0, self.viewport().width(), HEADER_H, pal.color(QPalette.ColorRole.Window))
        font = p.font()
        font.setPixelSize(10)
        p.setFont(font)
        p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
        p.drawText(QRect(6, 0, LABEL_W - 8, HEADER_H), Qt.AlignmentFlag.AlignVCenter,
                   "step →  (Ctrl+wheel: zoom)")
        every = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9)
                     if k * self.cell_w >= 44)  # fmt: skip
        p.setPen(pal.color(QPalette.ColorRole.WindowText))
        for c in range(count):
            step = self.model.columns[first + c].record.step
            if step % every == 0:
                x = LABEL_W + c * self.cell_w
                p.drawLine(x, HEADER_H - 4, x, HEADER_H - 1)
                p.drawText(x + 2, HEADER_H - 5, str(step))

    def _paint_labels(self, p: QPainter, rows: list[Row], colors: list[QColor]) -> None:
        pal = self.palette()
        height = self.viewport().height()
        p.fillRect(0, HEADER_H, LABEL_W, height, pal.color(QPalette.ColorRole.Window))
        font = p.font()
        font.setPixelSize(11)
        p.setFont(font)
        metrics = QFontMetrics(font)
        for i, (row, color) in enumerate(zip(rows, colors, strict=True)):
            y = HEADER_H + i * ROW_H
            p.fillRect(6, y + 3, 4, ROW_H - 6, color)
            owner = self.resolver(row.parent_id)
            text = f"{owner.label} · {short_id(row.request_id)}" if owner else row.request_id
            role = QPalette.ColorRole.PlaceholderText if row.finished else QPalette.ColorRole.Text
            p.setPen(pal.color(role))
            text = metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, LABEL_W - 20)
            p.drawText(QRect(14, y, LABEL_W - 18, ROW_H), Qt.AlignmentFlag.AlignVCenter, text)
        p.setPen(pal.color(QPalette.ColorRole.Mid))
        p.drawLine(LABEL_W - 1, 0, LABEL_W - 1, self.viewport().height())

    def _paint_hover(self, p: QPainter, first: int, count: int) -> None:
        if self._hover is None or not first <= self._hover < first + count:
            return
        color = QColor(self.palette().color(QPalette.ColorRole.Highlight))
        color.setAlpha(60)
        x = LABEL_W + (self._hover - first) * self.cell_w
        p.fillRect(x, 0, self.cell_w, self.viewport().height(), color)


def _text_on(color: QColor) -> QColor:
    """Black or white, whichever reads better on `color`."""
    luma = 0.299 * color.red() + 0.587 * color.green() + 0.114 * color.blue()
    return QColor("#111111") if luma > 150 else QColor("#ffffff")
