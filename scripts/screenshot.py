"""Render pagedesk's main window with two panes mid-conversation to a PNG.

Run by scripts/screenshot.sh under Xvfb with Qt's real xcb platform; the picture is what
the X server shows (QScreen.grabWindow), not an offscreen rendering.

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot.py docs/screenshot.png
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIRST = ("What is a KV cache in a transformer?",
         "Write a short Python script that counts the words in a text file.")
SECOND_SYSTEM = "You answer in three short bullet points."
SECOND = "Why batch requests continuously instead of one at a time?"
LEFT_CHARS, RIGHT_CHARS = 330, 300  # take the picture once the replies have this much text


async def converse(window) -> None:
    ctrl = window.controller
    await ctrl.service.wait_ready()
    left = next(iter(ctrl.chats.values()))
    right = ctrl.new_session()
    sampling = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 400, "seed": 1}
    left.store.update_settings(left.session_id, "", sampling)
    right.store.update_settings(right.session_id, SECOND_SYSTEM, sampling)
    for chat in (left, right):
        chat.load()
    left.store.update_settings(left.session_id, "", {**sampling, "max_tokens": 60})
    await left.send(FIRST[0])
    left.store.update_settings(left.session_id, "", sampling)
    left.send(FIRST[1])
    right.send(SECOND)
    deadline = time.monotonic() + 240
    while len(left.reply_text) < LEFT_CHARS or len(right.reply_text) < RIGHT_CHARS:
        if time.monotonic() > deadline or not (left.busy and right.busy):
            break
        await asyncio.sleep(0.05)
    for chat in (left, right):
        chat.pane.transcript.flush()
    await asyncio.sleep(0.4)  # let the X server show the last paint


def grab(window):
    """What the X server shows of the window (falls back to the widget's own rendering)."""
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    picture = window.screen().grabWindow(window.winId())
    if picture.isNull() or picture.toImage().pixelColor(5, 5).alpha() == 0:
        picture = window.grab()
    return picture


@contextlib.contextmanager
def shown_window(width: int, height: int):
    """The app on a fresh data dir, its window shown on the bundled model: (loop, window)."""
    import qasync
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from app.paths import DESKTOP_ID, set_application_identity
    from app.resources import app_icon
    from app.window import create_window
    from ui.theme import apply_theme

    set_application_identity()
    QGuiApplication.setDesktopFileName(DESKTOP_ID)
    app = QApplication(sys.argv[:1])
    print(f"Qt platform: {app.platformName()}")
    app.setWindowIcon(app_icon())
    apply_theme(app, "light")
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with loop, tempfile.TemporaryDirectory() as data_dir:
        window = create_window(data_dir)
        window.resize(width, height)
        window.show()
        yield loop, window
        window.controller.shutdown()


def main(out: Path) -> None:
    with shown_window(1480, 900) as (loop, window):
        loop.run_until_complete(asyncio.wait_for(converse(window), 600))
        out.parent.mkdir(parents=True, exist_ok=True)
        grab(window).save(str(out))
    print(f"saved {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "screenshot.png"))
