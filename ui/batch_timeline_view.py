"""The batch timeline: requests as rows, engine steps as columns, so a learner watches
continuous batching happen: requests joining and leaving the running batch, a chunked
prefill sharing a step with decodes, a preemption followed by a recompute. Beside it, how
many steps static batching would have taken for the same requests."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QEvent, Signal
from PySide6.QtGui import QColor, QPalette, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine import StepStats, static_batching
from ui.panel_types import OwnerResolver
from ui.timeline_canvas import RED, ROW_H, TimelineCanvas
from ui.timeline_cells import render, row_slots, to_qimage
from ui.timeline_model import CODE, TimelineModel, kind_name

LEGEND = (  # (text, the sample's cell codes)
    ("waiting", ("waiting",) * 3),
    ("prefill", ("prefill",)),
    ("chunked prefill", ("chunked_prefill",) * 2),
    ("decode (1 token)", ("decode",) * 3),
    ("preempted", ("preempted",)),
    ("recompute", ("recompute",) * 2),
    ("finished", ("decode", "finished")),
)
STATIC_TIP = (
    "Static batching, as Orca and vLLM compare it: the same finished requests, taken in "
    "arrival order in batches of {size} ({why}), each batch padded to its longest prompt and "
    "run until its longest output is done: 1 prefill step + (longest output − 1) decode "
    "steps per batch, the next batch waiting for the whole of this one.\n"
    "Continuous batching: the engine steps that served at least one of these requests.\n"
    "Steps, not time: under light load continuous batching runs small batches (there is "
    "nothing else to run) and can take more steps; a static server would instead have kept "
    "those requests waiting for a full batch."
)


class BatchTimelineView(QWidget):
    requestClicked = Signal(str)  # request id of the clicked row

    def __init__(self, parent: QWidget | None = None, max_steps: int = 2000,
                 static_batch_size: int | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.setObjectName("batchTimelineView")
        self._model = TimelineModel(max_steps)
        self._lengths = static_batching.RequestLengths()
        self._static_batch_size = static_batch_size
        self._first_time: float | None = None
        self.canvas = TimelineCanvas(self._model, self.column_tooltip, self)
        self.canvas.setObjectName("batchTimelineCanvas")
        self.canvas.rowClicked.connect(self.requestClicked)
        self.static_batching_label = QLabel(self)
        self.static_batching_label.setObjectName("staticBatchingLabel")
        self.static_batching_label.setWordWrap(True)
        self._legend = QHBoxLayout()
        self._legend.setSpacing(10)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.canvas, 1)
        layout.addLayout(self._legend)
        layout.addWidget(self.static_batching_label)
        self._build_legend()
        self._update_static_label()

    # --- the app's API ----------------------------------------------------------------------

    def set_owner_resolver(self, resolver: OwnerResolver) -> None:
        self.canvas.resolver = resolver
        self.canvas.viewport().update()

    def set_static_batch_size(self, size: int | None) -> None:
        """None: the largest batch the engine ran (the default)."""
        self._static_batch_size = size
        self._update_static_label()

    def add_records(self, records: Sequence[StepStats]) -> None:
        if not records:
            return
        if self._first_time is None:
            self._first_time = records[0].start_time
        self._model.add(records)
        for record in records:
            self._lengths.add(record)
        self.canvas.relayout()
        self._update_static_label()

    def clear(self) -> None:
        self._model.clear()
        self._lengths = static_batching.RequestLengths()
        self._first_time = None
        self.canvas.following = True
        self.canvas.relayout()
        self._update_static_label()

    # --- what tests and the tour can ask --------------------------------------------------

    def column_count(self) -> int:
        return len(self._model.columns)

    def row_count(self) -> int:
        """Requests in the timeline's kept window (the view shows those alive on screen)."""
        return len(self._model.rows)

    def cell_kind(self, request_id: str, step: int) -> str | None:
        return kind_name(self._model.cell_code(request_id, step))

    def row_color(self, request_id: str) -> QColor | None:
        row = self._model.rows.get(request_id)
        return self.canvas.row_color(row) if row else None

    def is_following(self) -> bool:
        return self.canvas.following

    def scroll_to_step(self, step: int) -> None:
        """Put `step` at the left edge (follows again if that is the end)."""
        index = self._model.column_index(step)
        if index is not None:
            self.canvas.horizontalScrollBar().setValue(index)

    def follow_latest(self) -> None:
        self.canvas.following = True
        self.canvas.relayout()

    def column_tooltip(self, step: int) -> str:
        column = self._model.column(step)
        if column is None:
            return ""
        rec = column.record
        since = rec.finished_time - (self._first_time or rec.start_time)
        head = (f"<b>step {rec.step}</b> · {rec.step_seconds * 1000:.1f} ms · ended at "
                f"{since:.2f} s · {rec.prefill_tokens} prefill + {rec.decode_tokens} decode "
                f"tokens")  # fmt: skip
        rows = "".join(self._entry_row(e) for e in rec.scheduled)
        lines = [head, f"<table cellspacing=0 cellpadding=1>{rows}</table>" if rows else
                 "<i>nothing scheduled</i>"]  # fmt: skip
        for label, ids in (("preempted", rec.preempted), ("finished", rec.finished),
                           ("waiting", rec.waiting)):  # fmt: skip
            if ids:
                lines.append(f"{label}: {html.escape(', '.join(ids))}")
        return "<br>".join(lines)

    def _entry_row(self, entry) -> str:
        owner = self.canvas.resolver(entry.parent_id)
        who = f" ({html.escape(owner.label)})" if owner else ""
        kind = str(getattr(entry.kind, "value", entry.kind)).replace("_", " ")
        sampled = " → 1 token" if entry.sampled else ""
        return (f"<tr><td>{html.escape(entry.request_id)}{who}</td><td>&nbsp;{kind}</td>"
                f"<td align=right>&nbsp;{entry.num_new_tokens} tok{sampled}</td></tr>")  # fmt: skip

    # --- static batching line, legend ------------------------------------------------------

    def _update_static_label(self) -> None:
        cmp = self._lengths.compare(self._static_batch_size)
        self.static_batching_label.setText(cmp.describe())
        why = "set by the app" if self._static_batch_size else "the largest batch seen"
        self.static_batching_label.setToolTip(STATIC_TIP.format(size=cmp.batch_size, why=why))

    def _build_legend(self) -> None:
        while self._legend.count():
            item = self._legend.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for text, kinds in LEGEND:
            swatch = QLabel()
            swatch.setPixmap(self._legend_pixmap(kinds))
            self._legend.addWidget(swatch)
            self._legend.addWidget(QLabel(text))
        self._legend.addStretch(1)

    def _legend_pixmap(self, kinds: tuple[str, ...]) -> QPixmap:
        pal = self.palette()
        sample = QColor("#4e79a7")
        slots = row_slots(sample, pal.color(QPalette.ColorRole.Window), RED,
                          pal.color(QPalette.ColorRole.Text))[None]  # fmt: skip
        codes = np.array([[CODE[k] for k in kinds]], dtype=np.uint8)
        pixels = render(codes, slots, 10, ROW_H)
        return QPixmap.fromImage(to_qimage(pixels).copy())

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt's name
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._build_legend()

