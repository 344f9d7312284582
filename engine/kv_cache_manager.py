"""The paged KV cache's bookkeeping: a pool of fixed-size blocks with reference counts,
prefix caching by chained block hashes, and an event log the GUI can replay.

Only ids and counts live here; the tensors themselves belong to the model runner.
A block is in one of three states: in use (ref count > 0), cached-free (ref count 0
but still holding a full block whose hash a later prompt can hit), or free.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np

from engine import kv_events as ev
from engine.block_hash import hash_block  # noqa: F401  (re-exported for tests and tools)
from engine.kv_events import KVEvent
from engine.kv_snapshot import BlockState, KVSnapshot
from engine.request import Request

EVENT_LOG_SIZE = 4096


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = np.zeros(num_blocks, dtype=np.int32)
        self.block_hashes: list[int | None] = [None] * num_blocks
        self.block_token_ids: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        # Blocks that hold nothing are handed out first; cached-free ones wait in LRU
        # order (oldest first) and are evicted only when nothing else is left.
        self.empty_free: deque[int] = deque(range(num_blocks))
        self.cached_free: OrderedDict[int, None] = OrderedDict()
        self.block_tables: dict[str, list[int]] = {}
        self.num_hashed: dict[str, int] = {}  # leading blocks of each table already hashed
        self.last_hash: dict[str, int | None] = {}  # hash chain of each request so far
        self.requests: dict[str, Request] = {}
        self.events: deque[KVEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self._event_seq = itertools.count()
        self._num_events = 0
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which were found
        self.current_step = -1  # the engine's step number, stamped on each event

    # ---------------------------------------------------------------- queries
    @property
    def num_free_blocks(self) -> int:
        return len(self.empty_free) + len(self.cached_free)

    @property
    def usage(self) -> float:
        """Share of blocks held by requests (cached-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_events(self) -> int:
        """Events logged so far: any change to the blocks logs one."""
        return self._num_events

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    # ---------------------------------------------------------------- prefix cache
    def find_cached_prefix(self, request: Request) -> list[int]:
        """Blocks holding the longest cached run of the request's full blocks.

        At least one token is always left to compute, so the step has logits to sample.
        """
        if not self.enable_prefix_caching:
            return []
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        hits: list[int] = []
        parent: int | None = None
        for i in range(max_blocks):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            parent = request.block_hash(i, parent, chunk)
            block = self.hash_to_block.get(parent)
            if block is None or self.block_token_ids[block] != chunk:
                break  # a miss, or a hash collision caught by comparing the tokens
            hits.append(block)
        return hits

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count an admitted request's lookup (a retried lookup is not a new query)."""
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    # ---------------------------------------------------------------- allocation
    def allocate_slots(
        self, request: Request, num_new_tokens: int, cached_blocks: Sequence[int] = ()
    ) -> bool:
        """Give the request slots for `num_new_tokens` beyond its computed ones.

        `cached_blocks` are prefix-cache hits to take first (on admission). Returns False,
        changing nothing, when too few free blocks are left.
        """
        rid = request.request_id
        table = self.block_tables.get(rid, [])
        num_cached_tokens = len(cached_blocks) * self.block_size
        total = request.num_computed_tokens + num_cached_tokens + num_new_tokens
        num_new_blocks = self.blocks_needed(total) - len(table) - len(cached_blocks)
        # Cached hits that sit free are taken out of the free pool, so count them too.
        revived = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        if num_new_blocks + revived > self.num_free_blocks:
            return False
        admitted = rid not in self.block_tables
        if admitted:
            self.block_tables[rid] = table
            self.num_hashed[rid] = 0
            self.last_hash[rid] = None
            self.requests[rid] = request
        if cached_blocks:
            self._take_cached(rid, table, cached_blocks)
        if num_new_blocks > 0:
            new = [self._pop_free_block() for _ in range(num_new_blocks)]
            for b in new:
                self.ref_counts[b] = 1
            table.extend(new)
            self._log(ev.ALLOCATE if admitted else ev.APPEND, rid, new)
        return True

    def _take_cached(self, rid: str, table: list[int], blocks: Sequence[int]) -> None:
        shared = [b for b in blocks if self.ref_counts[b] > 0]
        for b in blocks:
            if self.ref_counts[b] == 0:
                del self.cached_free[b]
            self.ref_counts[b] += 1
        table.extend(blocks)
        self.num_hashed[rid] = len(table)
        self.last_hash[rid] = self.block_hashes[blocks[-1]]
        self._log(ev.PREFIX_HIT, rid, list(blocks))
        if shared:
            self._log(ev.SHARE, rid, shared)

    def _pop_free_block(self) -> int:
        if self.empty_free:
            return self.empty_free.popleft()
        block, _ = self.cached_free.popitem(last=False)  # least recently used
        self._log(ev.BLOCK_REMOVED, None, [block])  # evicted: its prefix is forgotten
        self._drop_hash(block)
        return block

    def _drop_hash(self, block: int) -> None:
        del self.hash_to_block[self.block_hashes[block]]
        self.block_hashes[block] = None
        self.block_token_ids[block] = None

    # ---------------------------------------------------------------- after a step
    def cache_full_blocks(self, request: Request) -> None:
        """Hash the request's blocks that its computed tokens have just filled."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        table = self.block_tables[rid]
        start = self.num_hashed[rid]
        end = min(request.num_computed_tokens // self.block_size, len(table))
        parent = self.last_hash[rid]
        tokens = request.all_token_ids
        stored = []
        for i in range(start, end):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            parent = request.block_hash(i, parent, chunk)
            block = table[i]
            if parent not in self.hash_to_block:
                self.hash_to_block[parent] = block
                self.block_hashes[block] = parent
                self.block_token_ids[block] = chunk
                stored.append(block)
            # else: another block already holds this content (two identical prompts in
            # one step); this copy stays unhashed, and the chain goes on from `parent`.
        if end > start:
            self.num_hashed[rid] = end
            self.last_hash[rid] = parent
        if stored:
            self._log(ev.BLOCK_STORED, rid, stored)

    def free(self, request: Request, reason: str = "finish") -> None:
        """Return a request's blocks, tail first, so its last blocks are evicted first.

        reason: "finish" or "abort" (logged as a free event), or "preempt"."""
        rid = request.request_id
        table = self.block_tables.pop(rid, None)
        self.num_hashed.pop(rid, None)
        self.last_hash.pop(rid, None)
        self.requests.pop(rid, None)
        if not table:
            return
        for b in reversed(table):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                if self.block_hashes[b] is not None:
                    self.cached_free[b] = None
                else:
                    self.empty_free.append(b)
        if reason == ev.PREEMPT:
            self._log(ev.PREEMPT, rid, list(table))
        else:
            self._log(ev.FREE, rid, list(table), detail=reason)

    def reset_prefix_cache(self) -> int:
        """Forget every cached-free block (in-use blocks keep their hashes, so requests
        running now still share their prefixes). Returns how many blocks were cleared."""
        cleared = list(self.cached_free)
        for b in cleared:
            self._drop_hash(b)
            self.empty_free.append(b)
        self.cached_free.clear()
        self._log(ev.ALL_BLOCKS_CLEARED, None, cleared)
        return len(cleared)

    # ---------------------------------------------------------------- the picture
    def _log(self, kind: str, request_id: str | None, blocks: list[int], detail: str = "") -> None:
        self._num_events += 1
        self.events.append(KVEvent(next(self._event_seq), kind, request_id, tuple(blocks),
                                   self.current_step, detail))  # fmt: skip

    def snapshot(
        self,
        kv_bytes_per_token: int = 0,
        max_model_len: int = 0,
        layer_windows: tuple[int | None, ...] = (),
    ) -> KVSnapshot:
        """An immutable picture of every block and every block table (cheap: flat copies)."""
        states = np.full(self.num_blocks, BlockState.FREE, dtype=np.int8)
        states[self.ref_counts > 0] = BlockState.IN_USE
        if self.cached_free:
            states[np.fromiter(self.cached_free, dtype=np.int64)] = BlockState.CACHED_FREE
        fill = np.zeros(self.num_blocks, dtype=np.int32)
        fill[states == BlockState.CACHED_FREE] = self.block_size
        tables: dict[str, tuple[int, ...]] = {}
        tokens: dict[str, tuple[int, ...]] = {}
        parents: dict[str, str] = {}
        most: dict[str, int] = {}
        for rid, table in self.block_tables.items():
            request = self.requests[rid]
            computed = request.num_computed_tokens
            tables[rid] = tuple(table)
            tokens[rid] = tuple(request.all_token_ids[:computed])
            parents[rid] = request.parent_id
            most[rid] = request.max_length
            for i, b in enumerate(table):
                filled = min(self.block_size, max(0, computed - i * self.block_size))
                fill[b] = max(fill[b], filled)
        return KVSnapshot(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            states=states,
            ref_counts=self.ref_counts.copy(),
            num_filled=fill,
            hashes=tuple(self.block_hashes),
            cached_token_ids=tuple(self.block_token_ids),
            block_tables=tables,
            request_token_ids=tokens,
            events=tuple(self.events),
            request_parents=parents,
            request_max_tokens=most,
            step=self.current_step,
            kv_bytes_per_token=kv_bytes_per_token,
            max_model_len=max_model_len,
            prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits,
            layer_windows=layer_windows,
        )
