"""Plain values the chat widgets show and emit (no Qt, no engine)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplyStats:
    tokens: int
    time_to_first_token: float | None = None  # seconds
    tokens_per_second: float | None = None

    def line(self) -> str:
        parts = [f"{self.tokens} tokens"]
        if self.time_to_first_token is not None:
            parts.append(f"first token {self.time_to_first_token:.2f} s")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tokens/s")
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # user | assistant
    content: str
    status: str = "complete"  # complete | streaming | stopped | interrupted | error
    stats: ReplyStats | None = None
    in_context: bool = True


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """A session's system prompt and sampling settings."""

    system_prompt: str = ""
    temperature: float = 0.3
    top_p: float = 0.9
    top_k: int = -1  # -1: off
    max_tokens: int = 512
    seed: int | None = None  # None: a new random seed each time
    extra: dict[str, Any] = field(default_factory=dict)  # other SamplingParams fields, kept as is

    def sampling(self) -> dict[str, Any]:
        """The SamplingParams keyword arguments."""
        values = asdict(self)
        values.pop("system_prompt")
        extra = values.pop("extra")
        return {**extra, **values}

    @classmethod
    def from_stored(cls, system_prompt: str, sampling: dict[str, Any]) -> ChatSettings:
        known = {"temperature", "top_p", "top_k", "max_tokens", "seed"}
        given = {k: v for k, v in sampling.items() if k in known}
        extra = {k: v for k, v in sampling.items() if k not in known}
        return cls(system_prompt=system_prompt, extra=extra, **given)


@dataclass(frozen=True, slots=True)
class ContextUsage:
    system: int
    history: int
    reply: int
    limit: int

    @property
    def total(self) -> int:
        return self.system + self.history + self.reply

    @property
    def overflows(self) -> bool:
        return self.total > self.limit
