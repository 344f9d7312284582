"""`pagedesk --install-desktop`: a valid .desktop entry and a hicolor icon under
$XDG_DATA_HOME, whose Exec runs this installation; the app's desktopFileName matches."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.desktop_entry import desktop_entry_text, install_desktop_entry, quote_exec_arg
from app.paths import DESKTOP_ID

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def desktop_file_validate() -> str:
    """desktop-file-validate (Debian's desktop-file-utils), installed by the project script."""
    if shutil.which("desktop-file-validate") is None:
        result = subprocess.run(["bash", str(REPO / "scripts" / "system_packages.sh"),
                                 "desktop-file-utils"], capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"desktop-file-utils could not be installed: {result.stderr[-300:]}")
    return shutil.which("desktop-file-validate")


def test_install_desktop_writes_a_valid_entry_and_icons(tmp_path, monkeypatch,
                                                        desktop_file_validate):  # fmt: skip
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    result = subprocess.run([sys.executable, "-m", "app", "--install-desktop"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    entry = tmp_path / "share" / "applications" / f"{DESKTOP_ID}.desktop"
    assert f"installed {entry}" in result.stdout
    assert (tmp_path / "share/icons/hicolor/scalable/apps/pagedesk.svg").is_file()
    assert (tmp_path / "share/icons/hicolor/256x256/apps/pagedesk.png").is_file()
    text = entry.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    launcher = Path(sys.executable).with_name("pagedesk")
    expected = str(launcher) if launcher.exists() else f"{sys.executable} -m app"
    assert exec_line == f"Exec={expected}"
    assert "Icon=pagedesk" in text and "Type=Application" in text
    check = subprocess.run([desktop_file_validate, str(entry)], capture_output=True, text=True)
    assert check.returncode == 0 and "error" not in check.stdout.lower(), check.stdout


def test_exec_quoting_and_a_path_with_spaces(tmp_path, desktop_file_validate):
    assert quote_exec_arg("/opt/pagedesk/bin/pagedesk") == "/opt/pagedesk/bin/pagedesk"
    assert quote_exec_arg("/my apps/py$x") == '"/my apps/py\\$x"'
    assert quote_exec_arg("50%") == "50%%"
    entry = tmp_path / "pagedesk.desktop"
    entry.write_text(desktop_entry_text(["/home/a user/venv/bin/python", "-m", "app"]))
    assert 'Exec="/home/a user/venv/bin/python" -m app' in entry.read_text()
    check = subprocess.run([desktop_file_validate, str(entry)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_install_returns_the_entry_path(tmp_path):
    path = install_desktop_entry(tmp_path)
    assert path == tmp_path / "applications" / "pagedesk.desktop" and path.is_file()


def test_the_app_names_the_same_desktop_file(qapp):
    from PySide6.QtGui import QGuiApplication

    QGuiApplication.setDesktopFileName(DESKTOP_ID)
    assert QGuiApplication.desktopFileName() == "pagedesk"
    assert (REPO / "resources" / "pagedesk.desktop.in").read_text().count("Icon=pagedesk") == 1


def test_a_missing_display_is_explained_instead_of_a_qt_abort(monkeypatch):
    import ctypes.util

    from app.platform_check import display_problem

    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert "no display" in display_problem({})
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None if "icccm" in name else name)
    assert display_problem({"DISPLAY": ":0"}).endswith("apt-get install libxcb-icccm4")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: name)
    assert display_problem({"DISPLAY": ":0"}) is None
