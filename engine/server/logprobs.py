"""The engine's logprobs (per generated token: {token id: logprob} of the top-N plus the
chosen token) in OpenAI's two shapes: chat's `content` list and completions' columns."""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from engine.server.protocol import (
    ChatLogprobs, CompletionLogprobs, PromptLogprob, PromptLogprobs, TokenLogprob, TopLogprob,
)

# JSON has no -inf; vLLM sends this instead, and clients expect a number.
MIN_LOGPROB = -9999.0


def _finite(logprob: float | None) -> float | None:
    if logprob is None or math.isnan(logprob):
        return None
    return max(logprob, MIN_LOGPROB)


_SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class LogprobFormatter:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._texts: dict[int, tuple[str, list[int]]] = {}

    def token_text(self, token_id: int) -> str:
        return self._token(token_id)[0]

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one token. A token that is part of a character decodes
        to U+FFFD alone, so its bytes come from the vocabulary entry instead."""
        found = self._texts.get(token_id)
        if found is None:
            text = self.tokenizer.decode([token_id])
            raw = list(text.encode("utf-8"))
            if "\ufffd" in text:
                raw = self._raw_bytes(token_id) or raw
            found = self._texts[token_id] = (text, raw)
        return found

    def _raw_bytes(self, token_id: int) -> list[int] | None:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return None
        match = _SENTENCEPIECE_BYTE.match(piece)
        if match:  # SentencePiece's byte fallback: <0xE2>
            return [int(match.group(1), 16)]
        table = _byte_level_decoder()
        if all(ch in table for ch in piece):  # GPT-2 style byte-level BPE
            return [table[ch] for ch in piece]
        return None

    def _top(self, entry: dict[int, float], top_n: int) -> list[TopLogprob]:
        best = sorted(entry.items(), key=lambda item: -item[1])[:top_n]
        return [self._top_logprob(t, lp) for t, lp in best]

    def _top_logprob(self, token_id: int, logprob: float) -> TopLogprob:
        text, raw = self._token(token_id)
        return TopLogprob(token=text, logprob=_finite(logprob), bytes=raw)

    def chat(
        self, token_ids: list[int], logprobs: list[dict[int, float]] | None, top_n: int
    ) -> ChatLogprobs | None:
        """Chat's shape: one entry per token, with exactly `top_n` alternatives."""
        if logprobs is None:
            return None
        content = []
        for token_id, entry in zip(token_ids, logprobs):
            chosen = self._top_logprob(token_id, entry.get(token_id, math.nan))
            content.append(TokenLogprob(**chosen.model_dump(), top_logprobs=self._top(entry, top_n)))
        return ChatLogprobs(content=content)

    def completion(
        self, token_ids: list[int], logprobs: list[dict[int, float] | None] | None, offset: int = 0
    ) -> CompletionLogprobs | None:
        """Completions' shape: parallel columns; `text_offset` counts from `offset`. An
        entry None (an echoed prompt's first token) has null logprob and top_logprobs."""
        if logprobs is None:
            return None
        out = CompletionLogprobs()
        for token_id, entry in zip(token_ids, logprobs):
            text = self.token_text(token_id)
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(text)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(_finite(entry.get(token_id)))
            top: dict[str, float | None] = {}
            for t, lp in sorted(entry.items(), key=lambda item: -item[1]):
                # Keyed by text, so tokens that decode alike collide: keep the likeliest.
                top.setdefault(self.token_text(t), _finite(lp))
            out.top_logprobs.append(top)
        return out

    def prompt_logprobs(
        self, token_ids: list[int], logprobs: list[dict[int, float] | None] | None,
        ranks: list[int | None] | None,
    ) -> PromptLogprobs | None:
        """vLLM's `prompt_logprobs`: per prompt token {token id: logprob, rank, decoded
        token}. The prompt token's rank is the engine's; a top-N entry's is its place."""
        if logprobs is None:
            return None
        out: PromptLogprobs = []
        for token_id, entry, rank in zip(token_ids, logprobs, ranks or [None] * len(logprobs)):
            if entry is None:
                out.append(None)
                continue
            out.append({t: PromptLogprob(
                logprob=_finite(lp), decoded_token=self.token_text(t),
                rank=rank if t == token_id else 1 + sum(v > lp for v in entry.values()),
            ) for t, lp in entry.items()})  # fmt: skip
        return out
