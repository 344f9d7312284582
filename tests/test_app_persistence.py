"""Restart: a second app instance on the same data dir restores sessions, messages and the
open panes; the window's engine loads in the background."""

from __future__ import annotations

from PySide6.QtWidgets import QListView, QPushButton

from app_testing import close_app, long_replies, open_app, qloop, run, tiny_model  # noqa: F401


def test_a_second_instance_restores_sessions_messages_and_panes(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    first = next(iter(ctrl.chats.values()))
    window.findChild(QPushButton, "newSessionButton").click()
    second = list(ctrl.chats.values())[-1]
    third = ctrl.new_session()
    for chat, text in ((first, "hello one"), (second, "hello two")):
        long_replies(chat, max_tokens=12)
        run(qloop, chat.send(text))
    first.store.update_settings(first.session_id, "Be brief.", first.settings().sampling())
    ctrl.close_session(third.session_id)  # stays in the list, its pane closed
    ctrl.sessions.rename(second.session_id, "Renamed")
    before = {s.id: (s.title, [(m.role, m.content, m.status) for m in ctrl.store.messages(s.id)])
              for s in ctrl.store.list_sessions()}  # fmt: skip
    open_ids = list(ctrl.chats)
    close_app(qloop, window)

    again = open_app(qloop, tmp_path, tiny_model)
    ctrl = again.controller
    after = {s.id: (s.title, [(m.role, m.content, m.status) for m in ctrl.store.messages(s.id)])
             for s in ctrl.store.list_sessions()}  # fmt: skip
    assert after == before and len(after) == 3
    assert list(ctrl.chats) == open_ids == [first.session_id, second.session_id]
    assert again.findChild(QListView, "sessionList").model().rowCount() == 3
    restored = ctrl.chats[first.session_id]
    assert "hello one" in restored.pane.transcript.toPlainText()
    assert restored.pane.settings_panel.system_prompt.toPlainText() == "Be brief."
    assert restored.pane.title.text() == "hello one"
    assert ctrl.chats[second.session_id].pane.title.text() == "Renamed"
    close_app(qloop, again)
