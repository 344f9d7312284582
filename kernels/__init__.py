"""Paged KV-cache kernels behind two fixed signatures.

`store_kv` scatters new tokens' K/V into their cache slots; `unified_attention` runs
causal attention for a mixed batch of prefill chunks and decodes through block tables.
The torch implementations in `reference.py` define what both compute.
"""

from __future__ import annotations

import torch

from kernels.reference import store_kv_torch, unified_attention_torch

__all__ = ["store_kv", "unified_attention"]


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """key, value: [num_tokens, num_kv_heads, head_dim]; caches: [num_blocks, block_size,
    num_kv_heads, head_dim]; slot_mapping: int64 [num_tokens], block_id * block_size +
    offset, -1 to skip a token."""
    store_kv_torch(key, value, k_cache, v_cache, slot_mapping)


def unified_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; cu_query_lens: int32 [num_seqs + 1];
    seq_lens: int32 [num_seqs] (context after this step); block_tables: int32
    [num_seqs, max_blocks]. Query token i of sequence s sits at position
    seq_lens[s] - query_len[s] + i and attends to positions 0..that one."""
    return unified_attention_torch(
        q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out
    )
