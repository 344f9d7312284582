"""Plain-torch paged-KV kernels: the definition of what the Triton kernels compute.

They are also the engine's CPU path, so they are written to be fast on a CPU as well as
obviously right: decodes (one query token each) are attended in one batched call, and
each prefill chunk in one call of its own (its many query rows amortise the loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kv_torch(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter each token's K/V row into its cache slot; slot -1 means "do not store"."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    flat_k = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_k.index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    flat_v.index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def _gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, length: int
) -> torch.Tensor:
    """The first `length` cached rows of one sequence, in position order: [length, kvh, d]."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    rows = cache[block_table[:num_blocks].long()]  # [nb, bs, kvh, d]
    return rows.reshape(num_blocks * block_size, *cache.shape[2:])[:length]


def _attend_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """q: [q_len, h, d]; k, v: [ctx, kvh, d] with the q tokens as the last q_len positions."""
    q_len, ctx = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    # On a CPU, SDPA's GQA path and an explicit mask are each several times slower than
    # repeating K/V per query head and letting SDPA build the causal mask itself.
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if q_len == ctx:
        mask, causal = None, True
    else:
        # A later chunk: query i sits at position ctx - q_len + i and sees keys 0..that
        # position (is_causal would align the diagonal to the top-left instead).
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device)
        mask, causal = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None], False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float(),
        k.transpose(0, 1).float(),
        v.transpose(0, 1).float(),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
    )
    return out.transpose(0, 1)


def _attend_decodes(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence, all sequences at once. q: [n, h, d] -> [n, h, d]."""
    n, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max())
    pos = torch.arange(max_len, device=q.device)
    blocks = block_tables[:, pos // block_size].long()  # [n, max_len]
    slots = blocks * block_size + pos % block_size
    valid = pos[None, :] < seq_lens[:, None].long()
    # Padding positions re-read the sequence's own position 0: a real, finite row. (Slot 0
    # of the pool may belong to nobody and hold garbage or NaN, and 0 * NaN poisons P @ V.)
    slots = torch.where(valid, slots, slots[:, :1])
    # index_select of whole rows, then one fused SDPA over strided views: ~2-3x faster on
    # a CPU than advanced indexing + einsum, which copies K/V into bmm layouts.
    idx = slots.reshape(-1)
    k = k_cache.view(-1, num_kv_heads, head_dim).index_select(0, idx)
    v = v_cache.view(-1, num_kv_heads, head_dim).index_select(0, idx)
    k = k.view(n, max_len, num_kv_heads, head_dim).transpose(1, 2).float()
    v = v.view(n, max_len, num_kv_heads, head_dim).transpose(1, 2).float()
    # The query heads sharing a KV head take SDPA's query-length slot: no K/V repeat.
    qg = q.float().view(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        qg, k, v, attn_mask=valid[:, None, None, :], scale=scale
    )
    return out.reshape(n, num_heads, head_dim)


def unified_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of a mixed batch of prefill chunks and decodes over a paged cache."""
    if out is None:
        out = torch.empty_like(q)
    cu = cu_query_lens.tolist()
    lens = seq_lens.tolist()
    q_lens = [cu[i + 1] - cu[i] for i in range(len(lens))]
    decode_ids = [i for i, n in enumerate(q_lens) if n == 1]
    if len(decode_ids) == len(q_lens):  # all decodes: no gather of rows, no scatter back
        out.copy_(_attend_decodes(q, k_cache, v_cache, seq_lens, block_tables, scale))
        return out
    if decode_ids:
        idx = torch.tensor(decode_ids, device=q.device)
        rows = torch.tensor([cu[i] for i in decode_ids], device=q.device)
        res = _attend_decodes(
            q[rows], k_cache, v_cache, seq_lens[idx], block_tables[idx], scale
        )
        out[rows] = res.to(out.dtype)
    for i, n in enumerate(q_lens):
        if n <= 1:
            continue
        k = _gather_context(k_cache, block_tables[i], lens[i])
        v = _gather_context(v_cache, block_tables[i], lens[i])
        res = _attend_prefill(q[cu[i] : cu[i + 1]], k, v, scale)
        out[cu[i] : cu[i + 1]] = res.to(out.dtype)
    return out
