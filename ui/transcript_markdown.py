"""A conversation as Markdown, for QTextBrowser.setMarkdown (Qt's own Markdown reader)."""

from __future__ import annotations

from ui.chat_types import ChatMessage

ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}
STATUS_NOTES = {
    "stopped": "stopped",
    "interrupted": "interrupted: the app closed while this reply was streaming",
    "error": "error",
}
CURSOR = "▍"
SEPARATOR = "---\n\n"  # between messages (a horizontal rule)
DROPPED_NOTE = "*— the turns above no longer fit the context and are not sent to the model —*"


def close_open_fence(text: str) -> str:
    """Close a code fence a partial reply left open, so what follows is not code."""
    fences = sum(1 for line in text.splitlines() if line.lstrip().startswith("```"))
    return text + "\n```" if fences % 2 else text


def message_markdown(message: ChatMessage, streaming: bool = False) -> str:
    title = ROLE_TITLES.get(message.role, message.role)
    if streaming:  # the cursor goes at the end of the text, inside an open code block too
        body = close_open_fence(message.content + CURSOR) if message.content else (
            f"*thinking…* {CURSOR}")
    else:
        body = close_open_fence(message.content) if message.content else ""
    parts = [f"**{title}**", body or "*(empty)*"]
    footer = []
    if message.stats is not None:
        footer.append(message.stats.line())
    note = STATUS_NOTES.get(message.status)
    if note:
        footer.append(note)
    if footer:
        parts.append("*" + " · ".join(footer) + "*")
    return "\n\n".join(parts)


def transcript_markdown(messages: list[ChatMessage], streaming: ChatMessage | None = None) -> str:
    blocks: list[str] = []
    previous_in_context = True
    for m in messages:
        if m.in_context and not previous_in_context:
            blocks.append(DROPPED_NOTE)
        previous_in_context = m.in_context
        blocks.append(message_markdown(m))
    if streaming is not None:
        blocks.append(message_markdown(streaming, streaming=True))
    return ("\n\n" + SEPARATOR).join(blocks) + "\n"
