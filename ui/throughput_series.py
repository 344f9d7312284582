"""The throughput panel's numbers: a ring buffer of step records and the series drawn from it.

No Qt: appending is cheap (a few numbers per step into preallocated numpy arrays), and the
series are computed only when the charts redraw, a few times a second, with at most
`max_points` points each, whatever the step rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine import StepStats

STEP_FIELDS = ("t", "prefill", "decode", "batch", "running", "waiting", "kv")


class Ring:
    """The last `capacity` rows of a fixed number of float columns."""

    def __init__(self, capacity: int, width: int) -> None:
        self._data = np.zeros((capacity, width))
        self._count = 0  # rows ever appended

    def extend(self, rows: np.ndarray) -> None:
        capacity = len(self._data)
        rows = rows[-capacity:]
        start = self._count % capacity
        head = min(len(rows), capacity - start)
        self._data[start : start + head] = rows[:head]
        self._data[: len(rows) - head] = rows[head:]
        self._count += len(rows)

    def rows(self) -> np.ndarray:
        """Oldest first (a copy)."""
        capacity = len(self._data)
        if self._count <= capacity:
            return self._data[: self._count].copy()
        start = self._count % capacity
        return np.concatenate([self._data[start:], self._data[:start]])

    def clear(self) -> None:
        self._count = 0


@dataclass(slots=True)
class Totals:
    prefill_tokens: int = 0
    decode_tokens: int = 0
    finished: int = 0
    preemptions: int = 0
    prefix_hit_tokens: int = 0

    def add(self, r: StepStats) -> None:
        self.prefill_tokens += r.prefill_tokens
        self.decode_tokens += r.decode_tokens
        self.finished += len(r.finished)
        self.preemptions += r.num_preemptions
        self.prefix_hit_tokens += r.prefix_cache_hit_tokens

    def describe(self) -> str:
        return (f"since start: {self.prefill_tokens:,} tokens prefilled · "
                f"{self.decode_tokens:,} decoded · {self.finished:,} requests finished · "
                f"{self.preemptions:,} preemptions · {self.prefix_hit_tokens:,} "
                f"prefix-cache hit tokens")  # fmt: skip


Series = tuple[np.ndarray, np.ndarray]  # (seconds since start, values)


class ThroughputSeries:
    """Step records of the last `window_s` seconds, and the charts' series over them.

    Times are each step's `finished_time`, shown as seconds since the first record.
    Rates are tokens of the steps that ended in (t − rate_window_s, t], divided by
    rate_window_s, on a regular grid: a rate, not one step's spike. Latency percentiles
    are over the samples of the steps that ended in (t − latency_window_s, t].
    """

    def __init__(self, window_s: float = 300.0, rate_window_s: float = 1.0,
                 latency_window_s: float = 10.0, max_points: int = 300,
                 capacity: int = 50_000) -> None:  # fmt: skip
        self.window_s, self.rate_window_s = window_s, rate_window_s
        self.latency_window_s, self.max_points = latency_window_s, max_points
        self._steps = Ring(capacity, len(STEP_FIELDS))
        self._ttft = Ring(capacity, 2)  # (t, seconds)
        self._itl = Ring(capacity, 2)
        self.totals = Totals()
        self.t0: float | None = None
        self._window_cache: np.ndarray | None = None
        self._latency_kept: dict[tuple, tuple[float, dict]] = {}

    def clear(self) -> None:
        for ring in (self._steps, self._ttft, self._itl):
            ring.clear()
        self.totals = Totals()
        self.t0 = None
        self._window_cache = None
        self._latency_kept = {}

    def add(self, records: Sequence[StepStats]) -> None:
        if not records:
            return
        if self.t0 is None:
            self.t0 = records[0].start_time
        self._window_cache = None
        self._steps.extend(np.array([
            (r.finished_time, r.prefill_tokens, r.decode_tokens, r.batch_size, r.num_running,
             r.num_waiting, r.kv_usage) for r in records], dtype=float))  # fmt: skip
        latencies = ((self._ttft, "time_to_first_token"), (self._itl, "inter_token_latency"))
        for ring, field in latencies:
            samples = [(r.finished_time, v) for r in records for v in getattr(r, field)]
            if samples:
                ring.extend(np.array(samples, dtype=float))
        for r in records:
            self.totals.add(r)

    # --- series -----------------------------------------------------------------------------

    def steps(self) -> np.ndarray:
        """Rows of STEP_FIELDS within the window, oldest first (cached until the next add:
        a redraw asks for them once per series)."""
        if self._window_cache is None:
            rows = self._steps.rows()
            if len(rows):
                rows = rows[rows[:, 0] >= rows[-1, 0] - self.window_s]
            self._window_cache = rows
        return self._window_cache

    def grid(self, max_points: int | None = None) -> np.ndarray:
        """Absolute times, evenly spaced over the window's steps."""
        t = self.steps()[:, 0]
        if not len(t):
            return t
        n = min(max_points or self.max_points, len(t))
        return np.linspace(t[0], t[-1], n) if n > 1 else t[-1:]

    def rate(self, field: str) -> Series:
        """Tokens per second of `field` ("prefill" or "decode")."""
        rows, grid = self.steps(), self.grid()
        if not len(rows):
            return _empty()
        cumulative = np.concatenate([[0.0], np.cumsum(rows[:, STEP_FIELDS.index(field)])])
        hi = np.searchsorted(rows[:, 0], grid, side="right")
        lo = np.searchsorted(rows[:, 0], grid - self.rate_window_s, side="right")
        return self._since_start(grid), (cumulative[hi] - cumulative[lo]) / self.rate_window_s

    def gauge(self, field: str) -> Series:
        """Per-step values; past max_points steps, the peak of each bin, so no spike hides."""
        rows = self.steps()
        t, v = rows[:, 0], rows[:, STEP_FIELDS.index(field)]
        if len(t) <= self.max_points:
            return self._since_start(t), v
        starts = np.linspace(0, len(t), self.max_points, endpoint=False).astype(int)
        ends = np.append(starts[1:], len(t)) - 1  # each bin drawn at its last step's time
        return self._since_start(t[ends]), np.maximum.reduceat(v, starts)

    def latency(self, which: str, qs: Sequence[float] = (50, 95),
                max_points: int = 80) -> tuple[np.ndarray, np.ndarray]:
        """Percentiles qs (0..100) of "ttft" or "itl" samples in seconds, shape
        (len(qs), points); NaN where a window holds none. Fewer points than the rates:
        each is a percentile of a 10 s window, so neighbours barely differ.

        The points sit on a fixed grid (multiples of a power-of-two step since the first
        record) plus the latest step. A grid point's window is complete once drawn, as
        samples arrive in time order: it is computed once and kept, and a redraw computes
        only the new points. Percentiles over every window, every redraw, were most of a
        throughput redraw (4 ms after 3 s of four chats streaming, 11 ms after 30 s)."""
        steps = self.steps()
        if not len(steps):
            return np.zeros(0), np.full((len(qs), 0), np.nan)
        first, last = steps[0, 0], steps[-1, 0]
        step = _grid_step(last - first, max_points)
        origin = self.t0 or 0.0
        ks = np.arange(np.ceil((first - origin) / step), np.floor((last - origin) / step) + 1)
        grid = np.append(origin + ks * step, last) if len(ks) else np.array([last])
        if len(ks) and grid[-2] == last:
            grid = grid[:-1]  # the latest step lies on the grid
        kept = self._kept_percentiles(which, tuple(qs), step)
        for k in [k for k in kept if not len(ks) or k < ks[0]]:
            del kept[k]  # out of the window now
        todo = sorted({i for i, k in enumerate(ks) if k not in kept} | {len(grid) - 1})
        samples = (self._ttft if which == "ttft" else self._itl).rows()
        fresh = np.full((len(qs), len(todo)), np.nan)
        if len(samples):
            at = grid[todo]
            hi = np.searchsorted(samples[:, 0], at, side="right")
            lo = np.searchsorted(samples[:, 0], at - self.latency_window_s, side="right")
            fresh = window_percentiles(samples[:, 1], lo, hi, qs)
        out = np.empty((len(qs), len(grid)))
        for i, k in enumerate(ks):
            if k in kept:
                out[:, i] = kept[k]
        for column, i in enumerate(todo):
            out[:, i] = fresh[:, column]
            if i < len(ks):
                kept[ks[i]] = fresh[:, column]
        return self._since_start(grid), out

    def _kept_percentiles(self, which: str, qs: tuple, step: float) -> dict:
        """The computed grid points of one latency series (grid index -> percentiles); a
        new grid step (the window grew) starts afresh."""
        key = (which, qs)
        kept_step, kept = self._latency_kept.get(key, (None, {}))
        if kept_step != step:
            kept = {}
            self._latency_kept[key] = (step, kept)
        return kept

    def _since_start(self, t: np.ndarray) -> np.ndarray:
        return t - (self.t0 or 0.0)


