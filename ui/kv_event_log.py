"""The KV cache's event log: allocate, share, evict, preempt... as they happen, filterable by
kind and by session. Clicking an event lights up its blocks in the grid."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import (
    QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt,
    Signal,
)  # fmt: skip
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QTableView, QVBoxLayout,
    QWidget,
)  # fmt: skip

from engine import KVEvent, KVSnapshot, kv_events
from ui.kv_grid import EVICT_FLASH, PREEMPT_FLASH, OwnerColors

MAX_ROWS = 2000  # the engine keeps 4096; the learner reads the recent ones
KIND_HELP = {
    "allocate": "a request's first new blocks, when it is admitted",
    "append": "more blocks for a running request that grew past its last block",
    "prefix_hit": "cached blocks taken by an admitted request (ref count + 1)",
    "share": "of those, blocks another request holds at the same time",
    "free": "a finished or aborted request gave its blocks back",
    "preempt": "blocks taken from a running request; it is recomputed later",
    "BlockStored": "a full block hashed into the prefix cache",
    "BlockRemoved": "evicted from the prefix cache, its hash dropped",
    "AllBlocksCleared": "the prefix cache was reset",
}
KIND_COLORS = {"preempt": QColor(*PREEMPT_FLASH), "BlockRemoved": QColor(*EVICT_FLASH),
               "AllBlocksCleared": QColor(*EVICT_FLASH), "share": QColor("#b07aa1"),
               "prefix_hit": QColor("#59a14f")}  # fmt: skip
COLUMNS = ("#", "step", "event", "session", "request", "blocks")
NO_OWNER = object()  # the owner filter's key for events without a request (evictions)


@dataclass(frozen=True, slots=True)
class EventRow:
    event: KVEvent
    owner_key: object
    owner_label: str
    owner_color: QColor | None


def blocks_text(ids: tuple[int, ...], limit: int = 8) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


class EventModel(QAbstractTableModel):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: list[EventRow] = []

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> object:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> object:
        row, col = self.rows[index.row()], index.column()
        e = row.event
        if role == Qt.ItemDataRole.DisplayRole:
            step = "" if e.step < 0 else str(e.step)
            detail = f" ({e.detail})" if e.detail else ""
            return (str(e.seq), step, e.kind + detail, row.owner_label, e.request_id or "",
                    blocks_text(e.block_ids))[col]  # fmt: skip
        if role == Qt.ItemDataRole.ForegroundRole and col == 2:
            return KIND_COLORS.get(e.kind)
        if role == Qt.ItemDataRole.DecorationRole and col == 3:
            return row.owner_color
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{e.kind}: {KIND_HELP.get(e.kind, '')}\nblocks: {blocks_text(e.block_ids, 64)}"
        return None

    def append(self, rows: list[EventRow]) -> None:
        overflow = len(self.rows) + len(rows) - MAX_ROWS
        if overflow > 0:
            drop = min(overflow, len(self.rows))
            self.beginRemoveRows(QModelIndex(), 0, drop - 1)
            del self.rows[:drop]
            self.endRemoveRows()
            rows = rows[-MAX_ROWS:]
        if rows:
            first = len(self.rows)
            self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
            self.rows.extend(rows)
            self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self.rows.clear()
        self.endResetModel()


class EventFilter(QSortFilterProxyModel):
    """Keeps the events of one kind and/or one owner (None: any)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.kind: str | None = None
        self.owner_key: object = None

    def set_filter(self, kind: str | None, owner_key: object) -> None:
        if not hasattr(self, "endFilterChange"):  # Qt < 6.10
            self.kind, self.owner_key = kind, owner_key
            self.invalidateFilter()
            return
        self.beginFilterChange()  # Qt 6.10's replacement for invalidateFilter()
        self.kind, self.owner_key = kind, owner_key
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        row = self.sourceModel().rows[source_row]
        if self.kind is not None and row.event.kind != self.kind:
            return False
        return self.owner_key is None or row.owner_key == self.owner_key


