"""Run the desktop app: QApplication + qasync loop, the window at once, the model behind it."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from app.paths import DESKTOP_ID, default_data_dir, set_application_identity

log = logging.getLogger(__name__)


def run_gui(model: str | None = None, data_dir: str | Path | None = None) -> int:
    from app.platform_check import display_problem

    problem = display_problem()
    if problem:
        print(f"pagedesk: {problem}", file=sys.stderr)
        return 2
    import qasync
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from app.crash_handler import CrashReporter
    from app.logging_setup import setup_logging
    from app.resources import app_icon
    from app.settings import load_settings, open_qsettings
    from app.window import create_window
    from ui.theme import apply_theme

    set_application_identity()
    QGuiApplication.setDesktopFileName(DESKTOP_ID)
    app = QApplication.instance() or QApplication(sys.argv)
    app.setWindowIcon(app_icon())
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    log_file = setup_logging(data_dir)
    log.info("pagedesk starting; data dir %s", data_dir)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    reporter = CrashReporter(log_file)
    reporter.install(loop)
    apply_theme(app, load_settings(open_qsettings(data_dir)).theme)
    window = create_window(data_dir, model)
    window.show()
    log.info("window shown")
    quitting = asyncio.Event()
    app.aboutToQuit.connect(quitting.set)
    with loop:
        loop.run_until_complete(quitting.wait())
    window.controller.shutdown()
    return 0
