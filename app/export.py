"""A session as Markdown (to read) or JSON (to process)."""

from __future__ import annotations

import json
from typing import Any

from app.store import Message, Session

ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}


def session_to_markdown(session: Session, messages: list[Message]) -> str:
    parts = [f"# {session.title}\n"]
    if session.system_prompt:
        parts.append(f"**System prompt:** {session.system_prompt}\n")
    for m in messages:
        note = "" if m.status == "complete" else f" *({m.status})*"
        parts.append(f"## {ROLE_TITLES.get(m.role, m.role)}{note}\n\n{m.content}\n")
    return "\n".join(parts)


def session_to_dict(session: Session, messages: list[Message]) -> dict[str, Any]:
    return {
        "format": "pagedesk-session",
        "version": 1,
        "title": session.title,
        "color": session.color,
        "system_prompt": session.system_prompt,
        "sampling": session.sampling,
        "created": session.created,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "stats": m.stats,
                "in_context": m.in_context,
                "created": m.created,
            }
            for m in messages
        ],
    }


def session_to_json(session: Session, messages: list[Message]) -> str:
    return json.dumps(session_to_dict(session, messages), indent=2, ensure_ascii=False)
