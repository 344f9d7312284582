"""The transcript renders a streaming reply and appended messages in place at the end of
the document; what it shows must equal a full render of the same conversation."""

from __future__ import annotations

from ui.chat_types import ChatMessage, ReplyStats
from ui.transcript_view import TranscriptView

CONVERSATION = [
    ChatMessage("user", "hi"),
    ChatMessage("assistant", "```python\nx = 1\n```", stats=ReplyStats(3, 0.1, 2.0)),
    ChatMessage("user", "- a\n- b"),
    ChatMessage("assistant", "para **bold**", status="stopped"),
    ChatMessage("user", "# Heading\n> quote"),
    ChatMessage("assistant", "1. x\n2. y\n\n```\nan open fence"),
]


def shown(view: TranscriptView) -> tuple[str, str]:
    return view.toPlainText(), view.document().toMarkdown()


def full_render(qtbot, messages, streaming=None) -> tuple[str, str]:
    view = TranscriptView()
    qtbot.addWidget(view)
    view.set_messages(messages, streaming)
    return shown(view)


def test_streaming_and_appending_in_place_equal_a_full_render(qtbot):
    view = TranscriptView()
    qtbot.addWidget(view)
    for n in range(len(CONVERSATION)):
        streaming = ChatMessage("assistant", f"part {n} *so far*\n\n```\ncode", status="streaming")
        view.set_streaming(streaming)
        view.flush()
        assert shown(view) == full_render(qtbot, CONVERSATION[:n], streaming)
        view.set_messages(CONVERSATION[: n + 1])
        assert shown(view) == full_render(qtbot, CONVERSATION[: n + 1])


def test_changed_history_is_rendered_again(qtbot):
    view = TranscriptView()
    qtbot.addWidget(view)
    view.set_messages(CONVERSATION)
    dropped = [ChatMessage(m.role, m.content, m.status, m.stats, in_context=i >= 2)
               for i, m in enumerate(CONVERSATION)]  # fmt: skip
    view.set_messages(dropped)
    assert shown(view) == full_render(qtbot, dropped)
    view.set_messages(CONVERSATION[:2])  # regenerate / edit: shorter
    assert shown(view) == full_render(qtbot, CONVERSATION[:2])
    view.set_messages([])
    assert view.toPlainText() == ""