def _grid_step(span: float, max_points: int) -> float:
    """The smallest power of two (1/16 s to 64 s) that puts at most max_points grid points
    on `span` seconds: exact in binary, so grid times add up without drift."""
    step = 1 / 16
    while span / step > max_points - 1 and step < 64:
        step *= 2
    return step


def window_percentiles(values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       qs: Sequence[float]) -> np.ndarray:  # fmt: skip
    """Percentiles qs (0..100) of values[a:b] for every window (a, b) of zip(lo, hi), by
    numpy's default ("linear") method: shape (len(qs), windows), NaN for an empty window.
    All windows' ranks are worked out at once, and each window costs one partition: a
    percentile call per window spent more in its own overhead than in partitioning, and
    was most of a throughput redraw (~10 ms of the UI thread while four chats streamed)."""
    n = hi - lo
    index = np.asarray(qs, dtype=float)[:, None] / 100 * np.maximum(n - 1, 0)  # (Q, W)
    below = np.floor(index).astype(int)
    above = np.minimum(below + 1, np.maximum(n - 1, 0))
    out = np.full(index.shape, np.nan)
    for w in np.flatnonzero(n > 0):
        low, high = below[:, w], above[:, w]
        part = np.partition(values[lo[w] : hi[w]], np.concatenate([low, high]))
        out[:, w] = part[low] + (part[high] - part[low]) * (index[:, w] - low)
    return out


def _empty() -> Series:
    return np.zeros(0), np.zeros(0)
