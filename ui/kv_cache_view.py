"""The KV cache panel: every physical block of the engine's paged cache, live.

The grid on top with the numbers beside it, the selected request's block table under it,
and the event log at the bottom. `set_snapshot` is cheap (10-20 calls a second): the grid
repaints once, and the numbers, log and table are refreshed together on the next turn of
the event loop.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence

from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QFormLayout, QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QSplitter,
    QToolButton, QVBoxLayout, QWidget,
)  # fmt: skip

from engine import BlockState, KVSnapshot, kv_metrics
from ui.kv_block_table import KVBlockTable
from ui.kv_event_log import KVEventLog
from ui.kv_grid import FALLBACK_COLORS, GridTheme, KVGrid, KVLegend, OwnerColors
from ui.panel_types import OwnerResolver
from ui.remote_metrics_view import RemoteKVNote

FORMULAS = {
    "kvUsedLabel": "in use = blocks with ref count > 0\n"
                   "tokens = Σ filled slots of in-use blocks (a shared block counted once)",
    "kvCachedLabel": "cached free = ref count 0, but holding a full hashed block\n"
                     "that a later prompt with the same prefix can reuse",
    "kvFreeLabel": "free = blocks holding nothing; slots = free blocks × block size",
    "kvCapacityLabel": "capacity = blocks × block size tokens\n"
                       "memory = capacity × KV bytes per token",
    "kvBytesPerTokenLabel": "KV bytes per token = layers × KV heads × head size\n"
                            "× 2 (K and V) × dtype bytes",
    "kvWasteLabel": "internal waste = Σ over requests of (blocks × block size − tokens)\n"
                    "the empty slots of partly filled last blocks: all the waste paging leaves",
    "kvWindowWasteLabel": "sliding-window waste = Σ over windowed layers (window W) and requests\n"
                          "of ⌊(tokens − W + 1) ÷ block size⌋ blocks × block size × KV bytes per"
                          " token ÷ layers\n"
                          "pagedesk keeps every block of a windowed layer (simple, correct);\n"
                          "these blocks lie wholly before the next token's window: no query"
                          " reads them again",
    "kvHitRateLabel": "prefix hit rate = prompt tokens found in the prefix cache\n"
                      "÷ prompt tokens looked up, since the engine started",
    "kvContiguousLabel": "paged = blocks in use × block size × KV bytes per token\n"
                         "contiguous = Σ over requests of its max length (prompt + max_tokens,"
                         " or the context) × KV bytes per token\n"
                         "more sequences fit = contiguous ÷ paged",
}  # fmt: skip


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class UsageBar(QWidget):
    """Used / cached / free as one stacked bar, in the grid's colours."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvUsageBar")
        self.shares = (0.0, 0.0)  # used, cached
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(10)

    def sizeHint(self) -> QSize:
        return QSize(160, 10)

    def paintEvent(self, event: QPaintEvent) -> None:
        theme = GridTheme.from_palette(self.palette())
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        w, h = self.width(), self.height()
        painter.setBrush(QColor(*theme.free))
        painter.drawRoundedRect(QRectF(0, 0, w, h), 3, 3)
        used, cached = self.shares
        painter.setBrush(QColor(*theme.cached))
        painter.drawRoundedRect(QRectF(0, 0, w * (used + cached), h), 3, 3)
        painter.setBrush(QColor(FALLBACK_COLORS[0]))
        painter.drawRoundedRect(QRectF(0, 0, w * used, h), 3, 3)
        painter.end()


