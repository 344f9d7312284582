"""The KV cache block grid: every physical block of the paged cache as one cell of an image.

Each snapshot is turned into per-block colour arrays with a few vectorised numpy
operations; the cells are then stamped into one RGBA array, wrapped in a QImage and painted
without smoothing. No widget per block, so 100,000 blocks cost milliseconds. When cells
would be smaller than MIN_CELL pixels the grid becomes a heat map (each pixel aggregates k
blocks) and the zoom brings cells back for a range of blocks.
"""

from __future__ import annotations

import html
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor, QFont, QImage, QMouseEvent, QPainter, QPaintEvent, QPalette, QPen, QWheelEvent,
)  # fmt: skip
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from engine import BlockState, KVSnapshot
from ui.panel_types import OwnerResolver, RequestOwner, no_owner

MIN_CELL = 4  # below this a cell is unreadable: switch to the heat map
MAX_CELL = 26
HEAT_PX = 2  # screen pixels per heat-map pixel
NUMBER_CELL = 15  # from this size a shared block shows its ref count
FLASH_S = 0.5
MIN_ZOOM_BLOCKS = 64
CACHE_LIMIT = 20_000  # resolved owners kept (one per caller's request id)
RGB = tuple[int, int, int]

# Owners the resolver does not know get a stable colour from their id (Tableau 10).
FALLBACK_COLORS = ["#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                   "#ff9da7", "#9c755f", "#e15759", "#bab0ac"]  # fmt: skip
SHARED_OUTLINE: RGB = (255, 255, 255)
HIGHLIGHT: RGB = (255, 176, 0)
EVICT_FLASH: RGB = (0, 200, 255)
PREEMPT_FLASH: RGB = (255, 45, 45)
FLASH_KINDS = {"BlockRemoved": 1, "evict": 1, "preempt": 2}  # "evict": the older name


def _rgb(color: QColor | str) -> RGB:
    c = QColor(color)
    return (c.red(), c.green(), c.blue())


@dataclass(frozen=True, slots=True)
class GridTheme:
    """The grid's fixed colours, chosen from the palette (light or dark)."""

    background: RGB
    free: RGB
    cached: RGB
    hatch: RGB
    dark: bool

    @staticmethod
    def from_palette(palette: QPalette) -> GridTheme:
        dark = palette.color(QPalette.ColorRole.Window).lightness() < 128
        bg = _rgb(palette.color(QPalette.ColorRole.Base))
        if dark:
            return GridTheme(bg, (58, 60, 67), (64, 82, 98), (104, 130, 152), True)
        return GridTheme(bg, (226, 228, 233), (200, 212, 222), (148, 168, 186), False)


class OwnerColors:
    """Who owns a request, resolved once per parent id: the panels ask at 10-20 Hz."""

    def __init__(self) -> None:
        self.resolver: OwnerResolver = no_owner
        self._cache: dict[str, RequestOwner | None] = {}
        self._rgb: dict[str, RGB] = {}

    def set_resolver(self, resolver: OwnerResolver) -> None:
        self.resolver = resolver
        self.forget()

    def forget(self) -> None:
        """Drop what was resolved (an owner was renamed or recoloured)."""
        self._cache.clear()
        self._rgb.clear()

    def rgb(self, parent_id: str) -> RGB:
        rgb = self._rgb.get(parent_id)
        if rgb is None:
            rgb = _rgb(self.color(parent_id))
            if parent_id in self._cache:  # only known owners: a fallback may change
                self._rgb[parent_id] = rgb
        return rgb

    def owner(self, parent_id: str) -> RequestOwner | None:
        owner = self._cache.get(parent_id)
        if owner is None:
            owner = self.resolver(parent_id)
            if owner is not None:  # an unknown id may become known: ask again next time
                if len(self._cache) > CACHE_LIMIT:
                    self.forget()
                self._cache[parent_id] = owner
        return owner

    def color(self, parent_id: str) -> QColor:
        owner = self.owner(parent_id)
        if owner is not None:
            return QColor(owner.color)
        return QColor(FALLBACK_COLORS[zlib.crc32(parent_id.encode()) % len(FALLBACK_COLORS)])

    def label(self, parent_id: str) -> str:
        owner = self.owner(parent_id)
        return owner.label if owner is not None else parent_id


# ---------------------------------------------------------------- per-snapshot arrays
@dataclass(frozen=True, slots=True)
class BlockLayers:
    """What every block looks like, one row per physical block."""

    base: np.ndarray  # uint8 [n, 3] the fill colour
    light: np.ndarray  # uint8 [n, 3] the empty (upper) part of an in-use block
    empty: np.ndarray  # float32 [n] empty share of an in-use block's slots
    cached: np.ndarray  # bool [n]
    shared: np.ndarray  # bool [n] ref count > 1
    first_owner: np.ndarray  # int32 [n] index into `requests`, -1 for none
    requests: tuple[str, ...]


def first_owners(snap: KVSnapshot) -> tuple[tuple[str, ...], np.ndarray]:
    """For each block, the first request (in table order) that holds it: one pass over the
    block tables, then numpy; never a Python loop per block."""
    requests = tuple(snap.block_tables)
    tables = snap.block_tables.values()
    lengths = np.fromiter(map(len, tables), np.int64, count=len(requests))
    flat = np.fromiter(chain.from_iterable(tables), np.int64, count=int(lengths.sum()))
    owner_of_slot = np.repeat(np.arange(len(requests), dtype=np.int32), lengths)
    # The first holder has the smallest request index; minimum.at is exact with repeated
    # blocks (plain fancy assignment leaves the winner unspecified) and needs no sort.
    none = np.iinfo(np.int32).max
    first = np.full(snap.num_blocks, none, np.int32)
    np.minimum.at(first, flat, owner_of_slot)
    first[first == none] = -1
    return requests, first


def block_layers(snap: KVSnapshot, owners: OwnerColors, theme: GridTheme) -> BlockLayers:
    requests, first = first_owners(snap)
    parents = snap.request_parents
    # One palette row per request, then: unknown holder (-1), free, cached. A block's colour
    # is a single take from it (boolean-mask assignment on [n, 3] is several times slower).
    palette = np.array([owners.rgb(parents.get(r, r)) for r in requests]
                       + [(128, 128, 128), theme.free, theme.cached], np.uint8).reshape(-1, 3)
    r = len(requests)
    states = snap.states
    in_use = states == BlockState.IN_USE
    cached = states == BlockState.CACHED_FREE
    index = np.where(in_use, np.where(first < 0, r, first), np.where(cached, r + 2, r + 1))
    base = palette.take(index, axis=0)
    # The empty part is the fill colour most of the way to "free": it reads as room left.
    light = ((base * np.uint16(90) + np.array(theme.free, np.uint16) * 166) >> 8).astype(np.uint8)
    filled = snap.num_filled.astype(np.float32) / max(snap.block_size, 1)
    empty = np.where(in_use, 1.0 - np.clip(filled, 0.0, 1.0), 0.0).astype(np.float32)
    shared = snap.ref_counts > 1
    return BlockLayers(base, light, empty, cached, shared, first, requests)


# ---------------------------------------------------------------- geometry
@dataclass(frozen=True, slots=True)
class GridGeometry:
    mode: str  # "cells" or "heatmap"
    start: int  # first block shown
    count: int  # blocks shown
    cols: int
    rows: int
    cell: int  # screen pixels per cell (cells) or per heat pixel (heat map), across
    gap: int
    per_cell: int  # blocks per cell: 1, or k in the heat map
    cell_h: int = 0  # down, when it differs: heat pixels stretch to fill the height

    @property
    def height_px(self) -> int:
        return self.cell_h or self.cell

    def size(self) -> QSize:
        return QSize(self.cols * self.cell, self.rows * self.height_px)


def choose_geometry(width: int, height: int, start: int, count: int) -> GridGeometry:
    """The largest square cell that fits every block; a heat map when that is < MIN_CELL."""
    width, height, count = max(width, 1), max(height, 1), max(count, 1)
    for cell in range(MAX_CELL, MIN_CELL - 1, -1):
        cols = min(width // cell, count)
        if cols and math.ceil(count / cols) * cell <= height:
            gap = 1 if cell >= 6 else 0
            return GridGeometry("cells", start, count, cols, math.ceil(count / cols), cell,
                                gap, 1)  # fmt: skip
    capacity = max((width // HEAT_PX) * (height // HEAT_PX), 1)
    k = math.ceil(count / capacity)
    bins = math.ceil(count / k)
    cols = max(min(width // HEAT_PX, bins), 1)
    rows = math.ceil(bins / cols)
    # k is a whole number, so the bins rarely fill the area: taller pixels use the rest.
    cell_h = min(max(height // rows, HEAT_PX), 2 * HEAT_PX)
    return GridGeometry("heatmap", start, count, cols, rows, HEAT_PX, 0, k, cell_h)


# ---------------------------------------------------------------- rendering
def _padded(a: np.ndarray, total: int, fill: object) -> np.ndarray:
    out = np.empty((total, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    out[len(a) :] = fill
    return out


@dataclass(frozen=True, slots=True)
class Marks:
    """What is drawn over the blocks' own look: highlights and fading flashes."""

    highlight: np.ndarray  # bool [n]
    flash_w: np.ndarray  # float32 [n] 1 just flashed .. 0 gone
    flash_rgb: np.ndarray  # uint8 [n, 3]


def render_cells(geo: GridGeometry, layers: BlockLayers, marks: Marks,
                 theme: GridTheme) -> np.ndarray:  # fmt: skip
    """Stamp one cell per block into an RGB array [rows*cell, cols*cell, 3]."""
    sl = slice(geo.start, geo.start + geo.count)
    n, R, C, s = geo.rows * geo.cols, geo.rows, geo.cols, geo.cell
    inner = s - geo.gap

    def per_cell(a: np.ndarray, fill: object) -> np.ndarray:
        a = _padded(a[sl], n, fill)
        return a.reshape(R, 1, C, 1, *a.shape[1:])

    yy = np.arange(s).reshape(1, s, 1, 1)
    xx = np.arange(s).reshape(1, 1, 1, s)
    empty_px = np.rint(per_cell(layers.empty, 0.0) * inner)
    top = (yy < empty_px)[..., None]
    img = np.where(top, per_cell(layers.light, 0), per_cell(layers.base, theme.background))
    img = np.broadcast_to(img, (R, s, C, s, 3)).copy()
    full = (R, s, C, s)
    img[np.broadcast_to((yy + xx) % 4 == 0, full) & per_cell(layers.cached, False)] = theme.hatch
    if marks.flash_w[sl].any():
        w = per_cell(marks.flash_w, 0.0)[..., None]
        img[:] = img * (1 - w) + per_cell(marks.flash_rgb, 0) * w
    edge = (yy == 0) | (yy == inner - 1) | (xx == 0) | (xx == inner - 1)
    if inner >= 6:
        # The white ring sits one pixel inside the cell, so a rim of the owner's colour
        # still shows around it and it reads on a light background too.
        o = 1 if inner >= 9 else 0
        ring = (((yy == o) | (yy == inner - 1 - o)) & (xx >= o) & (xx <= inner - 1 - o)) | (
            ((xx == o) | (xx == inner - 1 - o)) & (yy >= o) & (yy <= inner - 1 - o))
        img[np.broadcast_to(ring, full) & per_cell(layers.shared, False)] = SHARED_OUTLINE
    thick = (yy < 2) | (yy >= inner - 2) | (xx < 2) | (xx >= inner - 2) if inner >= 8 else edge
    img[np.broadcast_to(thick, full) & per_cell(marks.highlight, False)] = HIGHLIGHT
    if geo.gap:
        img[np.broadcast_to((yy >= inner) | (xx >= inner), full)] = theme.background
    return img.reshape(R * s, C * s, 3)


def render_heatmap(geo: GridGeometry, layers: BlockLayers, marks: Marks,
                   theme: GridTheme) -> np.ndarray:  # fmt: skip
    """One pixel per k blocks: their mean colour, so the share in use tints the grey."""
    k, sl = geo.per_cell, slice(geo.start, geo.start + geo.count)
    bins = math.ceil(geo.count / k)
    total = bins * k

    def binned(a: np.ndarray, fill: object) -> np.ndarray:
        return _padded(a[sl], total, fill).reshape(bins, k, *a.shape[1:])

    parts = binned(layers.base, 0)
    color = parts[:, 0].astype(np.float32)
    for j in range(1, k):  # k contiguous adds beat a sum over a short middle axis
        color += parts[:, j]
    counts = np.full(bins, k, np.float32)
    counts[-1] = geo.count - (bins - 1) * k
    color /= counts[:, None]
    if marks.flash_w[sl].any():
        w = binned(marks.flash_w, 0.0).max(axis=1)[:, None]
        color = color * (1 - w) + binned(marks.flash_rgb, 0).max(axis=1) * w
    if marks.highlight[sl].any():
        color[binned(marks.highlight, False).any(axis=1)] = HIGHLIGHT
    out = _padded(color.astype(np.uint8), geo.rows * geo.cols, theme.background)
    return out.reshape(geo.rows, geo.cols, 3)


def to_qimage(rgb: np.ndarray) -> tuple[QImage, np.ndarray]:
    """Wrap an RGB array as a QImage; the returned buffer must outlive the image."""
    h, w = rgb.shape[:2]
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = 255
    return QImage(rgba.data, w, h, w * 4, QImage.Format.Format_RGBA8888), rgba


def decode_text(decode: Callable[[Sequence[int]], str] | None, ids: Sequence[int]) -> str:
    if decode is not None:
        try:
            return decode(list(ids))
        except Exception:  # a tooltip must never take the panel down
            pass
    return " ".join(map(str, ids))


# ---------------------------------------------------------------- the widget
class KVGrid(QWidget):
    """The block grid. `set_snapshot` only stores; the arrays are rebuilt on the next paint."""

    blockClicked = Signal(int)
    viewChanged = Signal()  # zoom or size changed: the mode or range may differ

    def __init__(self, owners: OwnerColors | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvGrid")
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(120, 80)
        self.owners = owners or OwnerColors()
        self.decode: Callable[[Sequence[int]], str] | None = None
        self.clock: Callable[[], float] = time.monotonic  # tests may step time by hand
        self.snap: KVSnapshot | None = None
        self._layers: BlockLayers | None = None
        self._theme = GridTheme.from_palette(self.palette())
        self._highlight = np.zeros(0, bool)
        self._flash_until = np.zeros(0, np.float64)
        self._flash_rgb = np.zeros((0, 3), np.uint8)
        self._last_seq = -1
        self._range: tuple[int, int] | None = None  # zoomed (start, count), None: all
        self._image: QImage | None = None
        self._buffer: np.ndarray | None = None
        self._geo: GridGeometry | None = None
        self._hover: int | None = None
        self._flash_timer = QTimer(self, interval=33, timeout=self._tick_flash)

    # ------------------------------------------------------------ inputs
    def set_snapshot(self, snap: KVSnapshot) -> None:
        if self.snap is None or snap.num_blocks != self.snap.num_blocks:
            self._resize_arrays(snap.num_blocks)
            self._last_seq = max((e.seq for e in snap.events), default=-1)
        else:
            self._take_flashes(snap)
        self.snap = snap
        self._layers = None
        self._invalidate()

    def set_decoder(self, decode: Callable[[Sequence[int]], str] | None) -> None:
        self.decode = decode

    def set_highlight(self, block_ids: Iterable[int]) -> None:
        self._highlight[:] = False
        ids = np.fromiter(block_ids, np.int64)
        self._highlight[ids[(ids >= 0) & (ids < len(self._highlight))]] = True
        self._invalidate()

    def highlighted(self) -> set[int]:
        return set(np.flatnonzero(self._highlight).tolist())

    def refresh_owners(self) -> None:
        """Colours come from the resolver; call when an owner's colour changes."""
        self.owners.forget()
        self._layers = None
        self._invalidate()

    def _resize_arrays(self, n: int) -> None:
        self._highlight = np.zeros(n, bool)
        self._flash_until = np.zeros(n, np.float64)
        self._flash_rgb = np.zeros((n, 3), np.uint8)
        self._range = None

    def _take_flashes(self, snap: KVSnapshot) -> None:
        """Flash the blocks evicted or preempted since the previous snapshot (by seq)."""
        now = self.clock()
        if snap.events and snap.events[-1].seq < self._last_seq:
            self._last_seq = -1  # a new engine counts from 0 again
        for event in reversed(snap.events):
            if event.seq <= self._last_seq:
                break
            kind = FLASH_KINDS.get(event.kind)
            ids = [b for b in event.block_ids if 0 <= b < snap.num_blocks]
            if kind and ids:
                self._flash_until[ids] = now + FLASH_S
                self._flash_rgb[ids] = EVICT_FLASH if kind == 1 else PREEMPT_FLASH
        self._last_seq = max(self._last_seq, max((e.seq for e in snap.events), default=-1))
        if (self._flash_until > now).any() and not self._flash_timer.isActive():
            self._flash_timer.start()

    def _tick_flash(self) -> None:
        if not (self._flash_until > self.clock()).any():
            self._flash_timer.stop()
        self._invalidate()

    def _invalidate(self) -> None:
        self._image = None
        self.update()

    # ------------------------------------------------------------ queries (also for tests)
    def cell_count(self) -> int:
        return 0 if self.snap is None else self.snap.num_blocks

    @property
    def mode(self) -> str:
        return self.geometry_now().mode

    def layers(self) -> BlockLayers | None:
        if self._layers is None and self.snap is not None:
            self._layers = block_layers(self.snap, self.owners, self._theme)
        return self._layers

    def visible_range(self) -> tuple[int, int]:
        return self._range or (0, self.cell_count())

    def geometry_now(self) -> GridGeometry:
        start, count = self.visible_range()
        return choose_geometry(self.width(), self.height(), start, count)

    def cell_color(self, block_id: int) -> QColor:
        layers = self.layers()
        if layers is None:
            return QColor()
        return QColor(*layers.base[block_id].tolist())

    def block_at(self, pos: QPoint) -> int | None:
        geo = self.geometry_now()
        if self.snap is None or pos.x() < 0 or pos.y() < 0:
            return None
        col, row = pos.x() // geo.cell, pos.y() // geo.height_px
        index = row * geo.cols + col
        if col >= geo.cols or index * geo.per_cell >= geo.count:
            return None
        return geo.start + index * geo.per_cell

    def cell_rect(self, block_id: int) -> QRect | None:
        """Where the block (or, in the heat map, its pixel) is drawn."""
        geo = self.geometry_now()
        index = (block_id - geo.start) // geo.per_cell
        if not 0 <= block_id - geo.start < geo.count:
            return None
        row, col = divmod(index, geo.cols)
        h = geo.height_px
        return QRect(col * geo.cell, row * h, geo.cell - geo.gap, h - geo.gap)

    def render_array(self) -> np.ndarray:
        """The RGBA image the grid paints now (built if out of date)."""
        self._ensure_image()
        return self._buffer

    # ------------------------------------------------------------ zoom
    def zoom_in(self, focus: int | None = None) -> None:
        start, count = self.visible_range()
        new = max(count // 2, min(MIN_ZOOM_BLOCKS, self.cell_count()))
        self._zoom_to(start, count, new, focus)

    def zoom_out(self, focus: int | None = None) -> None:
        start, count = self.visible_range()
        self._zoom_to(start, count, min(count * 2, self.cell_count()), focus)

    def pan(self, blocks: int) -> None:
        """Move a zoomed view along the cache (Shift + wheel)."""
        if self._range is None:
            return
        start, count = self._range
        start = min(max(start + blocks, 0), self.cell_count() - count)
        self._range = (start, count)
        self._invalidate()
        self.viewChanged.emit()

    def reset_zoom(self) -> None:
        self._range = None
        self._invalidate()
        self.viewChanged.emit()

    def _zoom_to(self, start: int, count: int, new: int, focus: int | None) -> None:
        n = self.cell_count()
        if n == 0 or new == count:
            return
        focus = start + count // 2 if focus is None else focus
        new_start = int(focus - (focus - start) * new / count)  # focus stays put
        new_start = min(max(new_start, 0), n - new)
        self._range = None if new >= n else (new_start, new)
        self._invalidate()
        self.viewChanged.emit()

    # ------------------------------------------------------------ painting
    def _ensure_image(self) -> None:
        geo = self.geometry_now()
        if self._image is not None and geo == self._geo:
            return
        layers = self.layers()
        if layers is None:
            self._image, self._buffer, self._geo = None, np.zeros((0, 0, 4), np.uint8), geo
            return
        weight = np.clip((self._flash_until - self.clock()) / FLASH_S, 0.0, 1.0)
        render = render_cells if geo.mode == "cells" else render_heatmap
        marks = Marks(self._highlight, weight.astype(np.float32), self._flash_rgb)
        rgb = render(geo, layers, marks, self._theme)
        self._image, self._buffer = to_qimage(rgb)
        self._geo = geo

    def paintEvent(self, event: QPaintEvent) -> None:
        self._ensure_image()
        if self._image is None:
            return
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(*self._theme.background))  # the canvas
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        geo = self._geo
        painter.drawImage(QRect(QPoint(0, 0), geo.size()), self._image)
        if geo.mode == "cells" and geo.cell >= NUMBER_CELL:
            self._paint_ref_counts(painter, geo)
        self._paint_hover(painter)
        painter.end()

    def _paint_ref_counts(self, painter: QPainter, geo: GridGeometry) -> None:
        """The small ref-count number in each shared cell (only visible cells, so few)."""
        snap, layers = self.snap, self.layers()
        sl = slice(geo.start, geo.start + geo.count)
        shown = np.flatnonzero(layers.shared[sl]) + geo.start
        font = QFont(self.font())
        font.setPixelSize(max(geo.cell // 2, 7))
        font.setBold(True)
        painter.setFont(font)
        flags = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom
        for block in shown.tolist():
            rect = self.cell_rect(block).adjusted(1, 1, -2, -1)
            text = str(int(snap.ref_counts[block]))
            painter.setPen(QColor(0, 0, 0, 150))
            painter.drawText(rect.translated(1, 1), flags, text)
            painter.setPen(QColor(255, 255, 255))
            painter.drawText(rect, flags, text)

    def _paint_hover(self, painter: QPainter) -> None:
        rect = None if self._hover is None else self.cell_rect(self._hover)
        if rect is None:
            return
        painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Text), 1))
        painter.drawRect(rect.adjusted(-1, -1, 0, 0))

    def sizeHint(self) -> QSize:
        return QSize(420, 260)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.viewChanged.emit()

    def describe_view(self) -> str:
        """One line for the zoom bar: which blocks, and at what scale."""
        n = self.cell_count()
        if n == 0:
            return "no cache yet"
        geo = self.geometry_now()
        shown = (f"blocks {geo.start:,}–{geo.start + geo.count - 1:,} of {n:,}"
                 if self._range else f"{n:,} blocks")  # fmt: skip
        if geo.mode == "heatmap":
            return f"{shown} · heat map, 1 pixel = {geo.per_cell:,} blocks"
        return f"{shown} · {geo.cell} px cells"

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._theme = GridTheme.from_palette(self.palette())
            self._layers = None
            self._invalidate()
        super().changeEvent(event)

    # ------------------------------------------------------------ mouse
    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        block = self.block_at(event.position().toPoint())
        if block != self._hover:
            self._hover = block
            self.update()

    def leaveEvent(self, event: QEvent) -> None:
        self._hover = None
        self.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        block = self.block_at(event.position().toPoint())
        if event.button() == Qt.MouseButton.LeftButton and block is not None:
            if self.mode == "heatmap":
                self.zoom_in(block)  # a heat pixel is too coarse to click: go closer
            else:
                self.blockClicked.emit(block)

    def wheelEvent(self, event: QWheelEvent) -> None:
        focus = self.block_at(event.position().toPoint())
        delta = event.angleDelta()
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier or delta.x():
            quarter = self.visible_range()[1] // 4
            self.pan(-quarter if (delta.y() or delta.x()) > 0 else quarter)
        elif event.angleDelta().y() > 0:
            self.zoom_in(focus)
        elif event.angleDelta().y() < 0:
            self.zoom_out(focus)
        event.accept()

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            block = self.block_at(event.pos())
            if block is None:
                QToolTip.hideText()
            else:
                text = self.tooltip_for(block) if self.mode == "cells" else self.bin_tooltip(block)
                QToolTip.showText(event.globalPos(), text, self, self.cell_rect(block))
            return True
        return super().event(event)

    # ------------------------------------------------------------ tooltips
    def tooltip_for(self, block_id: int) -> str:
        """Everything about one block, built only when it is hovered."""
        snap = self.snap
        if snap is None or not 0 <= block_id < snap.num_blocks:
            return ""
        state = snap.state(block_id)
        owners = snap.owners(block_id)
        lines = [f"<b>Block {block_id}</b> · {STATE_NAMES[state]}"
                 + (" · shared" if len(owners) > 1 else ""),
                 f"ref count {int(snap.ref_counts[block_id])} · "
                 f"fill {int(snap.num_filled[block_id])} / {snap.block_size}"]  # fmt: skip
        if owners:
            names = [f"{html.escape(self.owners.label(snap.parent_of(r)))} ({html.escape(r)})"
                     for r in owners[:6]]  # fmt: skip
            more = f" +{len(owners) - 6} more" if len(owners) > 6 else ""
            lines.append("owners: " + ", ".join(names) + more)
        if snap.short_hash(block_id):
            lines.append(f"hash {snap.short_hash(block_id)}")
        tokens = snap.block_tokens(block_id)
        if tokens:
            text = decode_text(self.decode, tokens)
            shown = html.escape(text).replace("\n", "⏎")
            lines.append(f"tokens: <span style='white-space:pre'>“{shown}”</span>")
        return "<qt>" + "<br>".join(lines) + "</qt>"

    def bin_tooltip(self, first_block: int) -> str:
        """A heat-map pixel: its block range and how it is used."""
        geo, snap = self.geometry_now(), self.snap
        last = min(first_block + geo.per_cell, geo.start + geo.count) - 1
        states = snap.states[first_block : last + 1]
        counts = [int((states == s).sum()) for s in BlockState]
        return (f"<qt><b>Blocks {first_block:,}–{last:,}</b> ({geo.per_cell} per pixel)<br>"
                f"in use {counts[1]} · cached {counts[2]} · free {counts[0]}<br>"
                "<i>wheel or + to zoom into cells</i></qt>")  # fmt: skip


STATE_NAMES = {BlockState.FREE: "free", BlockState.IN_USE: "in use",
               BlockState.CACHED_FREE: "cached free (reusable prefix)"}  # fmt: skip


# ---------------------------------------------------------------- the legend
class KVLegend(QWidget):
    """One line of swatches that explains the encoding, in the grid's own colours."""

    ITEMS = ("in use", "empty slots", "shared", "cached free", "free", "evicted", "preempted",
             "highlighted")  # fmt: skip

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("kvLegend")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(420, self._rows(420) * self._line())

    def minimumSizeHint(self) -> QSize:
        return QSize(120, self._rows(max(self.width(), 120)) * self._line())

    def _line(self) -> int:
        return self.fontMetrics().height() + 6

    def _widths(self) -> list[int]:
        fm = self.fontMetrics()
        return [fm.horizontalAdvance(t) + 26 for t in self.ITEMS]

    def _rows(self, width: int) -> int:
        rows, x = 1, 0
        for w in self._widths():
            if x + w > width and x:
                rows, x = rows + 1, 0
            x += w
        return rows

    def resizeEvent(self, event) -> None:
        self.setFixedHeight(self._rows(self.width()) * self._line())
        super().resizeEvent(event)

    def paintEvent(self, event: QPaintEvent) -> None:
        theme = GridTheme.from_palette(self.palette())
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        x, y, line = 0, 0, self._line()
        for text, w in zip(self.ITEMS, self._widths()):
            if x + w > self.width() and x:
                x, y = 0, y + line
            self._swatch(painter, QRect(x, y + (line - 12) // 2, 12, 12), text, theme)
            painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
            painter.drawText(QRect(x + 17, y, w - 17, line), Qt.AlignmentFlag.AlignVCenter, text)
            x += w
        painter.end()

    @staticmethod
    def _swatch(painter: QPainter, r: QRect, item: str, theme: GridTheme) -> None:
        owner = QColor(FALLBACK_COLORS[0])
        fills = {"in use": owner, "shared": owner, "cached free": QColor(*theme.cached),
                 "free": QColor(*theme.free), "evicted": QColor(*EVICT_FLASH),
                 "preempted": QColor(*PREEMPT_FLASH), "highlighted": owner,
                 "empty slots": owner}  # fmt: skip
        painter.fillRect(r, fills[item])
        if item == "empty slots":
            light = [int(c * 0.35 + f * 0.65) for c, f in zip(_rgb(owner), theme.free)]
            painter.fillRect(QRect(r.x(), r.y(), r.width(), r.height() // 2), QColor(*light))
        elif item == "cached free":
            painter.save()
            painter.setClipRect(r)
            painter.setPen(QColor(*theme.hatch))
            for d in range(-12, 12, 4):
                painter.drawLine(r.x() + d, r.bottom(), r.x() + d + 12, r.bottom() - 12)
            painter.restore()
        elif item in ("shared", "highlighted"):
            color = QColor(*(SHARED_OUTLINE if item == "shared" else HIGHLIGHT))
            painter.setPen(QPen(color, 1 if item == "shared" else 2))
            painter.drawRect(r.adjusted(1, 1, -1, -1) if item == "highlighted" else
                             r.adjusted(0, 0, -1, -1))  # fmt: skip
