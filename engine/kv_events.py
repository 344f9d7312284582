"""One entry of the KV cache manager's bounded event log.

The vocabulary is the field's: vLLM's published KV events for the prefix cache
(`BlockStored`: a full block hashed into the cache; `BlockRemoved`: evicted, its hash
dropped; `AllBlocksCleared`: the prefix cache reset), and the allocation events vLLM keeps
to itself (allocate, append, share, prefix_hit, free, preempt).
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOCATE = "allocate"  # a request's first new blocks, when it is admitted
APPEND = "append"  # more blocks for a running request that grew past its last block
PREFIX_HIT = "prefix_hit"  # cached blocks taken by an admitted request (ref count + 1)
SHARE = "share"  # of those, blocks another request holds at the same time (fork)
FREE = "free"  # a finished or aborted request gave its blocks back (detail says which)
PREEMPT = "preempt"  # blocks taken from a running request; it is recomputed later
BLOCK_STORED = "BlockStored"
BLOCK_REMOVED = "BlockRemoved"
ALL_BLOCKS_CLEARED = "AllBlocksCleared"

EVENT_KINDS = (ALLOCATE, APPEND, PREFIX_HIT, SHARE, FREE, PREEMPT, BLOCK_STORED,
               BLOCK_REMOVED, ALL_BLOCKS_CLEARED)  # fmt: skip


@dataclass(frozen=True, slots=True)
class KVEvent:
    seq: int  # position in the log since the engine started
    kind: str  # one of EVENT_KINDS
    request_id: str | None
    block_ids: tuple[int, ...]
    step: int = -1  # the engine step it happened in (-1: outside a step)
    detail: str = ""  # free: "finish" or "abort"
