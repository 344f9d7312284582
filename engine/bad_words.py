"""bad_words, as vLLM treats them: token sequences whose last token is banned when the
output already ends with the rest of the sequence.

Each word is tokenized twice, as it would start the text and as it would follow a space
(most BPE tokenizers give a word after a space different tokens), so that it is banned at
the start of a reply and in the middle of one. Only the reply's own tokens count: a word
whose first tokens end the prompt is not banned (vLLM's rule too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# vLLM's limits per request (VLLM_MAX_NUM_BAD_WORDS, VLLM_MAX_BAD_WORDS_TOTAL_TOKENS): each
# step checks every sequence of every row that asks on the host.
MAX_BAD_WORD_SEQUENCES = 128
MAX_BAD_WORD_TOKENS = 1024


def tokenize_bad_words(tokenizer: Any, words: Sequence[str], vocab_size: int) -> list[list[int]]:
    """The token-id sequences to ban for `words` (vLLM's update_from_tokenizer).

    Raises ValueError naming bad_words when a word tokenizes to nothing or to ids outside
    the vocabulary, or when there are more sequences or tokens than vLLM allows.
    """
    sequences: list[list[int]] = []
    for word in words:
        plain = list(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        if not plain:
            raise ValueError(f"bad_words must tokenize to at least one token each, got {word!r}")
        sequences.append(plain)
        spaced = list(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        # vLLM keeps the spaced form only when it is a different word of the same length
        # (not the plain form behind a separate space token).
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            sequences.append(spaced)
        _check_size(sequences)  # per word: a huge list stops at once
    bad = [t for seq in sequences for t in seq if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(
            f"bad_words must tokenize to ids in the vocabulary [0, {vocab_size}) (the "
            f"vocabulary size is {vocab_size}), got {bad[:5]}"
        )
    return sequences


def _check_size(sequences: list[list[int]]) -> None:
    tokens = sum(len(seq) for seq in sequences)
    if len(sequences) > MAX_BAD_WORD_SEQUENCES or tokens > MAX_BAD_WORD_TOKENS:
        raise ValueError(
            f"bad_words must make at most {MAX_BAD_WORD_SEQUENCES} token sequences of "
            f"{MAX_BAD_WORD_TOKENS} tokens in all (each word counts with and without a "
            f"leading space), got {len(sequences)} of {tokens} tokens"
        )


def banned_tokens(sequences: Sequence[Sequence[int]], output_token_ids: Sequence[int]) -> list[int]:
    """The tokens the next step may not pick: the last token of every sequence whose
    other tokens end the output so far (a one-token sequence is always banned)."""
    banned = []
    for seq in sequences:
        prefix = len(seq) - 1
        if prefix > len(output_token_ids):
            continue
        if prefix == 0 or list(output_token_ids[-prefix:]) == list(seq[:-1]):
            banned.append(seq[-1])
    return banned
