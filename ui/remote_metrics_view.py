"""What the panels show of a remote endpoint: its Prometheus numbers (throughput panel)
and, since its KV blocks live on another machine, a plain note and its usage gauge (KV panel).

One row per remote URL, added by the first scrape and removed when the app says so.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
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


class RemoteMetricsView(_Rows):
    """Throughput panel: each remote's running / waiting / KV / prefix hits / generation tok/s."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("remoteMetricsView", parent)
        self.latest: dict[str, RemoteMetrics] = {}

    def set_metrics(self, m: RemoteMetrics) -> None:
        self.latest[m.url] = m
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
            self.box.addWidget(label)
            self.show()
        label.setText(f"<b>remote</b> {html.escape(m.url)}<br>{html.escape(m.describe())}")

    def remove(self, url: str) -> None:
        self.latest.pop(url, None)
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
