"""A fixed, seeded offline workload: the same requests for every backend of a benchmark.

Prompts are token ids drawn from the vocabulary (special tokens left out, so no backend
reads a stray BOS/EOS as structure), so the workload needs no text corpus and no network,
and any model with a vocabulary can run it. Lengths are spread uniformly over wide ranges:
the spread is what separates continuous batching from static batching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request: its prompt and exactly how many tokens it must generate (EOS ignored)."""

    prompt: list[int]
    max_tokens: int


def make_workload(
    num_requests: int,
    vocab_size: int,
    special_ids: set[int],
    seed: int = 0,
    prompt_lens: tuple[int, int] = (16, 384),
    output_lens: tuple[int, int] = (16, 160),
) -> list[BenchRequest]:
    """`num_requests` requests with prompt and output lengths uniform in the given
    (inclusive) ranges; the same arguments always give the same workload."""
    rng = random.Random(seed)
    allowed = [t for t in range(vocab_size) if t not in special_ids]
    requests = []
    for _ in range(num_requests):
        prompt_len = rng.randint(*prompt_lens)
        max_tokens = rng.randint(*output_lens)
        prompt = [allowed[rng.randrange(len(allowed))] for _ in range(prompt_len)]
        requests.append(BenchRequest(prompt, max_tokens))
    return requests


def total_output_tokens(requests: list[BenchRequest]) -> int:
    return sum(r.max_tokens for r in requests)


def to_json(requests: list[BenchRequest]) -> list[dict]:
    """Plain data for a worker process, in the shape vLLM takes token-id prompts in:
    `[{"prompt_token_ids": [...], "max_tokens": n}, ...]`."""
    return [{"prompt_token_ids": list(r.prompt), "max_tokens": r.max_tokens} for r in requests]


def from_json(items: list[dict]) -> list[BenchRequest]:
    """The inverse of to_json."""
    return [BenchRequest(list(d["prompt_token_ids"]), int(d["max_tokens"])) for d in items]
