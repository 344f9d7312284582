"""Chat sessions and their messages in SQLite (WAL), with a schema version and migrations.

Every write commits at once (autocommit), so a killed process loses nothing it has written;
WAL with synchronous=NORMAL makes those commits cheap enough to run in the UI thread.
A reply that was streaming when the app died is found as status 'streaming' on the next
open and becomes 'interrupted' (its text, up to the last save, is kept).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SESSION_COLORS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#17becf",
)  # fmt: skip

# MIGRATIONS[i] takes a database from schema version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        color TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        sampling TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'complete',
        stats TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX messages_by_session ON messages(session_id, id);
    CREATE TABLE app_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # v2: turns dropped to fit the context stay in the transcript but are no longer sent.
    "ALTER TABLE messages ADD COLUMN in_context INTEGER NOT NULL DEFAULT 1;",
    # v3: where a session's replies come from: {} the embedded engine, or a remote endpoint
    # {"kind": "remote", "url", "model", "max_model_len"} (never its API key: the keyring's).
    "ALTER TABLE sessions ADD COLUMN backend TEXT NOT NULL DEFAULT '{}';",
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer pagedesk."""


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    title: str
    color: str
    system_prompt: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    backend: dict[str, Any] = field(default_factory=dict)  # {} = the embedded engine

    @property
    def is_remote(self) -> bool:
        return self.backend.get("kind") == "remote"


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    session_id: int
    role: str
    content: str
    status: str = "complete"  # complete | streaming | stopped | interrupted | error
    stats: dict[str, Any] = field(default_factory=dict)
    in_context: bool = True
    created: float = 0.0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version found before."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the sessions database has schema version {found}, but this pagedesk knows "
            f"versions up to {SCHEMA_VERSION}: it was written by a newer pagedesk"
        )
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN")
        for statement in filter(str.strip, MIGRATIONS[version].split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    return found


class SessionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        migrate(self.conn)
        self.conn.execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'"
        )

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- sessions
    def list_sessions(self) -> list[Session]:
        """Newest first."""
        rows = self.conn.execute("SELECT * FROM sessions ORDER BY id DESC").fetchall()
        return [self._session(r) for r in rows]

    def get_session(self, session_id: int) -> Session | None:
        row = self.conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return self._session(row) if row else None

    def create_session(
        self, title: str | None = None, system_prompt: str = "", sampling: dict | None = None,
        backend: dict | None = None,
    ) -> Session:
        now = time.time()
        count = self.conn.execute("SELECT COUNT(*), MAX(id) FROM sessions").fetchone()
        next_id = (count[1] or 0) + 1
        color = SESSION_COLORS[(next_id - 1) % len(SESSION_COLORS)]
        cur = self.conn.execute(
            "INSERT INTO sessions (title, color, system_prompt, sampling, created, updated, "
            "backend) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (title or "New chat", color, system_prompt, json.dumps(sampling or {}), now, now,
             json.dumps(_checked_backend(backend or {}))),
        )
        return self.get_session(cur.lastrowid)

    def rename_session(self, session_id: int, title: str) -> None:
        self._touch("UPDATE sessions SET title = ?, updated = ? WHERE id = ?", title, session_id)

    def update_settings(self, session_id: int, system_prompt: str, sampling: dict) -> None:
        self.conn.execute(
            "UPDATE sessions SET system_prompt = ?, sampling = ?, updated = ? WHERE id = ?",
            (system_prompt, json.dumps(sampling), time.time(), session_id),
        )

    def set_backend(self, session_id: int, backend: dict) -> None:
        self.conn.execute("UPDATE sessions SET backend = ?, updated = ? WHERE id = ?",
                          (json.dumps(_checked_backend(backend)), time.time(), session_id))

    def duplicate_session(self, session_id: int) -> Session:
        original = self.get_session(session_id)
        if original is None:
            raise KeyError(session_id)
        copy = self.create_session(
            f"{original.title} (copy)", original.system_prompt, original.sampling,
            original.backend,
        )
        for m in self.messages(session_id):
            status = "stopped" if m.status == "streaming" else m.status
            self._insert_message(copy.id, m.role, m.content, status, m.stats, m.in_context)
        return copy

    def delete_session(self, session_id: int) -> None:
        self.conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # ---------------------------------------------------------------- messages
    def messages(self, session_id: int) -> list[Message]:
        rows = self.conn.execute(
            "SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        return [self._message(r) for r in rows]

    def add_message(
        self, session_id: int, role: str, content: str, status: str = "complete",
        stats: dict | None = None,
    ) -> Message:
        message_id = self._insert_message(session_id, role, content, status, stats or {}, True)
        self.conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))
        return self.get_message(message_id)

    def get_message(self, message_id: int) -> Message | None:
        row = self.conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return self._message(row) if row else None

    def update_message(
        self, message_id: int, content: str, status: str | None = None, stats: dict | None = None
    ) -> None:
        sets, args = ["content = ?", "updated = ?"], [content, time.time()]
        if status is not None:
            sets.append("status = ?")
            args.append(status)
        if stats is not None:
            sets.append("stats = ?")
            args.append(json.dumps(stats))
        sql = f"UPDATE messages SET {', '.join(sets)} WHERE id = ?"
        self.conn.execute(sql, (*args, message_id))

    def delete_messages(self, message_ids: Iterable[int]) -> None:
        ids = list(message_ids)
        self.conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])

    def set_in_context(self, message_ids: Iterable[int], in_context: bool) -> None:
        self.conn.executemany(
            "UPDATE messages SET in_context = ? WHERE id = ?",
            [(int(in_context), i) for i in message_ids],
        )

    # ---------------------------------------------------------------- app state
    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM app_state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO app_state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # ---------------------------------------------------------------- rows
    def _insert_message(self, session_id, role, content, status, stats, in_context) -> int:
        now = time.time()
        cur = self.conn.execute(
            "INSERT INTO messages (session_id, role, content, status, stats, in_context, "
            "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, role, content, status, json.dumps(stats), int(in_context), now, now),
        )
        return cur.lastrowid

    def _touch(self, sql: str, value: Any, row_id: int) -> None:
        self.conn.execute(sql, (value, time.time(), row_id))

    @staticmethod
    def _session(row: tuple) -> Session:
        sid, title, color, system_prompt, sampling, created, updated, backend = row
        return Session(sid, title, color, system_prompt, json.loads(sampling), created, updated,
                       json.loads(backend))

    @staticmethod
    def _message(row: tuple) -> Message:
        mid, sid, role, content, status, stats, created, _updated, in_context = row
        return Message(mid, sid, role, content, status, json.loads(stats), bool(in_context),
                       created)  # fmt: skip


SECRET_KEYS = ("api_key", "key", "token", "password")


def _checked_backend(backend: dict) -> dict:
    """A backend as stored: a secret in it is a bug (keys belong in the keyring)."""
    secret = [k for k in backend if k.lower() in SECRET_KEYS]
    if secret:
        raise ValueError(f"a session's backend must not hold secrets ({', '.join(secret)}): "
                         "API keys go to the keyring")
    return dict(backend)
