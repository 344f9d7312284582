"""Which physical blocks hold a given run of tokens: the link from a chat message to the
cells of the KV grid. Full blocks are found by their prefix-cache hash chain (in use or
cached-free), the partly filled tail through a running request whose tokens match."""

from __future__ import annotations

from collections.abc import Sequence

from engine.block_hash import hash_block
from engine.kv_snapshot import KVSnapshot


def locate_tokens(snap: KVSnapshot, token_ids: Sequence[int], start: int = 0,
                  end: int | None = None) -> list[int]:  # fmt: skip
    """Blocks holding token_ids[start:end] of a sequence that begins with token_ids,
    in logical order; blocks no longer in the cache are left out."""
    end = len(token_ids) if end is None else end
    bs = snap.block_size
    logical = _by_hash_chain(snap, token_ids)
    logical += [None] * (-(-len(token_ids) // bs) - len(logical))
    _fill_from_tables(snap, token_ids, logical)
    first, last = start // bs, -(-end // bs)
    return [b for b in logical[first:last] if b is not None]


def _by_hash_chain(snap: KVSnapshot, token_ids: Sequence[int]) -> list[int | None]:
    by_hash = {h: b for b, h in enumerate(snap.hashes) if h is not None}
    bs, parent, found = snap.block_size, None, []
    for i in range(len(token_ids) // bs):
        chunk = tuple(token_ids[i * bs : (i + 1) * bs])
        parent = hash_block(parent, chunk)
        block = by_hash.get(parent)
        if block is None or snap.cached_token_ids[block] != chunk:
            break  # the chain is broken: nothing after it can be a prefix hit either
        found.append(block)
    return found


def _fill_from_tables(snap: KVSnapshot, token_ids: Sequence[int], logical: list) -> None:
    """Blocks the hash chain missed (unhashed or partly filled) from a running request."""
    bs, want = snap.block_size, tuple(token_ids)
    for rid, held in snap.request_token_ids.items():
        common = _common_prefix(held, want)
        table = snap.block_tables[rid]
        for i in range(min(len(table), -(-common // bs))):
            if logical[i] is None:
                logical[i] = table[i]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
