"""Progress of a download: the record handed to callers, a speed meter that falls to 0 in a
stall (a frozen readout hides a stall), and a reporter that bounds the callback rate."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

SPEED_WINDOW_S = 2.0
MIN_INTERVAL_S = 0.1  # at most ~10 reports a second, plus one on every state change
STATES = ("queued", "downloading", "retrying", "verifying", "done", "failed", "paused",
          "cancelled")  # fmt: skip


@dataclass(frozen=True)
class Progress:
    repo_id: str
    file: str
    file_done: int
    file_size: int
    done: int  # bytes of the whole plan on disk, resumed bytes included
    total: int
    speed_bps: float  # bytes/s over the last ~2 s: 0 during a stall
    eta_s: float | None
    state: str
    message: str = ""  # why, for "failed" and "retrying"


class SpeedMeter:
    """Bytes per second over the last SPEED_WINDOW_S seconds of wall time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._chunks: deque[tuple[float, int]] = deque()
        self._in_window = 0

    def add(self, nbytes: int) -> None:
        self._chunks.append((self._clock(), nbytes))
        self._in_window += nbytes

    def speed(self) -> float:
        now = self._clock()
        while self._chunks and self._chunks[0][0] < now - SPEED_WINDOW_S:
            self._in_window -= self._chunks.popleft()[1]
        span = min(SPEED_WINDOW_S, now - self._start)
        return self._in_window / span if span > 0 else 0.0


class Reporter:
    """Builds Progress records and calls on_progress, rate-limited except on state changes."""

    def __init__(self, repo_id: str, total: int, on_progress: Callable[[Progress], None] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repo_id, self.total = repo_id, total
        self.file, self.file_done, self.file_size, self.done = "", 0, 0, 0
        self.fetched = 0  # bytes transferred by this run (resumed bytes excluded)
        self.state = "queued"
        self.meter = SpeedMeter(clock)
        self._callback, self._clock = on_progress, clock
        self._last = float("-inf")

    def start_file(self, path: str, size: int, on_disk: int) -> None:
        self.file, self.file_size, self.file_done = path, size, on_disk
        self.tick()

    def advance(self, nbytes: int) -> None:
        self.file_done += nbytes
        self.done += nbytes
        self.fetched += nbytes
        self.meter.add(nbytes)
        self.tick()

    def discard(self, nbytes: int) -> None:
        """Bytes counted as done that were thrown away (a restart from zero)."""
        self.file_done -= nbytes
        self.done -= nbytes

    def tick(self) -> None:
        """Report now if the last report is old enough (also while no bytes arrive)."""
        if self._clock() - self._last >= MIN_INTERVAL_S:
            self.emit(self.state)

    def emit(self, state: str, message: str = "") -> None:
        changed, self.state = state != self.state, state
        if self._callback is None or (not changed and not message
                                      and self._clock() - self._last < MIN_INTERVAL_S):
            return
        self._last = self._clock()
        speed = self.meter.speed() if state in ("downloading", "retrying") else 0.0
        left = max(0, self.total - self.done)
        eta = (left / speed if speed > 0 else None) if state != "done" else 0.0
        self._callback(Progress(self.repo_id, self.file, self.file_done, self.file_size,
                                self.done, self.total, speed, eta, state, message))
