"""The sessions store: SQLite in WAL mode, schema versions and migrations, CRUD, export."""

from __future__ import annotations

import json
import sqlite3

import pytest

from app.export import session_to_dict, session_to_markdown
from app.store import MIGRATIONS, SCHEMA_VERSION, SchemaTooNewError, SessionStore


@pytest.fixture
def store(tmp_path):
    s = SessionStore(tmp_path / "sessions.sqlite3")
    yield s
    s.close()


def test_wal_and_schema_version(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2


def test_sessions_create_rename_duplicate_delete(store):
    a = store.create_session()
    b = store.create_session("Second", "Be terse.", {"temperature": 0.5})
    assert a.title == "New chat" and a.color != b.color
    assert [s.id for s in store.list_sessions()] == [b.id, a.id]  # newest first
    store.rename_session(a.id, "First")
    store.add_message(b.id, "user", "hi")
    store.add_message(b.id, "assistant", "hello", stats={"tokens": 2})
    copy = store.duplicate_session(b.id)
    assert copy.title == "Second (copy)" and copy.system_prompt == "Be terse."
    assert copy.sampling == {"temperature": 0.5}
    assert [(m.role, m.content, m.stats) for m in store.messages(copy.id)] == [
        ("user", "hi", {}), ("assistant", "hello", {"tokens": 2})]  # fmt: skip
    store.delete_session(b.id)
    assert store.get_session(b.id) is None and store.messages(b.id) == []  # cascade
    assert {s.title for s in store.list_sessions()} == {"First", "Second (copy)"}


def test_messages_update_delete_and_context_flags(store):
    s = store.create_session()
    m = store.add_message(s.id, "assistant", "", status="streaming")
    store.update_message(m.id, "partial")
    assert store.get_message(m.id).content == "partial"
    store.update_message(m.id, "done", status="complete", stats={"tokens": 3})
    done = store.get_message(m.id)
    assert (done.content, done.status, done.stats) == ("done", "complete", {"tokens": 3})
    assert done.in_context
    store.set_in_context([m.id], False)
    assert not store.get_message(m.id).in_context
    store.delete_messages([m.id])
    assert store.messages(s.id) == []


def test_app_state_round_trips(store):
    assert store.get_state("open_panes", []) == []
    store.set_state("open_panes", [3, 1])
    store.set_state("open_panes", [1])
    assert store.get_state("open_panes") == [1]


def test_a_reply_streaming_at_a_crash_reopens_as_interrupted(tmp_path):
    path = tmp_path / "db.sqlite3"
    first = SessionStore(path)
    s = first.create_session()
    m = first.add_message(s.id, "assistant", "half a rep", status="streaming")
    # no close(): as if killed
    second = SessionStore(path)
    reopened = second.get_message(m.id)
    assert (reopened.status, reopened.content) == ("interrupted", "half a rep")
    first.close()
    second.close()


def test_migrates_a_version_1_database(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO sessions VALUES (1, 'Old', '#fff', '', '{}', 0, 0)")
    conn.execute("INSERT INTO messages VALUES (1, 1, 'user', 'kept', 'complete', '{}', 0, 0)")
    conn.close()
    store = SessionStore(path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    (message,) = store.messages(1)
    assert (message.content, message.in_context) == ("kept", True)
    store.close()


def test_refuses_a_database_from_a_newer_version(tmp_path):
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="newer pagedesk"):
        SessionStore(path)


def test_export_markdown_and_json(store):
    s = store.create_session("Export me", "System says hi")
    store.add_message(s.id, "user", "What is `x`?")
    store.add_message(s.id, "assistant", "```python\nx = 1\n```", status="stopped")
    session, messages = store.get_session(s.id), store.messages(s.id)
    md = session_to_markdown(session, messages)
    assert md.startswith("# Export me\n") and "**System prompt:** System says hi" in md
    assert "## Assistant *(stopped)*\n\n```python\nx = 1\n```" in md
    data = json.loads(json.dumps(session_to_dict(session, messages)))
    assert data["format"] == "pagedesk-session" and data["system_prompt"] == "System says hi"
    assert [m["status"] for m in data["messages"]] == ["complete", "stopped"]
