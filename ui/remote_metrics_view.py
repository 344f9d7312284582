"""What the panels show of a remote endpoint: its Prometheus numbers (throughput panel)
and, since its KV blocks live on another machine, a plain note and its usage gauge (KV panel).

One row per remote URL, added by the first scrape and removed when the app says so.
"""

from __future__ import annotations

import html
import time
from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFrame, QLabel, QProgressBar, QVBoxLayout, QWidget

from ui.remote_types import RemoteMetrics


class _Rows(QFrame):
    """A column of per-URL widgets made by `make`, hidden while empty."""

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.rows: dict[str, QWidget] = {}
        self.box = QVBoxLayout(self)
        self.box.setContentsMargins(0, 0, 0, 4)
        self.hide()

    def remove(self, url: str) -> None:
        row = self.rows.pop(url, None)
        if row is not None:
            row.deleteLater()
        self.setVisible(bool(self.rows))


HISTORY = 300  # scrapes kept per remote for its chart (~5 minutes at one a second)
CURVE_COLORS = ("#17becf", "#b07aa1", "#9c755f", "#edc948")


class RemoteMetricsView(_Rows):
    """Throughput panel: each remote's running / waiting / KV / prefix hits / generation
    tok/s as a line, and its generation tok/s over time in one small chart."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("remoteMetricsView", parent)
        self.latest: dict[str, RemoteMetrics] = {}
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._t0 = time.monotonic()
        self.chart = pg.PlotWidget(self)
        self.chart.setObjectName("remoteGenerationChart")
        self.chart.setFixedHeight(84)
        self.chart.setMenuEnabled(False)
        self.chart.setMouseEnabled(x=False, y=False)
        self.chart.hideButtons()
        self.chart.showGrid(x=True, y=True, alpha=0.15)
        self.chart.setLabel("left", "remote tok/s")
        self.chart.getAxis("left").setWidth(52)  # as the charts below: one left edge
        self.chart.setToolTip("Each remote's generation tokens per second: the growth of "
                              "vllm:generation_tokens between two reads of its /metrics.")
        self.box.addWidget(self.chart)

    def apply_palette(self, base: QColor, text: QColor, muted: QColor) -> None:
        """The chart in the throughput panel's colours (light or dark)."""
        self.chart.setBackground(base)
        axis = self.chart.getAxis("left")
        axis.setPen(muted)
        axis.setTextPen(text)
        self.chart.getAxis("bottom").setPen(muted)
        self.chart.getAxis("bottom").setTextPen(text)

    def set_metrics(self, m: RemoteMetrics) -> None:
        self.latest[m.url] = m
        self._plot(m)
        label = self.rows.get(m.url)
        if label is None:
            label = QLabel(self)
            label.setObjectName("remoteMetricsLabel")
            label.setWordWrap(True)
            label.setToolTip("From the remote's Prometheus /metrics (vLLM's names), about "
                             "once a second: vllm:num_requests_running, num_requests_waiting, "
                             "kv_cache_usage_perc, prefix_cache_hits ÷ prefix_cache_queries, "
                             "and the growth of generation_tokens.")  # fmt: skip
            self.rows[m.url] = label
            self.box.insertWidget(self.box.indexOf(self.chart), label)
            self.show()
        label.setText(f"<b>remote</b> {html.escape(m.url)}<br>{html.escape(m.describe())}")

    def _plot(self, m: RemoteMetrics) -> None:
        points = self.history.setdefault(m.url, deque(maxlen=HISTORY))
        points.append((time.monotonic() - self._t0,
                       np.nan if m.generation_tps is None else m.generation_tps))
        curve = self.curves.get(m.url)
        if curve is None:
            color = CURVE_COLORS[len(self.curves) % len(CURVE_COLORS)]
            curve = self.chart.plot([], [], pen=pg.mkPen(color, width=1.6), name=m.url)
            self.curves[m.url] = curve
        x, y = np.array(points).T
        curve.setData(x, y, connect="finite")

    def curve_data(self, url: str) -> tuple[np.ndarray, np.ndarray]:
        """What the chart draws for `url` now: (seconds, tok/s)."""
        x, y = self.curves[url].getData()
        return (np.zeros(0), np.zeros(0)) if x is None else (x, y)

    def remove(self, url: str) -> None:
        self.latest.pop(url, None)
        self.history.pop(url, None)
        curve = self.curves.pop(url, None)
        if curve is not None:
            self.chart.removeItem(curve)
        super().remove(url)


class RemoteKVNote(_Rows):
    """KV panel: a remote's blocks cannot be inspected; its usage (kv_cache_usage_perc) can."""

    def set_metrics(self, m: RemoteMetrics) -> None:
        row = self.rows.get(m.url) or self._add(m.url)
        bar = row.findChild(QProgressBar)
        if m.kv_usage is None:
            bar.setFormat("usage not exposed")
            bar.setValue(0)
        else:
            bar.setFormat(f"remote KV cache in use: {m.kv_usage:.1%}")
            bar.setValue(round(m.kv_usage * 1000))

    def __init__(self, parent: QWidget | None = None):
        super().__init__("remoteKVNote", parent)

    def _add(self, url: str) -> QWidget:
        row = QWidget(self)
        note = QLabel(f"Sessions on <b>{html.escape(url)}</b> keep their KV cache on that "
                      "server: its blocks cannot be inspected from here, only its usage "
                      "gauge.", row)  # fmt: skip
        note.setObjectName("remoteKVNoteLabel")
        note.setWordWrap(True)
        note.setTextFormat(Qt.TextFormat.RichText)
        bar = QProgressBar(row)
        bar.setObjectName("remoteKVUsageBar")
        bar.setRange(0, 1000)
        bar.setFixedHeight(16)
        layout = QVBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(note)
        layout.addWidget(bar)
        self.rows[url] = row
        self.box.addWidget(row)
        self.show()
        return row
