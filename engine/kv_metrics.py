"""The numbers beside the KV grid, each computed from a snapshot alone by one small pure
function, so that what the learner reads can be checked against an independent count.

The paged-vs-contiguous figure is the PagedAttention paper's argument, measured live: a
contiguous allocator must reserve each request's maximum length up front (prompt +
max_tokens, or the whole context), while paging holds only the blocks in use.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.kv_snapshot import KVSnapshot


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V of one token in every layer."""
    return num_layers * num_kv_heads * head_dim * 2 * dtype_bytes


@dataclass(frozen=True, slots=True)
class BlockCounts:
    used: int
    cached: int  # cached-free: reusable prefixes
    free: int
    used_tokens: int  # computed tokens held in used blocks (each shared block once)
    capacity_tokens: int


def block_counts(snap: KVSnapshot) -> BlockCounts:
    from engine.kv_snapshot import BlockState

    used = snap.states == BlockState.IN_USE
    return BlockCounts(
        used=int(used.sum()),
        cached=snap.num_cached_free,
        free=snap.num_free,
        used_tokens=int(snap.num_filled[used].sum()),
        capacity_tokens=snap.num_blocks * snap.block_size,
    )


def internal_waste_tokens(snap: KVSnapshot) -> int:
    """Σ over requests of (blocks × block size − tokens held): the empty slots at the ends
    of partly filled last blocks, the only waste paging leaves."""
    return sum(
        len(table) * snap.block_size - len(snap.request_token_ids.get(rid, ()))
        for rid, table in snap.block_tables.items()
    )


@dataclass(frozen=True, slots=True)
class PagedVsContiguous:
    paged_bytes: int  # blocks in use × block size × bytes per token
    contiguous_bytes: int  # Σ over requests of max length × bytes per token
    num_requests: int

    @property
    def ratio(self) -> float:
        """How many times more sequences fit in the same memory when paged."""
        return self.contiguous_bytes / self.paged_bytes if self.paged_bytes else 1.0

    def describe(self) -> str:
        mib = 2**20
        return (f"paged: {self.paged_bytes / mib:.1f} MiB, "
                f"contiguous: {self.contiguous_bytes / mib:.1f} MiB, "
                f"{self.ratio:.1f}× more sequences fit")


def paged_vs_contiguous(snap: KVSnapshot) -> PagedVsContiguous:
    from engine.kv_snapshot import BlockState

    per_token = snap.kv_bytes_per_token
    in_use = int((snap.states == BlockState.IN_USE).sum())
    reserved = sum(
        snap.request_max_tokens.get(rid, snap.max_model_len) for rid in snap.block_tables
    )
    return PagedVsContiguous(in_use * snap.block_size * per_token, reserved * per_token,
                             len(snap.block_tables))  # fmt: skip


@dataclass(frozen=True, slots=True)
class WindowWaste:
    """What keeping every block of the sliding-window layers costs: blocks that lie wholly
    before the window of each request's next token, which no query reads again."""

    num_sliding_layers: int
    num_layers: int
    window: int | None  # the (smallest) window, None without sliding layers
    layer_blocks: int  # Σ over sliding layers and requests of such blocks
    bytes: int

    def describe(self) -> str:
        if not self.num_sliding_layers:
            return "none: every layer attends to the whole context"
        mib = 2**20
        return (f"{self.layer_blocks:,} layer-blocks · {self.bytes / mib:.1f} MiB outside the "
                f"window (W = {self.window:,}) of {self.num_sliding_layers} of "
                f"{self.num_layers} layers")


def window_waste(snap: KVSnapshot) -> WindowWaste:
    """Σ over sliding layers (window W) and requests of ⌊(tokens − W + 1) / block size⌋
    blocks: the next token, at position `tokens`, sees positions > tokens − W only."""
    windows = [w for w in snap.layer_windows if w]
    num_layers = len(snap.layer_windows)
    blocks = 0
    for w in windows:
        for toks in snap.request_token_ids.values():
            blocks += max(0, len(toks) - w + 1) // snap.block_size
    per_layer_token = snap.kv_bytes_per_token // num_layers if num_layers else 0
    return WindowWaste(len(windows), num_layers, min(windows, default=None), blocks,
                       blocks * snap.block_size * per_layer_token)  # fmt: skip


def prefix_hit_rate(snap: KVSnapshot) -> float:
    """Share of looked-up prompt tokens found in the prefix cache since the start."""
    return snap.prefix_hits / snap.prefix_queries if snap.prefix_queries else 0.0
