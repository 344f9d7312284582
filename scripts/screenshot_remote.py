"""Render a window with a local and a remote pane side by side, both streaming one prompt
("send to all"), to docs/screenshots/remote-session.png.

The remote is `pagedesk serve` on the bundled model in a subprocess on 127.0.0.1, standing in
for a vLLM deployment (same API, same /metrics names). Run by scripts/screenshot.sh under
Xvfb (`--only remote`) with Qt's real xcb platform:

    DISPLAY=:97 QT_QPA_PLATFORM=xcb python scripts/screenshot_remote.py docs/screenshots/remote-session.png
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.screenshot import grab, shown_window  # noqa: E402

KEY = "screenshot-key"
PROMPT = ("Explain how a paged KV cache works, and why it wastes less memory than one "
          "contiguous buffer per request.")
CHARS = 240  # take the picture once both replies have this much text (both still streaming)


def serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port), "--api-key", KEY,
           "--served-model-name", "SmolLM2-135M-Instruct", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("pagedesk serve did not start within 300 s")


async def converse(window, url: str) -> None:
    ctrl = window.controller
    await ctrl.service.wait_ready()
    local = next(iter(ctrl.chats.values()))
    remotes = ctrl.remotes
    remotes.keys.set(url, KEY)  # as the dialog's Create does
    models = await remotes.endpoint(url).list_models()  # as the dialog's Check does
    remote = remotes.create(url, KEY, models[0].id, models[0].max_model_len or 0)
    sampling = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 300, "min_tokens": 200,
                "seed": 1}
    for chat in (local, remote):
        chat.store.update_settings(chat.session_id, "", sampling)
        chat.load()
    ctrl.broadcast(PROMPT)
    await asyncio.sleep(2.5)  # a metrics poll or two land in the panels while both stream
    deadline = time.monotonic() + 300
    while len(local.reply_text) < CHARS or len(remote.reply_text) < CHARS:
        if time.monotonic() > deadline or not (local.busy and remote.busy):
            break
        await asyncio.sleep(0.05)
    for chat in (local, remote):
        chat.pane.transcript.flush()
    await asyncio.sleep(0.4)  # let the X server show the last paint


def main(out: Path) -> None:
    proc, url = serve()
    try:
        with shown_window(1600, 960) as (loop, window):
            loop.run_until_complete(asyncio.wait_for(converse(window, url), 600))
            out.parent.mkdir(parents=True, exist_ok=True)
            grab(window).save(str(out))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"saved {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else
              REPO / "docs" / "screenshots" / "remote-session.png"))
