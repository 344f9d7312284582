"""The throughput panel: six small charts stacked on one time axis, and the totals.

Records arrive a few times a second, several at a time; `add_records` only appends them to
a ring buffer and arms a single-shot QTimer: the charts redraw at most 5 times a second,
a little after the records came, only while new data comes, so they cost nothing when the
engine is idle and never redraw per step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.ma  # noqa: F401  (pyqtgraph's first real curve loads it: 15 ms better spent now)
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine import StepStats
from ui.remote_metrics_view import RemoteMetricsView
from ui.throughput_series import Series, ThroughputSeries

REDRAW_MS = 200  # 5 Hz: live enough, and six charts' repaints stay a small share of the UI
# A redraw comes at least this long after the records that asked for it: not in the same
# pass of the event loop as the block grid and the timeline, which redraw as the records
# come (10 a second), so the three panels' work is spread over passes, not piled in one.
AFTER_RECORDS_MS = 40
X_STEP_S = 30.0  # the time axis moves in whole steps, not on every redraw (see _redraw)


@dataclass(frozen=True, slots=True)
class Curve:
    name: str  # what tests call it
    label: str  # in the legend and the readout
    color: str
    scale: float = 1.0  # series unit -> chart unit (seconds -> ms, share -> %)
    readout: str = ""  # its name in the hover readout, when the label alone is ambiguous


@dataclass(frozen=True, slots=True)
class Chart:
    title: str  # above the chart; {curves} becomes the curves' names in their colours
    axis: str  # the left axis label: the unit
    unit: str  # after a value in the readout
    tip: str  # what the chart shows, for a learner
    curves: tuple[Curve, ...]
    y_max: float = 1.0  # the least top of the y range, so a flat zero line stays readable
    fixed_top: bool = False

    def title_html(self) -> str:
        """The title doubles as the legend: each curve's name in its own colour."""
        names = " · ".join(f'<span style="color:{c.color}"><b>{c.label}</b></span>'
                           for c in self.curves)  # fmt: skip
        return self.title.format(curves=names)


CHARTS = (
    Chart("{curves} tokens/s (1 s windows)", "tok/s", " tok/s",
          "Tokens generated per second, over 1 s windows.",
          (Curve("decode_tps", "decode", "#4e79a7"),), 10),
    Chart("{curves} tokens/s (1 s windows)", "tok/s", " tok/s",
          "Prompt (and recomputed) tokens per second, over 1 s windows.",
          (Curve("prefill_tps", "prefill", "#f28e2b"),), 10),
    Chart("requests: {curves}", "requests", "",
          "Batch: requests in each step's forward pass. Running: admitted, holding KV "
          "blocks. Waiting: queued for blocks or token budget.",
          (Curve("batch_size", "batch", "#59a14f"), Curve("running", "running", "#76b7b2"),
           Curve("waiting", "waiting", "#e15759")), 4),
    Chart("{curves} cache in use", "%", "%",
          "Share of KV cache blocks held by requests after each step.",
          (Curve("kv_usage", "KV", "#b07aa1", 100.0),), 100, True),
    Chart("time to first token: {curves} (last 10 s)", "ms", " ms",
          "Time to first token: from arrival to the first sampled token.",
          (Curve("ttft_p50", "p50", "#d4a72c", 1000.0, "TTFT p50"),
           Curve("ttft_p95", "p95", "#9c755f", 1000.0, "TTFT p95")), 10),
    Chart("inter-token latency: {curves} (last 10 s)", "ms", " ms",
          "Time between two tokens of the same request.",
          (Curve("itl_p50", "p50", "#4e79a7", 1000.0, "ITL p50"),
           Curve("itl_p95", "p95", "#e15759", 1000.0, "ITL p95")), 10),
)  # fmt: skip


