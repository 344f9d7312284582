"""Incremental detokenization: new text per token, never a broken UTF-8 character.

Byte-level BPE splits multi-byte characters across tokens; decoding a token alone then
yields U+FFFD. Like vLLM, we decode a short window before the new tokens and emit only
the text past the window, holding back while the end is an unfinished character.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
# Tokens before the new ones decoded again for context (spaces, merges at the edge).
CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = list(prompt_token_ids)
        self.prefix_offset = max(len(self.token_ids) - CONTEXT_TOKENS, 0)
        self.read_offset = len(self.token_ids)
        self.output_text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_tokens(self, new_token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (may be '' while a character is split)."""
        self.token_ids.extend(new_token_ids)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT):
            return ""  # nothing visible yet, or the last character is still incomplete
        delta = full_text[len(prefix_text) :]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        self.output_text += delta
        return delta

    def cut_at_stop_string(self, stops: list[str], new_chars: int, include: bool) -> str | None:
        """The stop string the last `new_chars` characters completed, or None. On a hit the
        text ends at the stop string (or just after it, `include`): nothing past it shows."""
        if not stops or not new_chars:
            return None
        found = find_stop_string(self.output_text, stops, new_chars)
        if found is None:
            return None
        pos, stop = found
        self.output_text = self.output_text[: pos + len(stop) if include else pos]
        return stop


def find_stop_string(text: str, stops: list[str], new_chars: int) -> tuple[int, str] | None:
    """The earliest stop string that the last `new_chars` characters completed, and where
    it starts; None if none. Only the tail can hold a new match, so only it is searched."""
    start = max(0, len(text) - new_chars - max(len(s) for s in stops) + 1)
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop, start)
        if pos != -1 and (best is None or pos < best[0]):
            best = (pos, stop)
    return best
