"""Plain-torch paged-KV kernels: the definition of what the Triton kernels compute.

They are also the engine's CPU path, so they are written to be fast on a CPU as well as
obviously right: decodes (one query token each) are attended in one batched call, and
each prefill chunk in one call of its own (its many query rows amortise the loop).

Two options change what a query sees, both off by default:
- sliding_window W: the query at position p sees keys at positions p - W < k <= p (the
  last W positions including itself; transformers' `kv_idx > q_idx - W`, vLLM's (W-1, 0)).
- softcap c (Gemma 2): scaled logits s become c * tanh(s / c) before masking and softmax.
Without softcap SDPA does the maths; with it the scores are computed explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def store_kv_torch(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    all_valid: bool = False,
) -> None:
    """Scatter each token's K/V row into its cache slot; slot -1 means "do not store".
    all_valid: the caller knows no slot is -1 (skips a check that reads the device)."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if not all_valid:
        keep = slot_mapping >= 0
        if not bool(keep.all()):
            key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    flat_k = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_k.index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    flat_v.index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def check_options(
    sliding_window: int | None, softcap: float | None
) -> tuple[int | None, float | None]:
    """Validate the attention options; returns them with "off" spelt None (softcap 0 is off)."""
    if sliding_window is not None and int(sliding_window) < 1:
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window}")
    if softcap is not None and softcap < 0:
        raise ValueError(f"softcap must be None, 0 (off) or positive, got {softcap}")
    return (
        None if sliding_window is None else int(sliding_window),
        float(softcap) if softcap else None,
    )


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """softmax(cap(q @ k^T * scale) masked) @ v over the last two dims; mask None = causal
    (top-left aligned, only used when query and key lengths are equal)."""
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale
        )
    if mask is None:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores.mul_(scale / softcap).tanh_().mul_(softcap)
    scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _attend_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [q_len, h, d]; k, v: [ctx, kvh, d], the keys the chunk may see (see PrefillGather);
    mask: [q_len, ctx] or None for plain causal attention."""
    group = q.shape[1] // k.shape[1]
    # On a CPU, SDPA's GQA path and an explicit mask are each several times slower than
    # repeating K/V per query head and letting SDPA build the causal mask itself.
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    # A leading batch dimension of 1: given 3-D inputs, SDPA on the CPU takes its math path
    # (scores materialised, softmax, two bmm), 5x slower at 1,000 tokens than its flash
    # kernel, which it takes for 4-D ones.
    out = _attention(
        q.transpose(0, 1)[None].float(),
        k.transpose(0, 1)[None].float(),
        v.transpose(0, 1)[None].float(),
        mask,
        scale,
        softcap,
    )
    return out[0].transpose(0, 1)


def _attend_decodes(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gather: DecodeGather,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query token per sequence, all sequences at once. q: [n, h, d] -> [n, h, d]."""
    n, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    # index_select of whole rows, then one fused SDPA over strided views: ~2-3x faster on
    # a CPU than advanced indexing + einsum, which copies K/V into bmm layouts.
    k = k_cache.view(-1, num_kv_heads, head_dim).index_select(0, gather.slots)
    v = v_cache.view(-1, num_kv_heads, head_dim).index_select(0, gather.slots)
    k = k.view(n, gather.length, num_kv_heads, head_dim).transpose(1, 2).float()
    v = v.view(n, gather.length, num_kv_heads, head_dim).transpose(1, 2).float()
    # The query heads sharing a KV head take SDPA's query-length slot: no K/V repeat.
    qg = q.float().view(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = _attention(qg, k, v, gather.valid, scale, softcap)
    return out.reshape(n, num_heads, head_dim)


@dataclass(frozen=True, slots=True)
class DecodeGather:
    """The cache slots a batch of decodes reads: [n * length] slot ids, a [n, 1, 1, length]
    mask of the real ones, and `length`, the longest context read (a window's at most)."""

    slots: torch.Tensor
    valid: torch.Tensor
    length: int


@dataclass(frozen=True, slots=True)
class PrefillGather:
    """The cache slots one prefill chunk reads (positions `start` to its context length), and
    its mask (None: plain causal, left to SDPA)."""

    slots: torch.Tensor
    mask: torch.Tensor | None


class AttentionPlan:
    """What the torch attention derives from a step's shape alone, computed once per step
    and shared by every layer (per layer, only the cache tensors differ).

    Built from host lists, so no layer reads a device tensor back. The gathers depend on
    the sliding window, and are made on first use for each window a layer asks for.
    """

    def __init__(
        self,
        query_lens: Sequence[int],
        seq_lens: Sequence[int],
        block_tables: torch.Tensor,
        block_size: int,
        all_slots_valid: bool = False,
    ):
        self.query_lens, self.seq_lens = list(query_lens), list(seq_lens)
        self.block_tables, self.block_size = block_tables, block_size
        self.all_slots_valid = all_slots_valid  # store_kv may skip its slot -1 check
        self.device = block_tables.device
        self.starts = [0]
        for n in self.query_lens:
            self.starts.append(self.starts[-1] + n)
        self.decode_ids = [i for i, n in enumerate(self.query_lens) if n == 1]
        self.all_decodes = len(self.decode_ids) == len(self.query_lens)
        self.decode_rows = None
        if self.decode_ids and not self.all_decodes:
            self.decode_rows = torch.tensor(
                [self.starts[i] for i in self.decode_ids], device=self.device
            )
        self._decode: dict[int | None, DecodeGather] = {}
        self._prefill: dict[tuple[int, int | None], PrefillGather] = {}
        # A compiled CPU kernel for the decodes (kernels/cpu_decode_attention.py), set by
        # the model runner where it is built; None: the gather + SDPA below.
        self.decode_kernel: Callable[..., torch.Tensor] | None = None
        self._decode_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_tensors(
        cls, cu_query_lens: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
        block_size: int,
    ) -> AttentionPlan:  # fmt: skip
        cu = cu_query_lens.tolist()
        return cls([b - a for a, b in zip(cu, cu[1:])], seq_lens.tolist(), block_tables,
                   block_size)  # fmt: skip

    def prefill_ids(self) -> list[int]:
        return [i for i, n in enumerate(self.query_lens) if n > 1]

    def decode_gather(self, window: int | None) -> DecodeGather:
        gather = self._decode.get(window)
        if gather is None:
            gather = self._decode[window] = self._make_decode_gather(window)
        return gather

    def _make_decode_gather(self, window: int | None) -> DecodeGather:
        ids, bs = self.decode_ids, self.block_size
        lens = torch.tensor([self.seq_lens[i] for i in ids], device=self.device)[:, None]
        tables = self.block_tables if self.all_decodes else self.block_tables[ids]
        longest = max(self.seq_lens[i] for i in ids)
        length = longest if window is None else min(longest, window)
        # Each sequence's last `length` positions at most (all of them without a window).
        first = lens - window if window is not None else torch.zeros_like(lens)
        pos = first.clamp(min=0) + torch.arange(length, device=self.device)
        valid = pos < lens
        blocks = torch.gather(tables.long(), 1, (pos // bs).clamp(max=tables.shape[1] - 1))
        slots = blocks * bs + pos % bs
        # Padding positions re-read the sequence's first position: a real, finite row. (Slot 0
        # of the pool may belong to nobody and hold garbage or NaN, and 0 * NaN poisons P @ V.)
        slots = torch.where(valid, slots, slots[:, :1])
        return DecodeGather(slots.reshape(-1), valid[:, None, None, :], length)

    def decode_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decodes' block-table rows and context lengths, int32, once per step."""
        if self._decode_tables is None:
            ids = self.decode_ids
            tables = self.block_tables if self.all_decodes else self.block_tables[ids]
            lens = torch.tensor([self.seq_lens[i] for i in ids], dtype=torch.int32,
                                device=self.device)  # fmt: skip
            self._decode_tables = (tables.to(torch.int32).contiguous(), lens)
        return self._decode_tables

    def prefill_gather(self, i: int, window: int | None) -> PrefillGather:
        key = (i, window)
        gather = self._prefill.get(key)
        if gather is None:
            gather = self._prefill[key] = self._make_prefill_gather(i, window)
        return gather

    def _make_prefill_gather(self, i: int, window: int | None) -> PrefillGather:
        q_len, ctx, bs = self.query_lens[i], self.seq_lens[i], self.block_size
        # With a window, keys before the first query's window are never seen: skip them.
        start = 0 if window is None else max(0, ctx - q_len - window + 1)
        pos = torch.arange(start, ctx, device=self.device)
        slots = self.block_tables[i].long()[pos // bs] * bs + pos % bs
        if q_len == ctx and window is None:
            return PrefillGather(slots, None)  # causal, top-left aligned: SDPA's own mask
        # A later chunk: query j sits at position ctx - q_len + j and sees keys up to it.
        q_pos = torch.arange(ctx - q_len, ctx, device=self.device)[:, None]
        k_pos = pos[None, :]
        mask = k_pos <= q_pos
        if window is not None:
            mask &= k_pos > q_pos - window
        return PrefillGather(slots, mask)


def unified_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    plan: AttentionPlan | None = None,
) -> torch.Tensor:
    """Causal attention of a mixed batch of prefill chunks and decodes over a paged cache.

    sliding_window: a query at position p sees keys p - W < k <= p; None = all of 0..p.
    softcap: logits s (after scaling) become softcap * tanh(s / softcap); None or 0 = off.
    plan: the step's AttentionPlan, made once for all layers (made here when None).
    """
    window, softcap = check_options(sliding_window, softcap)
    if out is None:
        out = torch.empty_like(q)
    if plan is None:
        plan = AttentionPlan.from_tensors(cu_query_lens, seq_lens, block_tables, k_cache.shape[1])
    if plan.decode_ids:
        rows = plan.decode_rows
        q_dec = q if rows is None else q[rows]
        if plan.decode_kernel is not None and q.dtype == k_cache.dtype:
            tables, lens = plan.decode_tables()
            res = plan.decode_kernel(q_dec.contiguous(), k_cache, v_cache, tables, lens, scale,
                                     window or 0, softcap or 0.0)  # fmt: skip
        else:
            res = _attend_decodes(q_dec, k_cache, v_cache, plan.decode_gather(window), scale,
                                  softcap)  # fmt: skip
        if rows is None:  # all decodes: no gather of rows, no scatter back
            out.copy_(res)
            return out
        out[rows] = res.to(out.dtype)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    for i in plan.prefill_ids():
        gather = plan.prefill_gather(i, window)
        a, b = plan.starts[i], plan.starts[i + 1]
        k, v = flat_k.index_select(0, gather.slots), flat_v.index_select(0, gather.slots)
        out[a:b] = _attend_prefill(q[a:b], k, v, gather.mask, scale, softcap).to(out.dtype)
    return out
