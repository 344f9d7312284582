"""Where pagedesk keeps its files: one data dir (QStandardPaths, or $PAGEDESK_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "pagedesk"
ORGANIZATION = "pagedesk"
DESKTOP_ID = "pagedesk"  # the .desktop file's name and QGuiApplication.desktopFileName
DATA_DIR_ENV = "PAGEDESK_DATA_DIR"


def set_application_identity() -> None:
    """Name the application so QStandardPaths and QSettings pick pagedesk's folders."""
    from PySide6.QtCore import QCoreApplication

    QCoreApplication.setApplicationName(APP_NAME)
    QCoreApplication.setOrganizationName(ORGANIZATION)


def default_data_dir() -> Path:
    """$PAGEDESK_DATA_DIR, else QStandardPaths' AppDataLocation (~/.local/share/pagedesk/...)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    from PySide6.QtCore import QStandardPaths

    set_application_identity()
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(location)


def database_path(data_dir: Path) -> Path:
    return Path(data_dir) / "sessions.sqlite3"


def settings_path(data_dir: Path) -> Path:
    return Path(data_dir) / "settings.ini"


def log_path(data_dir: Path) -> Path:
    return Path(data_dir) / "logs" / "pagedesk.log"
