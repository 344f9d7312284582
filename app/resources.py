"""Files in the repository's resources/ folder (icon, .desktop template)."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ICON_SVG = RESOURCES / "pagedesk.svg"
ICON_PNG = RESOURCES / "pagedesk-256.png"
DESKTOP_TEMPLATE = RESOURCES / "pagedesk.desktop.in"


def app_icon():
    """The window / application icon (a QIcon; needs a QGuiApplication)."""
    from PySide6.QtGui import QIcon

    icon = QIcon(str(ICON_SVG))
    icon.addFile(str(ICON_PNG))
    return icon
