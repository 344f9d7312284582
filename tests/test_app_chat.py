"""The window's chats on a real (tiny, random) engine: concurrent streams in one batch,
stop, regenerate, edit-and-resend, send to all, the context gauge, export."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QPlainTextEdit, QPushButton, QTextBrowser

from app_testing import (  # noqa: F401  (fixtures)
    close_app, long_replies, open_app, qloop, run, tiny_model, until,
)
from engine_helpers import aborted_ids
from model_factory import make_random_llama


def type_and_send(pane, text: str) -> None:
    box = pane.findChild(QPlainTextEdit, "chatInput")
    box.setPlainText(text)
    QTest.mouseClick(pane.findChild(QPushButton, "sendButton"), Qt.MouseButton.LeftButton)


def test_two_sessions_stream_at_once_in_one_batch(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    first = next(iter(ctrl.chats.values()))
    second = ctrl.new_session()
    for chat in (first, second):
        long_replies(chat, max_tokens=300)
    assert window.objectName() == "mainWindow"
    panes = window.findChildren(QPlainTextEdit, "chatInput")
    assert len(panes) == 2
    type_and_send(first.pane, "Tell me about paged attention")
    type_and_send(second.pane, "And about continuous batching")
    assert first.busy and second.busy

    async def both_streaming():
        await until(lambda: len(first.reply_text) > 5 and len(second.reply_text) > 5,
                    what="both replies to stream")  # fmt: skip
        return first.busy and second.busy

    assert run(qloop, both_streaming())  # both have text, neither has finished
    run(qloop, asyncio.gather(first.task, second.task))
    engine = ctrl.service.engine.engine
    assert max(s.batch_size for s in engine.stats_history) == 2
    for chat in (first, second):
        reply = chat.store.messages(chat.session_id)[-1]
        assert reply.role == "assistant" and reply.status == "complete"
        assert reply.stats["tokens"] == 300 and reply.stats["tokens_per_second"] > 0
        assert reply.stats["time_to_first_token"] >= 0
        transcript = chat.pane.findChild(QTextBrowser, "chatTranscript")
        assert "300 tokens" in transcript.toPlainText()
    assert "batch" in window.status.activity.text()
    assert "KV cache: 16,384 tokens" == window.status.kv.text()
    close_app(qloop, window)


def test_stop_aborts_frees_blocks_and_keeps_the_partial_reply(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    chat = next(iter(window.controller.chats.values()))
    long_replies(chat, max_tokens=3000)
    type_and_send(chat.pane, "Write a long story")
    run(qloop, until(lambda: len(chat.reply_text) > 20, what="some text"))
    request_id = chat.request_id
    stop = chat.pane.findChild(QPushButton, "stopButton")
    assert stop.isEnabled()
    QTest.mouseClick(stop, Qt.MouseButton.LeftButton)
    run(qloop, until(lambda: not chat.busy, what="the reply to stop"))
    engine = window.controller.service.engine.engine
    run(qloop, until(lambda: engine.kv_manager.usage == 0, 10, "the blocks to be freed"))
    assert not engine.has_unfinished_requests()
    assert request_id in aborted_ids(engine.kv_manager)
    reply = chat.store.messages(chat.session_id)[-1]
    assert reply.status == "stopped" and len(reply.content) > 20
    assert reply.stats["tokens"] < 3000
    assert "stopped" in chat.pane.transcript.toPlainText()
    assert chat.pane.send_button.isEnabled() and not stop.isEnabled()
    close_app(qloop, window)


def test_regenerate_and_edit_and_resend(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    chat = next(iter(window.controller.chats.values()))
    long_replies(chat, max_tokens=8, temperature=1.0)
    run(qloop, chat.send("first question"))
    roles = lambda: [(m.role, m.status) for m in chat.store.messages(chat.session_id)]  # noqa: E731
    assert roles() == [("user", "complete"), ("assistant", "complete")]
    QTest.mouseClick(chat.pane.regenerate_button, Qt.MouseButton.LeftButton)
    run(qloop, chat.task)
    assert roles() == [("user", "complete"), ("assistant", "complete")]
    # Edit the last user message: it comes back into the input box; Enter resends it.
    QTest.mouseClick(chat.pane.edit_button, Qt.MouseButton.LeftButton)
    assert chat.pane.input.toPlainText() == "first question" and chat.pane.editing
    chat.pane.input.setPlainText("an edited question")
    QTest.keyClick(chat.pane.input, Qt.Key.Key_Return)
    run(qloop, chat.task)
    messages = chat.store.messages(chat.session_id)
    assert [m.content for m in messages][0] == "an edited question" and len(messages) == 2
    assert window.controller.sessions.session(chat.session_id).title == "first question"
    close_app(qloop, window)


def test_send_to_all_open_panes_streams_them_in_one_batch(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    chats = [next(iter(ctrl.chats.values())), ctrl.new_session(), ctrl.new_session()]
    for i, chat in enumerate(chats):
        long_replies(chat, max_tokens=120)
        chat.store.update_settings(chat.session_id, f"You are assistant number {i}.",
                                   chat.store.get_session(chat.session_id).sampling)  # fmt: skip
    window.broadcast_input.setText("Compare yourselves")
    QTest.mouseClick(window.broadcast_button, Qt.MouseButton.LeftButton)
    assert all(chat.busy for chat in chats)
    run(qloop, asyncio.gather(*(chat.task for chat in chats)))
    assert max(s.batch_size for s in ctrl.service.engine.engine.stats_history) == 3
    for chat in chats:
        user, reply = chat.store.messages(chat.session_id)
        assert user.content == "Compare yourselves" and reply.stats["tokens"] == 120
    close_app(qloop, window)


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory) -> Path:
    """tiny_model with 1,024 positions: the context fills in a few short turns."""
    return make_random_llama(tmp_path_factory.mktemp("short") / "short-llama",
                             max_position_embeddings=1024)  # fmt: skip


def test_context_overflow_is_announced_and_oldest_turns_dropped_on_request(
    qloop, short_context_model, tmp_path
):
    window = open_app(qloop, tmp_path, short_context_model)
    chat = next(iter(window.controller.chats.values()))
    long_replies(chat, max_tokens=225)
    turns = 0
    while turns < 10:  # turns of ~250 tokens until the next one would not fit in 1,024
        run(qloop, chat.send(f"question {turns}"))
        if chat.store.messages(chat.session_id)[-1].role == "user":
            break
        turns += 1
    assert turns >= 2
    usage = chat.update_context()
    assert usage.limit == 1024 and usage.history + 225 > 1024
    assert chat.pane.gauge.label.text() == f"{usage.total:,} / 1,024 tokens"
    assert chat.pane.gauge.warning_visible  # said so, sent nothing, cut nothing
    assert "Drop the oldest 1 turn" in chat.pane.gauge.warning_label.text()
    assert all(m.in_context for m in chat.store.messages(chat.session_id))
    QTest.mouseClick(chat.pane.gauge.drop_button, Qt.MouseButton.LeftButton)
    run(qloop, chat.task)
    messages = chat.store.messages(chat.session_id)
    assert [m.in_context for m in messages] == [False, False] + [True] * (2 * turns)
    assert messages[-1].role == "assistant" and messages[-1].status == "complete"
    assert "no longer fit the context" in chat.pane.transcript.toPlainText()
    assert not chat.pane.gauge.warning_visible
    close_app(qloop, window)


def test_export_markdown_and_json(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path / "data", tiny_model)
    chat = next(iter(window.controller.chats.values()))
    long_replies(chat, max_tokens=5)
    run(qloop, chat.send("Say *hello* with `code`"))
    chat.pane.exportRequested.emit("md", str(tmp_path / "s.md"))
    chat.pane.exportRequested.emit("json", str(tmp_path / "s.json"))
    markdown = (tmp_path / "s.md").read_text()
    assert markdown.startswith("# Say *hello*") and "## You\n\nSay *hello* with `code`" in markdown
    data = json.loads((tmp_path / "s.json").read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["stats"]["tokens"] == 5 and data["sampling"]["max_tokens"] == 5
    close_app(qloop, window)
