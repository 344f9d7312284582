"""How much of the model's context a conversation takes, and which turns to drop to fit.

A turn is a user message and the replies after it. Nothing is dropped without asking:
`plan_fit` only says how many of the oldest turns would have to go.
"""

from __future__ import annotations

from typing import Any

Chat = list[dict[str, str]]


class TokenCounter:
    """Counts chat tokens with the model's chat template (the UI thread's tokenizer copy)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def prompt_ids(self, chat: Chat) -> list[int]:
        """The token ids the engine gets: the chat template with the assistant's cue."""
        return list(self.tokenizer.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=True, return_dict=False
        ))

    def count(self, chat: Chat, generation_prompt: bool = True) -> int:
        if not chat:
            return 0
        return len(self.tokenizer.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        ))


def turn_starts(history: Chat) -> list[int]:
    """Indexes of the user messages that begin each turn."""
    return [i for i, m in enumerate(history) if m["role"] == "user"]


def plan_fit(counter: TokenCounter, system: Chat, history: Chat, reply_budget: int,
             limit: int) -> int | None:
    """The fewest oldest turns to drop so that prompt + reply_budget fits in `limit`:
    0 if it fits already, None if even the last turn alone does not fit."""
    starts = turn_starts(history)
    for dropped, start in enumerate([0, *starts[1:]]):
        if counter.count(system + history[start:]) + reply_budget <= limit:
            return dropped
    return None