class KVEventLog(QWidget):
    """The log under the grid. `add_events` takes the snapshot's events it has not seen."""

    eventActivated = Signal(object)  # the clicked KVEvent

    def __init__(self, owners: OwnerColors | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvEventLog")
        self.owners = owners or OwnerColors()
        self.last_seq = -1
        self.model = EventModel(self)
        self.proxy = EventFilter(self)
        self.proxy.setSourceModel(self.model)
        self._owner_keys: list[object] = [None]
        self.kind_combo = self._combo("kvEventKindFilter", ["all events", *kv_events.EVENT_KINDS])
        self.owner_combo = self._combo("kvEventOwnerFilter", ["all sessions"])
        self.table = self._build_table()
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(QLabel("<b>Events</b>", self))
        top.addStretch(1)
        top.addWidget(self.kind_combo)
        top.addWidget(self.owner_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)

    def _combo(self, name: str, items: list[str]) -> QComboBox:
        combo = QComboBox(self)
        combo.setObjectName(name)
        combo.addItems(items)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        combo.currentIndexChanged.connect(self._apply_filters)
        return combo

    def _build_table(self) -> QTableView:
        table = QTableView(self)
        table.setObjectName("kvEventTable")
        table.setModel(self.proxy)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.verticalHeader().hide()
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 4)
        table.setShowGrid(False)
        table.setAlternatingRowColors(True)
        header = table.horizontalHeader()
        # Fixed widths: ResizeToContents would measure every row on every insert.
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        fm = table.fontMetrics()
        for col, sample in enumerate(("0000000", "000000", "AllBlocksCleared", "Chat about rust",
                                      "session12-message34")):  # fmt: skip
            table.setColumnWidth(col, fm.horizontalAdvance(sample) + 16)
        table.clicked.connect(self._activate)
        return table

    # ------------------------------------------------------------ feeding
    def add_events(self, snap: KVSnapshot) -> None:
        if snap.events and snap.events[-1].seq < self.last_seq:  # a new engine: seq from 0
            self.clear()
        fresh = [e for e in snap.events if e.seq > self.last_seq]
        if not fresh:
            return
        self.last_seq = fresh[-1].seq
        bar = self.table.verticalScrollBar()
        follow = bar.value() >= bar.maximum() - 2
        self.model.append([self._row(snap, e) for e in fresh[-MAX_ROWS:]])
        if follow:
            self.table.scrollToBottom()

    def _row(self, snap: KVSnapshot, event: KVEvent) -> EventRow:
        if event.request_id is None:
            return EventRow(event, NO_OWNER, "—", None)
        parent = snap.parent_of(event.request_id)
        owner = self.owners.owner(parent)
        key = parent if owner is None else owner.key
        label = self.owners.label(parent)
        if key not in self._owner_keys:
            self._owner_keys.append(key)
            self.owner_combo.addItem(label)
        return EventRow(event, key, label, self.owners.color(parent))

    def clear(self) -> None:
        self.model.clear()
        self.last_seq = -1

    # ------------------------------------------------------------ filters
    def set_kind_filter(self, kind: str | None) -> None:
        index = 0 if kind is None else self.kind_combo.findText(kind)
        self.kind_combo.setCurrentIndex(max(index, 0))

    def set_owner_filter(self, key: object) -> None:
        index = self._owner_keys.index(key) if key in self._owner_keys else 0
        self.owner_combo.setCurrentIndex(index)

    def _apply_filters(self) -> None:
        kind = None if self.kind_combo.currentIndex() <= 0 else self.kind_combo.currentText()
        key = self._owner_keys[max(self.owner_combo.currentIndex(), 0)]
        self.proxy.set_filter(kind, key)

    def visible_events(self) -> list[KVEvent]:
        return [self.event_at(r) for r in range(self.proxy.rowCount())]

    def event_at(self, proxy_row: int) -> KVEvent:
        source = self.proxy.mapToSource(self.proxy.index(proxy_row, 0))
        return self.model.rows[source.row()].event

    def _activate(self, index: QModelIndex) -> None:
        self.eventActivated.emit(self.event_at(index.row()))
