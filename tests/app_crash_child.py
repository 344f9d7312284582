"""Run by test_app_crash.py as a subprocess: the real app (app.gui.run_gui, offscreen) on a
data dir; it finishes one exchange, then streams a long reply and reports the text it has
shown, as JSON lines on stdout, until the test SIGKILLs it (or, with `close`, until it
closes the window itself after a second of streaming, as a person would).

    python tests/app_crash_child.py DATA_DIR MODEL_DIR [close]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def report(**event) -> None:
    print(json.dumps({"t": time.monotonic(), **event}), flush=True)


async def drive(window, close: bool) -> None:
    controller = window.controller
    await controller.service.wait_ready()
    chat = next(iter(controller.chats.values()))
    settings = {"temperature": 0.0, "ignore_eos": True, "max_tokens": 40}
    chat.store.update_settings(chat.session_id, "", settings)
    await chat.send("the first question")
    report(event="complete", messages=[m.content for m in chat.store.messages(chat.session_id)])
    chat.store.update_settings(chat.session_id, "", {**settings, "max_tokens": 3000})
    chat.send("the second question")
    start = time.monotonic()
    while True:
        await asyncio.sleep(0.05)
        report(event="partial", text=chat.reply_text)
        if close and time.monotonic() - start > 1.0:
            report(event="closing", text=chat.reply_text)
            window.close()
            return


def main() -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.gui import run_gui

    data_dir, model = sys.argv[1], sys.argv[2]
    close = sys.argv[3:] == ["close"]
    app = QApplication(sys.argv[:1])

    def start() -> None:
        window = next(w for w in app.topLevelWidgets() if w.objectName() == "mainWindow")
        asyncio.ensure_future(drive(window, close))

    QTimer.singleShot(0, start)
    code = run_gui(model=model, data_dir=data_dir)
    report(event="exited", code=code)


if __name__ == "__main__":
    main()
