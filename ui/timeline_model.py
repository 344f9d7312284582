"""The batch timeline's data: one column per engine step, one row per request, a kind per cell.

No Qt here: the view asks for the rows and a numpy array of cell codes for the window it
shows, and this module keeps both bounded (the last `max_steps` steps; rows whose whole
life scrolled out of that window are dropped).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine import StepStats

KINDS = ("waiting", "prefill", "chunked_prefill", "decode", "recompute", "preempted", "finished")
CODE = {kind: code for code, kind in enumerate(KINDS, start=1)}  # 0: nothing this step
# Two more ways to draw "finished": the end cap alone (aborted while not scheduled), or the
# cap after a full-height chunk (a prompt whose first token was its last).
FINISHED_ALONE = len(KINDS) + 1
FINISHED_AFTER_CHUNK = len(KINDS) + 2
FULL_HEIGHT = {CODE["prefill"], CODE["chunked_prefill"], CODE["recompute"]}


@dataclass(slots=True)
class Row:
    request_id: str
    parent_id: str
    first_step: int
    last_step: int
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Column:
    record: StepStats
    cells: dict[str, int]  # request id -> drawing code
    tokens: dict[str, int]  # request id -> tokens computed this step


def kind_name(code: int) -> str | None:
    if code in (FINISHED_ALONE, FINISHED_AFTER_CHUNK):
        return "finished"
    return KINDS[code - 1] if code else None


def short_id(request_id: str, width: int = 10) -> str:
    """The tail of a long id, where ids differ ("…message17#1")."""
    return request_id if len(request_id) <= width else "…" + request_id[-(width - 1) :]


class TimelineModel:
    def __init__(self, max_steps: int = 2000) -> None:
        self.max_steps = max_steps
        self.columns: deque[Column] = deque()
        self.rows: dict[str, Row] = {}  # in order of first appearance
        self.version = 0  # bumped on every change, so the view can cache its image

    def clear(self) -> None:
        self.columns.clear()
        self.rows.clear()
        self.version += 1

    def add(self, records: Sequence[StepStats]) -> None:
        for record in records:
            self.columns.append(self._column(record))
        while len(self.columns) > self.max_steps:
            self.columns.popleft()
        if self.columns:
            oldest = self.columns[0].record.step
            self.rows = {rid: r for rid, r in self.rows.items() if r.last_step >= oldest}
        self.version += 1

    def _column(self, record: StepStats) -> Column:
        step = record.step
        cells: dict[str, int] = {}
        tokens: dict[str, int] = {}
        # Scheduled before waiting: the scheduler admitted those first, so rows keep
        # arrival order.
        for entry in record.scheduled:
            self._touch(entry.request_id, entry.parent_id, step)
            cells[entry.request_id] = CODE[_kind_value(entry.kind)]
            tokens[entry.request_id] = entry.num_new_tokens
        for rid in record.waiting:
            self._touch(rid, rid.split("#")[0], step)
            cells.setdefault(rid, CODE["waiting"])
        for rid in record.finished:
            if rid in self.rows:
                self.rows[rid].finished = True
                self.rows[rid].last_step = step
                cells[rid] = _finished_code(cells.get(rid, 0))
        for rid in record.preempted:  # a preempted request is not in this step's batch
            if rid in self.rows:
                self.rows[rid].last_step = step
                cells[rid] = CODE["preempted"]
        return Column(record, cells, tokens)

    def _touch(self, rid: str, parent_id: str, step: int) -> None:
        row = self.rows.get(rid)
        if row is None:
            self.rows[rid] = Row(rid, parent_id, step, step)
        else:
            row.parent_id = parent_id
            row.last_step = step

    # --- queries --------------------------------------------------------------------------

    def column_index(self, step: int) -> int | None:
        """Steps are consecutive, so the index is an offset (checked, in case they are not)."""
        if not self.columns:
            return None
        index = step - self.columns[0].record.step
        if 0 <= index < len(self.columns) and self.columns[index].record.step == step:
            return index
        for index, column in enumerate(self.columns):
            if column.record.step == step:
                return index
        return None

    def column(self, step: int) -> Column | None:
        index = self.column_index(step)
        return None if index is None else self.columns[index]

    def cell_code(self, request_id: str, step: int) -> int:
        column = self.column(step)
        return column.cells.get(request_id, 0) if column else 0

    def rows_between(self, first_index: int, last_index: int) -> list[Row]:
        """Rows alive somewhere in columns [first_index, last_index]: the rows a window
        shows, so a window of recent steps is not filled with long-finished requests."""
        if not self.columns:
            return []
        first = self.columns[max(0, first_index)].record.step
        last = self.columns[min(len(self.columns) - 1, last_index)].record.step
        return [r for r in self.rows.values() if r.first_step <= last and r.last_step >= first]

    def codes(self, rows: Sequence[Row], first_index: int, count: int) -> np.ndarray:
        """Cell codes, shape (len(rows), count), for columns first_index onwards."""
        out = np.zeros((len(rows), count), dtype=np.uint8)
        where = {row.request_id: i for i, row in enumerate(rows)}
        for c in range(count):
            index = first_index + c
            if index >= len(self.columns):
                break
            for rid, code in self.columns[index].cells.items():
                r = where.get(rid)
                if r is not None:
                    out[r, c] = code
        return out


def _kind_value(kind: object) -> str:
    """StepKind is a str enum whose values are the names in KINDS (ui/ sees only `engine`)."""
    return str(getattr(kind, "value", kind))


def _finished_code(code: int) -> int:
    if code in FULL_HEIGHT:
        return FINISHED_AFTER_CHUNK
    return CODE["finished"] if code == CODE["decode"] else FINISHED_ALONE
