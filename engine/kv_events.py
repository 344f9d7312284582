"""One entry of the KV cache manager's bounded event log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KVEvent:
    """kind: allocate, free, prefix_hit, share, evict, preempt, abort, finish."""

    seq: int
    kind: str
    request_id: str | None
    block_ids: tuple[int, ...]
