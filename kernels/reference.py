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


def _gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, length: int, start: int = 0
) -> torch.Tensor:
    """Cached rows [start, length) of one sequence, in position order: [length - start, kvh, d]."""
    block_size = cache.shape[1]
    first = start // block_size
    num_blocks = (length + block_size - 1) // block_size
    rows = cache[block_table[first:num_blocks].long()]  # [nb, bs, kvh, d]
    flat = rows.reshape((num_blocks - first) * block_size, *cache.shape[2:])
    return flat[start - first * block_size : length - first * block_size]


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
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [q_len, h, d]; k, v: [ctx, kvh, d] with the q tokens as the last q_len positions.
    With a window, k and v may leave out the keys before the first query's window
    (positions then count from their first row)."""
    q_len, ctx = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    # On a CPU, SDPA's GQA path and an explicit mask are each several times slower than
    # repeating K/V per query head and letting SDPA build the causal mask itself.
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if q_len == ctx and sliding_window is None:
        mask = None  # causal
    else:
        # A later chunk: query i sits at position ctx - q_len + i and sees keys 0..that
        # position (is_causal would align the diagonal to the top-left instead).
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device)[:, None]
        k_pos = torch.arange(ctx, device=q.device)[None, :]
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
    out = _attention(
        q.transpose(0, 1).float(),
        k.transpose(0, 1).float(),
        v.transpose(0, 1).float(),
        mask,
        scale,
        softcap,
    )
    return out.transpose(0, 1)


def _attend_decodes(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query token per sequence, all sequences at once. q: [n, h, d] -> [n, h, d]."""
    n, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max())
    if sliding_window is None:
        pos = torch.arange(max_len, device=q.device)
        blocks = block_tables[:, pos // block_size].long()  # [n, max_len]
        valid = pos[None, :] < seq_lens[:, None].long()
    else:
        # Only each sequence's last `sliding_window` positions: [n, min(max_len, W)].
        max_len = min(max_len, sliding_window)
        lens = seq_lens[:, None].long()
        pos = (lens - sliding_window).clamp(min=0) + torch.arange(max_len, device=q.device)
        blocks = torch.gather(block_tables.long(), 1, pos // block_size)
        valid = pos < lens
    slots = blocks * block_size + pos % block_size
    # Padding positions re-read the sequence's first position: a real, finite row. (Slot 0
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
    out = _attention(qg, k, v, valid[:, None, None, :], scale, softcap)
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
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of a mixed batch of prefill chunks and decodes over a paged cache.

    sliding_window: a query at position p sees keys p - W < k <= p; None = all of 0..p.
    softcap: logits s (after scaling) become softcap * tanh(s / softcap); None or 0 = off.
    """
    window, softcap = check_options(sliding_window, softcap)
    if out is None:
        out = torch.empty_like(q)
    cu = cu_query_lens.tolist()
    lens = seq_lens.tolist()
    q_lens = [cu[i + 1] - cu[i] for i in range(len(lens))]
    decode_ids = [i for i, n in enumerate(q_lens) if n == 1]
    opts = (window, softcap)
    if len(decode_ids) == len(q_lens):  # all decodes: no gather of rows, no scatter back
        out.copy_(_attend_decodes(q, k_cache, v_cache, seq_lens, block_tables, scale, *opts))
        return out
    if decode_ids:
        idx = torch.tensor(decode_ids, device=q.device)
        rows = torch.tensor([cu[i] for i in decode_ids], device=q.device)
        res = _attend_decodes(
            q[rows], k_cache, v_cache, seq_lens[idx], block_tables[idx], scale, *opts
        )
        out[rows] = res.to(out.dtype)
    for i, n in enumerate(q_lens):
        if n <= 1:
            continue
        # With a window, keys before the first query's window are never seen: skip them.
        start = 0 if window is None else max(0, lens[i] - n - window + 1)
        k = _gather_context(k_cache, block_tables[i], lens[i], start)
        v = _gather_context(v_cache, block_tables[i], lens[i], start)
        res = _attend_prefill(q[cu[i] : cu[i + 1]], k, v, scale, *opts)
        out[cu[i] : cu[i + 1]] = res.to(out.dtype)
    return out