class KVNumbers(QFrame):
    """The numbers a learner can check, each from one pure function in engine.kv_metrics."""

    ROWS = (("in use", "kvUsedLabel"), ("cached", "kvCachedLabel"), ("free", "kvFreeLabel"),
            ("capacity", "kvCapacityLabel"), ("KV / token", "kvBytesPerTokenLabel"),
            ("waste", "kvWasteLabel"), ("window waste", "kvWindowWasteLabel"),
            ("prefix hits", "kvHitRateLabel"))  # fmt: skip

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvNumbers")
        self.bar = UsageBar(self)
        self.step = QLabel("", self)
        self.step.setObjectName("kvStepLabel")
        self.labels: dict[str, QLabel] = {}
        self.keys: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(3)
        for title, name in self.ROWS:
            form.addRow(self._key(title, name), self._value(name))
        self.contiguous = self._value("kvContiguousLabel")
        self.contiguous.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 0, 0, 0)
        layout.addWidget(self.step)
        layout.addWidget(self.bar)
        layout.addLayout(form)
        layout.addWidget(self.contiguous)
        layout.addStretch(1)

    def _key(self, title: str, name: str) -> QLabel:
        label = QLabel(title, self)
        label.setToolTip(FORMULAS[name])
        label.setStyleSheet("color: palette(placeholder-text);")
        self.keys[name] = label
        return label

    def _value(self, name: str) -> QLabel:
        label = QLabel("—", self)
        label.setObjectName(name)
        label.setToolTip(FORMULAS[name])
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        label.setWordWrap(True)  # a longer number wraps; it never widens the window
        self.labels[name] = label
        return label

    def show_snapshot(self, snap: KVSnapshot) -> None:
        counts = kv_metrics.block_counts(snap)
        bs, per_token = snap.block_size, snap.kv_bytes_per_token
        cached = snap.states == BlockState.CACHED_FREE
        cached_tokens = int(snap.num_filled[cached].sum())  # not in kv_metrics (yet)
        waste = kv_metrics.internal_waste_tokens(snap)
        rate = kv_metrics.prefix_hit_rate(snap)
        # Tensor parallelism: each rank holds these blocks over its own KV heads.
        ranks = snap.tensor_parallel_size
        per_rank = f" per rank ×{ranks}" if ranks > 1 else ""
        memory = (f" · {format_bytes(counts.capacity_tokens * per_token)}{per_rank}"
                  if per_token else "")  # fmt: skip
        used = f"{plural(counts.used, 'block')} · {plural(counts.used_tokens, 'token')}"
        cached_text = f"{plural(counts.cached, 'block')} · {plural(cached_tokens, 'token')}"
        texts = {
            "kvUsedLabel": used,
            "kvCachedLabel": cached_text,
            "kvFreeLabel": f"{plural(counts.free, 'block')} · {plural(counts.free * bs, 'slot')}",
            "kvCapacityLabel": f"{plural(counts.capacity_tokens, 'token')}{memory}",
            "kvBytesPerTokenLabel": format_bytes(per_token) + per_rank if per_token else "unknown",
            "kvWasteLabel": plural(waste, "token")
                            + (f" · {format_bytes(waste * per_token)}" if per_token else ""),
            "kvWindowWasteLabel": kv_metrics.window_waste(snap).describe(),
            "kvHitRateLabel": f"{rate:.1%} · {snap.prefix_hits:,} / "
                              f"{snap.prefix_queries:,} tokens",
            "kvContiguousLabel": kv_metrics.paged_vs_contiguous(snap).describe(),
        }  # fmt: skip
        # The window-waste row only for a model with sliding-window layers (Mistral, Gemma 2).
        windowed = any(snap.layer_windows)
        for widget in (self.keys["kvWindowWasteLabel"], self.labels["kvWindowWasteLabel"]):
            if widget.isHidden() == windowed:
                widget.setVisible(windowed)
        for name, text in texts.items():
            if self.labels[name].text() != text:  # a relayout per frame would cost more
                self.labels[name].setText(text)
        step = f"<br>after step {snap.step:,}" if snap.step >= 0 else ""
        self.step.setText(f"<b>{snap.num_blocks:,} blocks</b> × {bs} tokens{step}")
        n = max(snap.num_blocks, 1)
        self.bar.shares = (counts.used / n, counts.cached / n)
        self.bar.update()


