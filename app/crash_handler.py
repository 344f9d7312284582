"""Unexpected exceptions (in slots, asyncio tasks or threads) are logged and shown in a
dialog with the traceback and the log path; the app keeps running."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal

from ui.crash_dialog import CrashDialog

log = logging.getLogger("pagedesk.crash")


class CrashReporter(QObject):
    reported = Signal(str)  # a traceback, from any thread; shown in the UI thread

    def __init__(self, log_path: Path, parent: QObject | None = None):
        super().__init__(parent)
        self.setObjectName("crashReporter")
        self.log_path = Path(log_path)
        self.dialogs: list[CrashDialog] = []
        self.reported.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        sys.excepthook = self.excepthook
        threading.excepthook = lambda a: self.report(a.exc_type, a.exc_value, a.exc_traceback)
        if loop is not None:
            loop.set_exception_handler(self.loop_exception)

    def excepthook(self, exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        self.report(exc_type, exc, tb)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if exc is None:
            log.error("asyncio: %s", context.get("message"))
            return
        self.report(type(exc), exc, exc.__traceback__)

    def report(self, exc_type, exc, tb) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("unexpected error:\n%s", text)
        self.reported.emit(text)

    def _show(self, text: str) -> None:
        dialog = CrashDialog(text, str(self.log_path))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(lambda: self._forget(dialog))
        self.dialogs.append(dialog)
        dialog.show()  # not exec(): no nested event loop

    def _forget(self, dialog: CrashDialog) -> None:
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)
