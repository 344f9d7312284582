"""Cells of the batch timeline as one RGBA image, built with a few numpy operations.

Each cell kind is a small pattern (row height × cell width) of colour *slots*; each row has
its own colour per slot (its background, the owner's colour, a tint of it, ...). The image
is the patterns gathered per cell and the slots looked up per row, so a window of 200
steps × 50 requests costs a couple of milliseconds, not 10,000 widgets.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PySide6.QtGui import QColor, QImage

from ui.timeline_model import CODE, FINISHED_AFTER_CHUNK, FINISHED_ALONE

BG, TINT, MAIN, DARK, RED, CAP = range(6)  # colour slots
NUM_CODES = FINISHED_AFTER_CHUNK + 1


@lru_cache(maxsize=16)
def patterns(cell_w: int, row_h: int) -> np.ndarray:
    """Slot index per pixel, shape (NUM_CODES, row_h, cell_w), one pattern per cell code."""
    pat = np.full((NUM_CODES, row_h, cell_w), BG, dtype=np.uint8)
    top, bottom = 2, row_h - 2  # rows apart by a 4 px channel
    right = cell_w - 1 if cell_w >= 4 else cell_w  # a 1 px gap shows where steps change
    mid = row_h // 2
    thin = slice(mid - 2, mid + 2)
    pat[CODE["waiting"], top:bottom, :] = TINT  # no gap: waiting reads as one band
    pat[CODE["prefill"], top:bottom, :right] = MAIN
    pat[CODE["chunked_prefill"], top:bottom, :right] = MAIN
    pat[CODE["chunked_prefill"], bottom - 3 : bottom, :right] = DARK  # underlined: part of a whole
    y, x = np.mgrid[0:row_h, 0:cell_w]
    stripes = np.where(((x + y) // 2) % 2 == 0, MAIN, DARK).astype(np.uint8)
    pat[CODE["recompute"], top:bottom, :right] = stripes[top:bottom, :right]  # hatched: redone
    pat[CODE["decode"], thin, :right] = MAIN
    pat[CODE["preempted"], top:bottom, :right] = RED
    cap = slice(max(0, right - 2), right)
    pat[CODE["finished"], thin, :right] = MAIN
    pat[FINISHED_AFTER_CHUNK, top:bottom, :right] = MAIN
    for code in (CODE["finished"], FINISHED_AFTER_CHUNK, FINISHED_ALONE):
        pat[code, 1 : row_h - 1, cap] = CAP
    pat.setflags(write=False)
    return pat


def rgba(color: QColor) -> tuple[int, int, int, int]:
    return color.red(), color.green(), color.blue(), 255


def mix(a: QColor, b: QColor, share_a: float) -> QColor:
    """share_a of a over b, channel by channel."""
    def channel(x: int, y: int) -> int:
        return round(x * share_a + y * (1 - share_a))

    return QColor(channel(a.red(), b.red()), channel(a.green(), b.green()),
                  channel(a.blue(), b.blue()))  # fmt: skip


def row_slots(color: QColor, bg: QColor, red: QColor, cap: QColor) -> np.ndarray:
    """The six slot colours of one row, shape (6, 4)."""
    slots = [bg, mix(color, bg, 0.28), color, color.darker(140), red, cap]
    return np.array([rgba(c) for c in slots], dtype=np.uint8)


def render(codes: np.ndarray, slots: np.ndarray, cell_w: int, row_h: int) -> np.ndarray:
    """codes (R, C) and per-row slots (R, 6, 4) -> an RGBA image (R * row_h, C * cell_w, 4)."""
    rows, cols = codes.shape
    # One 4-byte word per slot colour, and each code's cell coloured once per row: the
    # per-cell gather then copies whole cells. Gathering 4 channels per pixel instead
    # cost ~10 ms a paint while four chats streamed (the UI thread's largest item).
    words = np.ascontiguousarray(slots).view(np.uint32)[..., 0]  # (R, 6)
    tiles = words[:, patterns(cell_w, row_h)]  # (R, codes, H, W)
    cells = tiles[np.arange(rows)[:, None], codes]  # (R, C, H, W)
    image = np.ascontiguousarray(cells.transpose(0, 2, 1, 3))  # (R, H, C, W)
    return image.reshape(rows * row_h, cols * cell_w).view(np.uint8).reshape(
        rows * row_h, cols * cell_w, 4
    )


def to_qimage(pixels: np.ndarray) -> QImage:
    """Wrap without copying; the caller keeps `pixels` alive as long as the image."""
    height, width, _ = pixels.shape
    return QImage(pixels.data, width, height, width * 4, QImage.Format.Format_RGBA8888)