class KVCacheView(QWidget):
    """The panel the app docks. See the module docstring for the layout."""

    blockClicked = Signal(int)  # physical block id
    ownerActivated = Signal(object)  # RequestOwner.key of the clicked block's owner
    requestSelected = Signal(str)  # a request id whose block table is now shown

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvCacheView")
        self.snap: KVSnapshot | None = None
        self.selected_request: str | None = None
        self._selected_owner: object = None
        self.owners = OwnerColors()
        self.grid = KVGrid(self.owners, self)
        self.legend = KVLegend(self)
        self.numbers = KVNumbers(self)
        self.block_table = KVBlockTable(self)
        self.block_table.color_of = self.grid.cell_color
        self.event_log = KVEventLog(self.owners, self)
        self._refresh_timer = QTimer(self, singleShot=True, interval=0, timeout=self.refresh)
        self._build_layout()
        self.grid.blockClicked.connect(self._on_block_clicked)
        self.grid.viewChanged.connect(self._update_zoom_label)
        self.block_table.blockClicked.connect(lambda b: self.highlight_blocks([b]))
        self.event_log.eventActivated.connect(lambda e: self.highlight_blocks(e.block_ids))

    # ------------------------------------------------------------ layout
    def _build_layout(self) -> None:
        top = QWidget(self)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        left = QVBoxLayout()
        left.addLayout(self._build_zoom_bar())
        left.addWidget(self.grid, 1)
        left.addWidget(self.legend)
        row.addLayout(left, 1)
        # A fixed width: numbers change 20 times a second, and a column that grew with them
        # would re-lay out the whole window (every chart and pane) each time.
        self.numbers.setFixedWidth(250)
        row.addWidget(self.numbers)
        column = QVBoxLayout(top)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row, 1)
        column.addWidget(self._build_table_area())
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(top)
        splitter.addWidget(self.event_log)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        self.remote_note = RemoteKVNote(self)  # remote sessions' caches: not inspectable
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.remote_note)
        layout.addWidget(splitter)

    def _build_zoom_bar(self) -> QHBoxLayout:
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        self.zoom_label = QLabel("no cache yet", self)
        self.zoom_label.setObjectName("kvZoomLabel")
        bar.addWidget(self.zoom_label, 1)
        for name, text, tip, slot in (
            ("kvZoomOutButton", "−", "Zoom out (mouse wheel down)", self.grid.zoom_out),
            ("kvZoomInButton", "+", "Zoom in (mouse wheel up)", self.grid.zoom_in),
            ("kvZoomResetButton", "⤢", "Show every block", self.grid.reset_zoom),
        ):  # fmt: skip
            button = QToolButton(self)
            button.setObjectName(name)
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, s=slot: s())
            bar.addWidget(button)
        return bar

    def _build_table_area(self) -> QWidget:
        area = QWidget(self)
        self.table_label = QLabel(self)
        self.table_label.setObjectName("kvBlockTableLabel")
        scroll = QScrollArea(area)
        scroll.setObjectName("kvBlockTableScroll")
        scroll.setWidget(self.block_table)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFixedHeight(self.block_table.sizeHint().height() + 16)
        layout = QVBoxLayout(area)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.table_label)
        layout.addWidget(scroll)
        self._update_table_label()
        return area

    # ------------------------------------------------------------ the app's calls
    def set_owner_resolver(self, resolver: OwnerResolver) -> None:
        self.owners.set_resolver(resolver)
        self.grid.refresh_owners()

    def set_decoder(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.grid.set_decoder(decode)

    def set_snapshot(self, snap: KVSnapshot) -> None:
        self.snap = snap
        self.grid.set_snapshot(snap)
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def refresh(self) -> None:
        """Bring the numbers, the log and the block table up to the latest snapshot."""
        self._refresh_timer.stop()
        snap = self.snap
        if snap is None:
            return
        self.numbers.show_snapshot(snap)
        self.event_log.add_events(snap)
        self._follow_owner(snap)
        self.block_table.set_request(snap, self.selected_request)
        self._update_table_label()
        self._update_zoom_label()

    def highlight_blocks(self, block_ids: Iterable[int]) -> None:
        ids = list(block_ids)
        self.grid.set_highlight(ids)
        self.block_table.highlighted = set(ids)
        self.block_table.update()

    def select_request(self, request_id: str | None) -> None:
        self.selected_request = request_id
        if request_id is not None:
            self._selected_owner = self._owner_key(self.snap.parent_of(request_id)
                                                   if self.snap else request_id)  # fmt: skip
        self.block_table.set_request(self.snap, request_id)
        self._update_table_label()
        if request_id is not None:
            self.requestSelected.emit(request_id)

    def select_owner(self, key: object) -> None:
        self._selected_owner = key
        rid = self._first_request_of(key)
        if rid is not None:
            self.select_request(rid)
        else:
            self.selected_request = None
            self.block_table.set_request(self.snap, None)
            self._update_table_label()

    # ------------------------------------------------------------ selection
    def _owner_key(self, parent_id: str) -> object:
        owner = self.owners.owner(parent_id)
        return parent_id if owner is None else owner.key

    def _first_request_of(self, key: object) -> str | None:
        if self.snap is None or key is None:
            return None
        for rid in self.snap.block_tables:
            if self._owner_key(self.snap.parent_of(rid)) == key:
                return rid
        return None

    def _follow_owner(self, snap: KVSnapshot) -> None:
        """A session's next message is a new request: keep showing that session's table."""
        if self.selected_request in snap.block_tables or self._selected_owner is None:
            return
        rid = self._first_request_of(self._selected_owner)
        if rid is not None:
            self.select_request(rid)

    def _on_block_clicked(self, block: int) -> None:
        self.blockClicked.emit(block)
        owners = self.snap.owners(block) if self.snap else ()
        if not owners:
            return
        rid = self.selected_request if self.selected_request in owners else owners[0]
        self.select_request(rid)
        owner = self.owners.owner(self.snap.parent_of(rid))
        if owner is not None:
            self.ownerActivated.emit(owner.key)

    def _update_table_label(self) -> None:
        snap, rid = self.snap, self.selected_request
        if snap is None or rid is None:
            text = "Block table — click a block or a session to see its request"
        elif rid not in snap.block_tables:
            text = f"Block table — request {html.escape(rid)} holds no blocks now"
        else:
            table = snap.block_tables[rid]
            tokens = len(snap.request_token_ids.get(rid, ()))
            label = html.escape(self.owners.label(snap.parent_of(rid)))
            text = (f"Block table — <b>{label}</b> · request {html.escape(rid)} · "
                    f"{tokens:,} tokens in {len(table)} blocks "
                    "(logical → physical)")  # fmt: skip
        self.table_label.setText(text)

    def _update_zoom_label(self) -> None:
        self.zoom_label.setText(self.grid.describe_view())
