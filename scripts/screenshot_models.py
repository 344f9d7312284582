"""Render the model manager to PNGs: a Hub search, a chosen model's files and fit, and a
download in progress.

This machine cannot reach the Hugging Face Hub, so the pictures are taken against the
tests' local fake Hub (tests/fake_hub.py) on 127.0.0.1: real huggingface_hub calls and a
real download of a small random-weight Llama, with a few search-only entries beside it.
Run by scripts/screenshot.sh under Xvfb with Qt's real xcb platform.

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot_models.py docs
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

DEMO_REPO = "pagedesk-demo/Tiny-Llama-Chat"


def start_fake_hub(home: Path):
    """The fake Hub, serving a random tiny Llama; HF_* variables point at it and at `home`
    (set before huggingface_hub is imported: it reads some of them once)."""
    from fake_hub import FakeHub
    from hub_testing import SEARCH_EXTRAS
    from model_factory import make_random_llama

    model = make_random_llama(home / "source", num_layers=4, head_dim=64, num_heads=8,
                              num_kv_heads=2, max_position_embeddings=4096)  # fmt: skip
    hub = FakeHub().start()
    hub.add_repo(DEMO_REPO, model, downloads=4_200, likes=64,
                 tags=["llama", "safetensors", "text-generation", "license:apache-2.0"])
    hub.search_extras.extend(SEARCH_EXTRAS)
    hub.rate_bps = 1_500_000  # slow enough to catch the download half-way
    os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(home / "hf"),
                      HF_HUB_CACHE=str(home / "hf" / "hub"))  # fmt: skip
    os.environ.pop("HF_HUB_OFFLINE", None)
    return hub


async def browse_and_download(window, hub) -> None:
    from PySide6.QtCore import QObject

    ctrl = window.controller
    await ctrl.service.wait_ready()
    manager = ctrl.show_model_manager()
    manager.resize(1180, 720)
    controller = manager.findChild(QObject, "modelManagerController")
    manager.tabs.setCurrentIndex(1)
    controller.search("", "downloads", "any")
    await _until(lambda: len(controller.listed) >= 3)
    controller.choose(DEMO_REPO)
    await asyncio.sleep(1.5)
    grab(manager, Path(sys.argv[1]) / "models-search.png")
    controller.download(DEMO_REPO)
    await _until(lambda: hub.served(DEMO_REPO, "model.safetensors") > 3_000_000, 60)
    manager.tabs.setCurrentIndex(2)
    await asyncio.sleep(1.0)
    grab(manager, Path(sys.argv[1]) / "models-downloads.png")
    hub.rate_bps = None


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def grab(widget, out: Path) -> None:
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()
    picture = widget.screen().grabWindow(widget.winId())
    if picture.isNull():
        picture = widget.grab()
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(str(out))
    print(f"saved {out}")


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        hub = start_fake_hub(Path(home))
        from screenshot import shown_window

        try:
            with shown_window(1480, 900) as (loop, window):
                loop.run_until_complete(asyncio.wait_for(browse_and_download(window, hub), 300))
        finally:
            hub.close()


if __name__ == "__main__":
    main()
