"""`pagedesk --install-desktop`: a freedesktop .desktop entry and a hicolor icon under
$XDG_DATA_HOME (~/.local/share), whose Exec starts this very installation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.paths import DESKTOP_ID
from app.resources import DESKTOP_TEMPLATE, ICON_PNG, ICON_SVG

RESERVED = set(' \t\n"\'\\><~|&;$*?#()`')  # characters that need quoting in Exec


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def quote_exec_arg(arg: str) -> str:
    """Quote one Exec argument as the Desktop Entry spec says (and escape % as %%)."""
    arg = arg.replace("%", "%%")
    if not any(c in RESERVED for c in arg):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def launcher() -> list[str]:
    """The command that starts this installation: the `pagedesk` script beside this Python
    (a venv's bin/), else this Python with -m app. The venv path is kept as is (not
    resolved), so the venv's packages are the ones that run."""
    python = Path(sys.executable)
    script = python.with_name("pagedesk")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "app"]


def desktop_entry_text(command: list[str]) -> str:
    exec_line = " ".join(quote_exec_arg(a) for a in command)
    try_exec = command[0].replace("%", "%%")
    template = DESKTOP_TEMPLATE.read_text(encoding="utf-8")
    return template.replace("@EXEC@", exec_line).replace("@TRYEXEC@", try_exec)


def install_desktop_entry(target: Path | None = None) -> Path:
    """Write the entry and the icons; return the .desktop file's path."""
    root = target or data_home()
    desktop = root / "applications" / f"{DESKTOP_ID}.desktop"
    desktop.parent.mkdir(parents=True, exist_ok=True)
    desktop.write_text(desktop_entry_text(launcher()), encoding="utf-8")
    icons = root / "icons" / "hicolor"
    for source, size in ((ICON_SVG, "scalable"), (ICON_PNG, "256x256")):
        dest = icons / size / "apps" / f"{DESKTOP_ID}{source.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    _refresh_caches(root)
    return desktop


def _refresh_caches(root: Path) -> None:
    """Tell the desktop about the new entry, where the usual tools exist (optional)."""
    for tool, arg in (("update-desktop-database", root / "applications"),
                      ("gtk-update-icon-cache", root / "icons" / "hicolor")):  # fmt: skip
        if shutil.which(tool):
            subprocess.run([tool, "-q", str(arg)], check=False, capture_output=True)
