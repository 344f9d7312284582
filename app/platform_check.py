"""Before Qt starts on Linux: is there a display, and are the libraries Qt's xcb platform
needs installed? Qt itself aborts the whole process, and names the wrong library
(xcb-cursor0) when libxcb-icccm4 or libxcb-keysyms1 is missing."""

from __future__ import annotations

import ctypes.util
import os
import sys

XCB_LIBRARIES = {  # soname stem -> Debian/Ubuntu package
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-cursor": "libxcb-cursor0",
    "xcb-image": "libxcb-image0",
    "xcb-render-util": "libxcb-render-util0",
    "xcb-xkb": "libxcb-xkb1",
    "xkbcommon-x11": "libxkbcommon-x11-0",
}


def display_problem(env: dict[str, str] | None = None) -> str | None:
    """What stops the window from opening here, in words, or None."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return None
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None  # offscreen, wayland, vnc...: Qt's own business
    if not platform and env.get("WAYLAND_DISPLAY"):
        return None
    if not env.get("DISPLAY"):
        return ("no display (DISPLAY is not set): run it in a desktop session, "
                "or headless with `pagedesk demo` (terminal) or `pagedesk serve` (HTTP API).")
    missing = [pkg for lib, pkg in XCB_LIBRARIES.items() if ctypes.util.find_library(lib) is None]
    if missing:
        return ("Qt's X11 (xcb) platform needs libraries that are not installed: "
                f"sudo apt-get install {' '.join(missing)}")
    return None
