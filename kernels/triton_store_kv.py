"""Triton store_kv: scatter each new token's K and V rows into its cache slot.

Pure bandwidth: one program per (token, group of KV heads) copies HEADS_PER_PROG x head_dim
elements of K and of V; slot -1 (padding) returns at once. Runtime block_size keeps the
number of compiled variants down (the division costs nothing next to the copy).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _store_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    num_kv_heads,
    block_size,
    stride_key_tok,
    stride_key_head,
    stride_value_tok,
    stride_value_head,
    stride_kc_blk,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_blk,
    stride_vc_slot,
    stride_vc_head,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    HEADS_PER_PROG: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    blk = slot // block_size
    off = slot % block_size
    heads = tl.program_id(1) * HEADS_PER_PROG + tl.arange(0, HEADS_PER_PROG)
    offs_d = tl.arange(0, HEAD_PAD)
    mask = (heads < num_kv_heads)[:, None] & (offs_d < HEAD_DIM)[None, :]
    src = heads[:, None] * stride_key_head + offs_d[None, :]
    k = tl.load(key_ptr + tok.to(tl.int64) * stride_key_tok + src, mask=mask)
    src = heads[:, None] * stride_value_head + offs_d[None, :]
    v = tl.load(value_ptr + tok.to(tl.int64) * stride_value_tok + src, mask=mask)
    dst = blk * stride_kc_blk + off * stride_kc_slot + heads[:, None] * stride_kc_head
    tl.store(k_cache_ptr + dst + offs_d[None, :], k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    dst = blk * stride_vc_blk + off * stride_vc_slot + heads[:, None] * stride_vc_head
    tl.store(v_cache_ptr + dst + offs_d[None, :], v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_meta(num_kv_heads: int, head_dim: int) -> dict[str, int]:
    """Compile-time parameters of one launch (shared with the compile test)."""
    head_pad = triton.next_power_of_2(head_dim)
    # ~2K elements per program: enough bytes in flight per program, few registers.
    heads = min(triton.next_power_of_2(num_kv_heads), max(1, 2048 // head_pad))
    return {"HEAD_DIM": head_dim, "HEAD_PAD": head_pad, "HEADS_PER_PROG": heads}


def store_kv_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """See kernels.store_kv."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache/v_cache need a contiguous head_dim")
    meta = store_kv_meta(num_kv_heads, head_dim)
    grid = (num_tokens, triton.cdiv(num_kv_heads, meta["HEADS_PER_PROG"]))
    _store_kv_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping, num_kv_heads, k_cache.shape[1],
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        **meta, num_warps=4,
    )  # fmt: skip
