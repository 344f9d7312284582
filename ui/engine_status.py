"""The status bar's engine part: loading progress, then model, device, backend, KV capacity,
and a live line of what the engine is doing (from StepStats)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from engine import StepStats


class ClickableLabel(QLabel):
    """The model label: a click opens the model manager."""

    clicked = Signal()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mouseReleaseEvent(event)


class EngineStatus:
    def __init__(self, bar: QStatusBar):
        self.progress = QProgressBar(bar)
        self.progress.setObjectName("modelProgress")
        self.progress.setRange(0, 0)  # busy: loading time is not predictable
        self.progress.setMaximumWidth(140)
        self.progress.hide()
        self.model = ClickableLabel("no model", bar)
        self.model.setObjectName("modelLabel")
        self.model.setCursor(Qt.CursorShape.PointingHandCursor)
        self.model.setToolTip("Click to manage models")
        self.device = self._label(bar, "deviceLabel")
        self.backend = self._label(bar, "backendLabel")
        self.kv = self._label(bar, "kvLabel")
        self.activity = self._label(bar, "engineActivity")
        bar.addWidget(self.progress)
        for label in (self.model, self.device, self.backend, self.kv):
            bar.addWidget(label)
        bar.addPermanentWidget(self.activity)

    @staticmethod
    def _label(bar: QStatusBar, name: str, text: str = "") -> QLabel:
        label = QLabel(text, bar)
        label.setObjectName(name)
        return label

    def show_loading(self, model: str) -> None:
        self.progress.show()
        self.model.setText(f"Loading {model}…")

    def show_ready(self, model: str, device: str, backend: str, kv_tokens: int,
                   max_model_len: int, *, model_path: str = "", ranks: int = 1) -> None:  # fmt: skip
        """`model_path`: how the engine runs it, "native Llama" or "generic (transformers X)".
        `ranks` > 1: tensor parallelism; every rank holds these blocks (its own KV heads)."""
        self.progress.hide()
        self.model.setText(f"Model: {model}" + (f" · {model_path}" if model_path else ""))
        self.device.setText(f"Device: {device}")
        self.backend.setText(f"Attention: {backend}")
        per_rank = f" per rank ×{ranks}" if ranks > 1 else ""
        self.kv.setText(f"KV cache: {kv_tokens:,} tokens{per_rank}")
        self.kv.setToolTip(f"context per conversation: {max_model_len:,} tokens")

    def show_failed(self, message: str) -> None:
        self.progress.hide()
        self.model.setText("Model failed to load")
        self.model.setToolTip(message)
        self.device.setText(message[:160])

    def show_stats(self, stats: StepStats) -> None:
        self.activity.setText(
            f"batch {stats.batch_size} · running {stats.num_running} · waiting "
            f"{stats.num_waiting} · {stats.tokens_per_second:,.0f} tok/s · "
            f"KV {stats.kv_usage:.1%}"
        )