class ThroughputView(QWidget):
    def __init__(self, parent: QWidget | None = None, window_s: float = 300.0) -> None:
        super().__init__(parent)
        self.setObjectName("throughputView")
        self.series = ThroughputSeries(window_s=window_s)
        self._dirty = False
        self._redraws = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._tick)
        self._last_redraw = 0.0  # time.monotonic() of the latest redraw
        self.totals_label = QLabel(self.series.totals.describe(), self)
        self.totals_label.setObjectName("throughputTotals")
        self.totals_label.setWordWrap(True)
        # Two lines from the start: a label that grows re-lays out all six charts (each
        # resize regenerates their axes), so its first long text must not move them.
        self.totals_label.setMinimumHeight(2 * self.totals_label.fontMetrics().lineSpacing() + 2)
        self.readout = QLabel("Hover a chart to read its values.", self)
        self.readout.setObjectName("throughputReadout")
        self.readout.setWordWrap(True)
        # Room for two lines from the start, so the charts do not jump on the first hover.
        self.readout.setMinimumHeight(2 * self.readout.fontMetrics().lineSpacing() + 2)
        self.plots: list[pg.PlotWidget] = []
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._lines: list[pg.InfiniteLine] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        self.remote = RemoteMetricsView(self)  # remote endpoints' /metrics, when any is open
        layout.addWidget(self.remote)
        layout.addWidget(self.totals_label)
        layout.addWidget(self.readout)
        for i, chart in enumerate(CHARTS):
            last = i == len(CHARTS) - 1
            # The bottom chart also holds the time axis: more room, or its plot is squashed.
            layout.addWidget(self._make_plot(chart), 4 if last else 3)
        self.plots[-1].setMinimumHeight(100)
        for plot in self.plots[:-1]:  # one shared time axis: its numbers only at the bottom
            plot.getAxis("bottom").setStyle(showValues=False)
            plot.getAxis("bottom").setHeight(4)
        self.plots[-1].setLabel("bottom", "time since start (s)")
        self._apply_palette()
        # Once, empty, with the first ranges set: pyqtgraph's lazy imports and its first axis
        # layouts happen now, not in the middle of the first stream.
        self._redraw()
        self._follow(0.0)
        for chart, plot in zip(CHARTS, self.plots, strict=True):
            self._set_y_top(plot, nice_ceiling(chart.y_max))
        self._redraws = 0

    # --- the app's API ----------------------------------------------------------------------

    def add_records(self, records: Sequence[StepStats]) -> None:
        if not records:
            return
        self.series.add(records)
        self._dirty = True
        if not self._timer.isActive():  # else the pending redraw will draw these too
            due = REDRAW_MS - 1000 * (time.monotonic() - self._last_redraw)
            self._timer.start(int(max(AFTER_RECORDS_MS, due)))

    def clear(self) -> None:
        self.series.clear()
        self._dirty = True
        self._tick()

    def redraw_count(self) -> int:
        return self._redraws

    def curve_data(self, name: str) -> Series:
        """What a chart draws now, in its units (tok/s, requests, %, ms)."""
        x, y = self.curves[name].getData()
        return (np.zeros(0), np.zeros(0)) if x is None else (x, y)

    # --- redrawing --------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._last_redraw = time.monotonic()
        self._redraw()

    def _redraw(self) -> None:
        s = self.series
        data = {
            "decode_tps": s.rate("decode"), "prefill_tps": s.rate("prefill"),
            "batch_size": s.gauge("batch"), "running": s.gauge("running"),
            "waiting": s.gauge("waiting"), "kv_usage": s.gauge("kv"),
        }  # fmt: skip
        for which in ("ttft", "itl"):
            x, (p50, p95) = s.latency(which, (50, 95))
            data[f"{which}_p50"], data[f"{which}_p95"] = (x, p50), (x, p95)
        for chart, plot in zip(CHARTS, self.plots, strict=True):
            top = chart.y_max
            for curve in chart.curves:
                x, y = data[curve.name]
                y = y * curve.scale
                self.curves[curve.name].setData(x, y, connect="finite")
                if len(y) and np.isfinite(y).any() and not chart.fixed_top:
                    top = max(top, float(np.nanmax(y)) * 1.15)
            self._set_y_top(plot, nice_ceiling(top))
        x = data["batch_size"][0]
        if len(x):
            self._follow(x[-1])
        self.totals_label.setText(s.totals.describe())
        self._redraws += 1

    def _set_y_top(self, plot: pg.PlotWidget, top: float) -> None:
        if plot.getPlotItem().vb.viewRange()[1][1] != top:
            plot.setYRange(0, top, padding=0)
            # Three labels (0, half, top): pyqtgraph's own choice crowds a chart this small.
            plot.getAxis("left").setTicks([[(v, f"{v:g}") for v in (0, top / 2, top)], []])

    def _follow(self, latest: float) -> None:
        """Keep the latest time in view. Axes and grid are redrawn by pyqtgraph whenever
        their range changes, which costs more than the curves: so the range moves on only
        when the data reaches its right edge, by X_STEP_S at a time."""
        right = max(X_STEP_S, float(np.ceil(latest / X_STEP_S)) * X_STEP_S)
        if self.plots[0].getPlotItem().vb.viewRange()[0][1] != right:
            self.plots[0].setXRange(max(0.0, right - self.series.window_s), right, padding=0)

    # --- charts -----------------------------------------------------------------------------

    def _make_plot(self, chart: Chart) -> pg.PlotWidget:
        plot = pg.PlotWidget()
        plot.setMinimumHeight(64)
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)  # a live chart: nothing to pan by accident
        plot.hideButtons()
        plot.showGrid(x=True, y=True, alpha=0.15)
        plot.setLabel("left", chart.axis)
        plot.setToolTip(chart.tip)
        plot.getAxis("left").setWidth(52)
        if self.plots:
            plot.setXLink(self.plots[0])
        for curve in chart.curves:
            pen = pg.mkPen(curve.color, width=1.6)
            self.curves[curve.name] = plot.plot([], [], pen=pen, name=curve.label,
                                                antialias=True)  # fmt: skip
        line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#888888", width=1))
        line.setVisible(False)
        plot.addItem(line, ignoreBounds=True)
        self._lines.append(line)
        plot.scene().sigMouseMoved.connect(lambda pos, p=plot: self._hovered(p, pos))
        self.plots.append(plot)
        return plot

    def _hovered(self, plot: pg.PlotWidget, pos: QPointF) -> None:
        """A crosshair on every chart at the hovered time, and the values there."""
        if not plot.sceneBoundingRect().contains(pos):
            return
        x = plot.getPlotItem().vb.mapSceneToView(pos).x()
        for line in self._lines:
            line.setPos(x)
            line.setVisible(True)
        self.readout.setText(self.readout_at(x))

    def readout_at(self, x: float) -> str:
        """The values drawn nearest to time x, one phrase per curve."""
        parts = [f"t = {x:.1f} s"]
        for chart in CHARTS:
            for curve in chart.curves:
                value = _value_at(self.curve_data(curve.name), x)
                if value is not None:
                    parts.append(f"{curve.readout or curve.label} {value:,.0f}{chart.unit}")
        return " · ".join(parts)

    def leaveEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt's name
        for line in self._lines:
            line.setVisible(False)
        super().leaveEvent(event)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_palette()

    def _apply_palette(self) -> None:
        """Charts follow the light or dark palette: background, axes, labels."""
        pal = self.palette()
        base, text = pal.color(QPalette.ColorRole.Base), pal.color(QPalette.ColorRole.Text)
        muted = QColor(pal.color(QPalette.ColorRole.PlaceholderText))
        self.remote.apply_palette(base, text, muted)
        for chart, plot in zip(CHARTS, self.plots, strict=True):
            plot.setBackground(base)
            plot.setTitle(chart.title_html(), size="8pt", color=text.name())
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(muted)
                axis.setTextPen(text)


def nice_ceiling(value: float) -> float:
    """The least of 1, 2, 2.5, 5 × 10^k that is >= value: a y top that changes seldom."""
    if value <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= m * power + 1e-9:
            return float(m * power)
    return float(10 * power)


def _value_at(series: Series, x: float) -> float | None:
    """The drawn value nearest to x, if any."""
    xs, ys = series
    if not len(xs):
        return None
    i = int(np.clip(np.searchsorted(xs, x), 1, len(xs) - 1)) if len(xs) > 1 else 0
    if len(xs) > 1 and abs(xs[i - 1] - x) < abs(xs[i] - x):
        i -= 1
    return None if np.isnan(ys[i]) else float(ys[i])
