"""Crash safety: the app, SIGKILLed mid-stream, leaves a database with every completed
message and the partial reply up to about a second before the kill. And the ordinary end:
closing the window mid-stream keeps the partial reply and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.paths import database_path
from app.store import SessionStore
from app_testing import tiny_model, write_settings  # noqa: F401

CHILD = Path(__file__).with_name("app_crash_child.py")
STREAM_BEFORE_KILL_S = 2.0
LOSS_ALLOWED_S = 1.0


def read_events(proc, events: list) -> None:
    for line in proc.stdout:
        if line.startswith("{"):
            events.append((time.monotonic(), json.loads(line)))


def start_app(data_dir: Path, model: Path, *args: str) -> tuple[subprocess.Popen, list]:
    write_settings(data_dir)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(CHILD.parent.parent)}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(model), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    events: list = []
    threading.Thread(target=read_events, args=(proc, events), daemon=True).start()
    return proc, events


def test_sigkill_mid_stream_loses_at_most_the_last_second(tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    proc, events = start_app(data_dir, tiny_model)
    try:
        deadline = time.monotonic() + 120
        while not streamed_long_enough(events):
            assert proc.poll() is None, "the app exited before the kill"
            assert time.monotonic() < deadline, f"no long stream; events: {events[-3:]}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(10)
    finally:
        proc.kill()
    complete = next(e for _, e in events if e["event"] == "complete")["messages"]
    partials = [(t, e["text"]) for t, e in events if e["event"] == "partial"]
    shown_before = max((text for t, text in partials if t <= killed_at - LOSS_ALLOWED_S), key=len)
    last_shown = partials[-1][1]

    raw = sqlite3.connect(database_path(data_dir))
    statuses = [row[0] for row in raw.execute("SELECT status FROM messages ORDER BY id")]
    raw.close()
    assert statuses == ["complete", "complete", "complete", "streaming"]
    store = SessionStore(database_path(data_dir))  # reopening marks the reply interrupted
    messages = store.messages(store.list_sessions()[0].id)
    store.close()
    assert [m.content for m in messages[:2]] == complete
    assert messages[2].content == "the second question"
    partial = messages[3]
    assert partial.status == "interrupted"
    assert last_shown.startswith(partial.content)
    assert len(partial.content) >= len(shown_before) > 0, (
        f"saved {len(partial.content)} chars; {len(shown_before)} were shown a second before "
        f"the kill and {len(last_shown)} at the kill"
    )


def streamed_long_enough(events: list) -> bool:
    partial_times = [t for t, e in events if e["event"] == "partial" and e["text"]]
    return bool(partial_times) and partial_times[-1] - partial_times[0] >= STREAM_BEFORE_KILL_S


def test_closing_the_window_mid_stream_keeps_the_partial_reply_and_exits(tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    proc, events = start_app(data_dir, tiny_model, "close")
    try:
        assert proc.wait(120) == 0
    finally:
        proc.kill()
    time.sleep(0.1)  # the reader thread takes the last lines
    closing = next(e for _, e in events if e["event"] == "closing")
    assert next(e for _, e in events if e["event"] == "exited")["code"] == 0
    store = SessionStore(database_path(data_dir))
    reply = store.messages(store.list_sessions()[0].id)[-1]
    store.close()
    assert reply.status == "stopped" and reply.content.startswith(closing["text"]) and reply.content
    assert "pagedesk closed" in (data_dir / "logs" / "pagedesk.log").read_text()
