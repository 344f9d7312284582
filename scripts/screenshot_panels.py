"""Render the learner's panels during a three-session run on the bundled model, to PNGs.

Run by scripts/screenshot.sh under Xvfb with Qt's real xcb platform; the pictures are what
the X server shows (QScreen.grabWindow), tooltips included.

The run: the small cache (64 blocks of 16 tokens), two chats with the same system prompt
(the second sent once the first has computed its prompt, so their prompt blocks are
shared), and a third with a prompt of its own.

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot_panels.py docs
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.experiments import SHARED_SYSTEM_PROMPT  # noqa: E402
from screenshot import shown_window  # noqa: E402  (scripts/ is on the path: run as a script)

QUESTIONS = ("What is a page table?", "What does a cache do?")
OTHER_SYSTEM = "You answer in three short bullet points."
OTHER = "Why batch requests continuously instead of one at a time?"
REPLY_TOKENS = 50  # take the pictures while all three still run and A and B share blocks


async def three_sessions(window) -> list:
    ctrl = window.controller
    await ctrl.service.wait_ready()
    await ctrl.learner.set_small_cache(True)
    await ctrl.service.wait_ready()
    sampling = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 300, "seed": 1}
    first = next(iter(ctrl.chats.values()))
    chats = [first, ctrl.new_session(), ctrl.new_session()]
    systems = (SHARED_SYSTEM_PROMPT, SHARED_SYSTEM_PROMPT, OTHER_SYSTEM)
    for chat, system in zip(chats, systems):
        chat.store.update_settings(chat.session_id, system, sampling)
        chat.load()
    chats[0].send(QUESTIONS[0])
    await _until(lambda: chats[0].last_output is not None)
    chats[1].send(QUESTIONS[1])
    await asyncio.sleep(1.0)
    chats[2].send(OTHER)
    await _until(lambda: all(_tokens(c) >= REPLY_TOKENS for c in chats)
                 or not all(c.busy for c in chats), 300)
    ctrl.learner.set_paused(True)  # hold the picture still while it is taken
    ctrl.service.engine.pause(wait=True)
    ctrl.service.engine.request_snapshot()
    await asyncio.sleep(0.6)
    for chat in chats:
        chat.pane.transcript.flush()
    return chats


def _tokens(chat) -> int:
    return len(chat.last_output.outputs[0].token_ids) if chat.last_output else 0


async def _until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def grab(widget, out: Path) -> None:
    """What the X server shows of the widget's area (a tooltip over it too)."""
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)
    top_left = widget.mapToGlobal(QPoint(0, 0))
    screen = widget.screen()
    picture = screen.grabWindow(0, top_left.x(), top_left.y(), widget.width(), widget.height())
    if picture.isNull():
        picture = widget.grab()
    picture.save(str(out))
    print(f"saved {out}")


def hover_shared_block(window) -> None:
    """Show the tooltip of a shared block, as a hover does."""
    from PySide6.QtWidgets import QToolTip

    learner = window.controller.learner
    snap, grid = learner.latest_snapshot, learner.kv_view.grid
    shared = [b for b in range(snap.num_blocks) if snap.ref_counts[b] > 1]
    block = shared[len(shared) // 2] if shared else 0
    rect = grid.cell_rect(block)
    QToolTip.showText(grid.mapToGlobal(rect.center()), grid.tooltip_for(block), grid)


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with shown_window(1900, 1150) as (loop, window):
        loop.run_until_complete(asyncio.wait_for(three_sessions(window), 900))
        grab(window, folder / "panels.png")
        docks = window.docks
        grab(docks["batchTimelineDock"], folder / "panel-timeline.png")
        grab(docks["throughputDock"], folder / "panel-throughput.png")
        hover_shared_block(window)
        grab(docks["kvCacheDock"], folder / "panel-kv-cache.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs"))
