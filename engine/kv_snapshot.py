"""An immutable picture of the KV cache, for the GUI's block panel and for tests."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from collections.abc import Mapping

import numpy as np

from engine.kv_events import KVEvent


class BlockState(enum.IntEnum):
    FREE = 0
    IN_USE = 1
    CACHED_FREE = 2  # free, but holds a full hashed block a prompt can still hit


@dataclass(frozen=True)
class KVSnapshot:
    num_blocks: int
    block_size: int
    states: np.ndarray  # int8 [num_blocks], BlockState values
    ref_counts: np.ndarray  # int32 [num_blocks]
    num_filled: np.ndarray  # int32 [num_blocks], slots holding computed K/V
    hashes: tuple[int | None, ...]
    cached_token_ids: tuple[tuple[int, ...] | None, ...]  # tokens of hashed blocks
    block_tables: Mapping[str, tuple[int, ...]]
    request_token_ids: Mapping[str, tuple[int, ...]]  # each request's computed tokens
    events: tuple[KVEvent, ...] = field(default=())
    # Per request (the scheduler's ids, as in block_tables):
    request_parents: Mapping[str, str] = field(default_factory=dict)  # -> the caller's id
    request_max_tokens: Mapping[str, int] = field(default_factory=dict)  # most it may reach
    # The engine around the cache:
    step: int = -1  # the last step taken when the picture was made
    kv_bytes_per_token: int = 0  # layers x KV heads x head size x 2 (K and V) x dtype bytes
    max_model_len: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache so far
    prefix_hits: int = 0  # of which were found
    # Each layer's sliding window (None: full attention). The manager keeps every block of
    # a windowed layer (simple and correct); kv_metrics.window_waste counts what that costs.
    layer_windows: tuple[int | None, ...] = ()
    # Tensor parallelism: every rank holds this block table (the scheduler's) over its own
    # KV heads; kv_bytes_per_token is one rank's (rank 0, which holds the most heads).
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        for arr in (self.states, self.ref_counts, self.num_filled):
            arr.setflags(write=False)
        for name in ("block_tables", "request_token_ids", "request_parents", "request_max_tokens"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def state(self, block_id: int) -> BlockState:
        return BlockState(int(self.states[block_id]))

    def owners(self, block_id: int) -> tuple[str, ...]:
        """Request ids whose block table holds this block."""
        return tuple(rid for rid, t in self.block_tables.items() if block_id in t)

    def owners_by_block(self) -> dict[int, tuple[str, ...]]:
        result: dict[int, list[str]] = {}
        for rid, table in self.block_tables.items():
            for b in table:
                result.setdefault(b, []).append(rid)
        return {b: tuple(r) for b, r in result.items()}

    def parent_of(self, request_id: str) -> str:
        """The caller's request id (a session's message) behind a scheduler request id."""
        return self.request_parents.get(request_id, request_id)

    def short_hash(self, block_id: int) -> str:
        """The block's prefix-cache hash as 8 hex digits ("" when it holds none)."""
        h = self.hashes[block_id]
        return "" if h is None else f"{h & 0xFFFFFFFF:08x}"

    def block_tokens(self, block_id: int) -> tuple[int, ...]:
        """The token ids whose K/V the block holds (for the GUI's tooltip)."""
        cached = self.cached_token_ids[block_id]
        if cached is not None:
            return cached
        for rid, table in self.block_tables.items():
            if block_id in table:
                i = table.index(block_id)
                toks = self.request_token_ids[rid]
                return toks[i * self.block_size : (i + 1) * self.block_size]
        return ()

    @property
    def num_free(self) -> int:
        return int((self.states == BlockState.FREE).sum())

    @property
    def num_in_use(self) -> int:
        return int((self.states == BlockState.IN_USE).sum())

    @property
    def num_cached_free(self) -> int:
        return int((self.states == BlockState.CACHED_FREE).sum())

    @property
    def usage(self) -> float:
        return self.num_in_use / self.num_blocks
