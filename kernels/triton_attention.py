"""Triton unified paged attention: one launch for a mixed batch of prefill chunks and decodes.

Work unit: a tile of BLOCK_Q consecutive query tokens of one sequence x all Q_PER_KV query
heads sharing one KV head (BLOCK_M = BLOCK_Q * Q_PER_KV rows), so each K/V row is read
once for all of its query heads. The program walks the KV positions it may see in tiles of
TILE_N rows through the block table with an online (flash-attention) softmax, in the log2
domain. Tiles entirely before the tile's first query position need no mask; only the
diagonal/tail tiles are masked.

Options, each a constexpr flag so the default variant is the plain causal kernel:
SLIDING (window W: row at position p sees p - W < k <= p) starts the KV loop at the tile
holding the first row's oldest visible key, and also masks the tiles that reach before the
last row's window (the left edge); SOFTCAP (Gemma 2: s = c * tanh(s / c) on the scaled
logits) caps the scores before the mask and the log2-domain softmax.

Grid: (num_tokens // BLOCK_Q + num_seqs, num_kv_heads, num_segments). The first axis is an
upper bound on the number of query tiles, known from shapes alone (no device->host sync);
each program finds its sequence by binary search over cu_query_lens and idle ones return.
With SPLIT (flash-decoding) each program covers 1/num_segments of its sequence's KV tiles
and writes unnormalised partials; `_reduce_segments_kernel` merges them. num_segments is a
runtime argument (1..MAX_SEGMENTS), so the count can follow a growing context without a
recompile: which variant a step launches (SPLIT or not, tile shapes) depends on the batch
shape alone, never on context lengths.

`INTERPRET` is read from TRITON_INTERPRET when this module is imported, which is also when
@triton.jit decides between compiled and interpreted kernels. Under the interpreter bf16
arithmetic is wrong (bit patterns treated as integers), so loads are cast to fp32 there
(CAST_F32); the GPU path keeps 16-bit operands for tl.dot with fp32 accumulation.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.reference import check_options

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634
# Split-KV segment counts the automatic choice picks (powers of two); any count from 1
# to MAX_SEGMENTS runs in the same compiled variant (the reduce kernel masks to it).
SEGMENT_CHOICES = (2, 4, 8, 16, 32, 64)
MAX_SEGMENTS = SEGMENT_CHOICES[-1]


@triton.jit
def _find_seq(cu_q_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest s with cu_q[s] // BLOCK_Q + s <= tile: the sequence owning query tile `tile`.
    Sequence s's tiles start at cu_q[s] // BLOCK_Q + s, which leaves each sequence at least
    ceil(q_len / BLOCK_Q) tile slots, so the grid needs no per-step host bookkeeping."""
    # Tensors from the start: a plain 0 (or num_seqs == 1, which triton specialises to a
    # constant) would change type when the loop reassigns it.
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32) + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_q_ptr + mid) // BLOCK_Q + mid
        if start <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _tanh(x):
    """tanh through exp2 (not every triton has tl tanh): exp(-2|x|) is in (0, 1], so
    nothing overflows; the absolute error stays at fp32 rounding for every x."""
    e = tl.exp2(-2.8853900817779268 * tl.abs(x))  # 2 * log2(e)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _attend_tile(
    j,
    q,
    m_i,
    l_i,
    acc,
    k_cache_ptr,
    v_cache_ptr,
    bt_row_ptr,
    kv_head,
    row_pos,
    kv_end,
    offs_d,
    d_ok,
    qk_scale,
    softcap_log2,
    window,
    stride_k_blk,
    stride_k_slot,
    stride_k_head,
    stride_v_blk,
    stride_v_slot,
    stride_v_head,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    MASKED: tl.constexpr,
    DIM_MASKED: tl.constexpr,
    CAST_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """One online-softmax step over KV positions [j * TILE_N, (j + 1) * TILE_N).
    qk_scale: scale * log2(e), or scale / softcap with SOFTCAP (then the capped logits
    are scaled by softcap_log2 = softcap * log2(e))."""
    pos = j * TILE_N + tl.arange(0, TILE_N)
    pos_ok = pos < kv_end
    if MASKED:
        blk = tl.load(bt_row_ptr + pos // BLOCK_SIZE, mask=pos_ok, other=0)
    else:
        blk = tl.load(bt_row_ptr + pos // BLOCK_SIZE)
    # int64: block * block stride overflows int32 for caches above 2**31 elements.
    slot_k = blk.to(tl.int64) * stride_k_blk + (pos % BLOCK_SIZE) * stride_k_slot
    slot_v = blk.to(tl.int64) * stride_v_blk + (pos % BLOCK_SIZE) * stride_v_slot
    k_ptrs = k_cache_ptr + slot_k[:, None] + kv_head * stride_k_head + offs_d[None, :]
    v_ptrs = v_cache_ptr + slot_v[:, None] + kv_head * stride_v_head + offs_d[None, :]
    # Masked-out rows load 0, never the slot's content: a free slot may hold NaN and
    # 0 * NaN would poison P @ V.
    if MASKED:
        if DIM_MASKED:
            kv_mask = pos_ok[:, None] & d_ok[None, :]
        else:
            kv_mask = pos_ok[:, None]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif DIM_MASKED:
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if CAST_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if SOFTCAP:
        s = _tanh(s) * softcap_log2
    if MASKED:
        seen = (pos[None, :] <= row_pos[:, None]) & pos_ok[None, :]
        if SLIDING:
            seen = seen & (pos[None, :] > row_pos[:, None] - window)
        s = tl.where(seen, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        # A row that has seen nothing yet keeps m = -inf; exp2(-inf - -inf) would be NaN.
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


# Triton specialises integer arguments equal to 1 or divisible by 16 into separate
# compiled variants; the batch size, the block-table width and the segment count change
# from step to step, so they stay generic (no recompiles mid-serving).
@triton.jit(do_not_specialize=["num_seqs", "stride_bt", "window", "num_segments"])
def _attention_kernel(
    out_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    cu_q_ptr,
    seg_acc_ptr,
    seg_m_ptr,
    seg_l_ptr,
    qk_scale,
    softcap_log2,
    window,
    num_seqs,
    num_heads,
    num_segments,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_k_blk,
    stride_k_slot,
    stride_k_head,
    stride_v_blk,
    stride_v_slot,
    stride_v_head,
    stride_bt,
    Q_PER_KV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT: tl.constexpr,
    CAST_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seg = tl.program_id(2)

    seq = _find_seq(cu_q_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    local = tile - (q_start // BLOCK_Q + seq)
    if local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_before = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    row_tok = local * BLOCK_Q + rows // Q_PER_KV
    row_head = kv_head * Q_PER_KV + rows % Q_PER_KV
    # rows past BLOCK_Q * Q_PER_KV exist only when Q_PER_KV does not divide BLOCK_M
    row_ok = (rows // Q_PER_KV < BLOCK_Q) & (row_tok < q_len)
    row_pos = ctx_before + row_tok
    offs_d = tl.arange(0, HEAD_PAD)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = (
        q_ptr
        + (q_start + row_tok)[:, None] * stride_q_tok
        + row_head[:, None] * stride_q_head
        + offs_d[None, :]
    )
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if CAST_F32:
        q = q.to(tl.float32)

    # This tile sees positions [0, kv_end); all its rows see [0, first_pos].
    kv_end = ctx_before + tl.minimum((local + 1) * BLOCK_Q, q_len)
    first_pos = ctx_before + local * BLOCK_Q
    num_tiles = tl.cdiv(kv_end, TILE_N)
    num_full = (first_pos + 1) // TILE_N
    if SLIDING:
        # Rows see (row_pos - window, row_pos]. Tiles before first_tile (the one holding the
        # first row's oldest key) are skipped; those before first_full reach past the start
        # of the last row's window (kv_end - window) and are masked like the diagonal ones.
        first_tile = tl.maximum(first_pos + 1 - window, 0) // TILE_N
        first_full = tl.cdiv(tl.maximum(kv_end - window, 0), TILE_N)
        first_full = tl.minimum(tl.maximum(first_full, first_tile), num_full)
    else:
        first_tile = 0
    if SPLIT:
        per_seg = tl.cdiv(num_tiles - first_tile, num_segments)
        lo = first_tile + seg * per_seg
        hi = tl.minimum(lo + per_seg, num_tiles)
    else:
        lo = first_tile
        hi = num_tiles

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    bt_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    if SLIDING:
        for j in range(tl.maximum(lo, first_full), tl.minimum(hi, num_full)):
            m_i, l_i, acc = _attend_tile(
                j, q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
                row_pos, kv_end, offs_d, d_ok, qk_scale, softcap_log2, window,
                stride_k_blk, stride_k_slot, stride_k_head,
                stride_v_blk, stride_v_slot, stride_v_head,
                BLOCK_SIZE, TILE_N, False, HEAD_PAD != HEAD_DIM, CAST_F32, DOT_PRECISION,
                SLIDING, SOFTCAP,
            )  # fmt: skip
        # The masked tiles, the left edge [lo, first_full) then the diagonal [num_full, hi),
        # in one loop: a third loop costs ~40-80 registers more (compile test, ptxas).
        n_left = tl.maximum(tl.minimum(hi, first_full) - lo, 0)
        diag_lo = tl.maximum(lo, num_full)
        for t in range(0, n_left + tl.maximum(hi - diag_lo, 0)):
            j = tl.where(t < n_left, lo + t, diag_lo + t - n_left)
            m_i, l_i, acc = _attend_tile(
                j, q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
                row_pos, kv_end, offs_d, d_ok, qk_scale, softcap_log2, window,
                stride_k_blk, stride_k_slot, stride_k_head,
                stride_v_blk, stride_v_slot, stride_v_head,
                BLOCK_SIZE, TILE_N, True, HEAD_PAD != HEAD_DIM, CAST_F32, DOT_PRECISION,
                SLIDING, SOFTCAP,
            )  # fmt: skip
    else:
        for j in range(lo, tl.minimum(hi, num_full)):
            m_i, l_i, acc = _attend_tile(
                j, q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
                row_pos, kv_end, offs_d, d_ok, qk_scale, softcap_log2, window,
                stride_k_blk, stride_k_slot, stride_k_head,
                stride_v_blk, stride_v_slot, stride_v_head,
                BLOCK_SIZE, TILE_N, False, HEAD_PAD != HEAD_DIM, CAST_F32, DOT_PRECISION,
                SLIDING, SOFTCAP,
            )  # fmt: skip
        for j in range(tl.maximum(lo, num_full), hi):
            m_i, l_i, acc = _attend_tile(
                j, q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
                row_pos, kv_end, offs_d, d_ok, qk_scale, softcap_log2, window,
                stride_k_blk, stride_k_slot, stride_k_head,
                stride_v_blk, stride_v_slot, stride_v_head,
                BLOCK_SIZE, TILE_N, True, HEAD_PAD != HEAD_DIM, CAST_F32, DOT_PRECISION,
                SLIDING, SOFTCAP,
            )  # fmt: skip

    tok = q_start + row_tok
    if SPLIT:
        # Partials per (token, head, segment); a segment that saw nothing of a row (no
        # tile, or only masked ones, which leave m = 0) stores m = -inf, l = 0.
        idx = (tok * num_heads + row_head) * num_segments + seg
        tl.store(seg_m_ptr + idx, tl.where(l_i > 0, m_i, float("-inf")), mask=row_ok)
        tl.store(seg_l_ptr + idx, l_i, mask=row_ok)
        acc_ptrs = seg_acc_ptr + idx[:, None].to(tl.int64) * HEAD_PAD + offs_d[None, :]
        tl.store(acc_ptrs, acc, mask=row_ok[:, None])
    else:
        out = acc / l_i[:, None]
        o_ptrs = (
            out_ptr
            + tok[:, None] * stride_o_tok
            + row_head[:, None] * stride_o_head
            + offs_d[None, :]
        )
        tl.store(
            o_ptrs,
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )


@triton.jit(do_not_specialize=["num_segments"])
def _reduce_segments_kernel(
    out_ptr,
    seg_acc_ptr,
    seg_m_ptr,
    seg_l_ptr,
    num_heads,
    num_segments,
    stride_o_tok,
    stride_o_head,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    MAX_SEGMENTS: tl.constexpr,
):
    """Merge one (token, head)'s num_segments partials (<= MAX_SEGMENTS, a power of two:
    tl.arange needs a constexpr size) with log-sum-exp weights."""
    tok = tl.program_id(0)
    head = tl.program_id(1)
    segs = tl.arange(0, MAX_SEGMENTS)
    offs_d = tl.arange(0, HEAD_PAD)
    idx = (tok * num_heads + head) * num_segments + segs
    m = tl.load(seg_m_ptr + idx, mask=segs < num_segments, other=float("-inf"))
    live = m > float("-inf")
    m_max = tl.max(m, 0)
    w = tl.where(live, tl.exp2(m - m_max), 0.0)
    l_sum = tl.sum(tl.load(seg_l_ptr + idx, mask=live, other=0.0) * w, 0)
    acc_ptrs = seg_acc_ptr + idx[:, None].to(tl.int64) * HEAD_PAD + offs_d[None, :]
    acc = tl.load(acc_ptrs, mask=live[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / l_sum
    o_ptrs = out_ptr + tok * stride_o_tok + head * stride_o_head + offs_d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


@dataclass(frozen=True)
class AttentionConfig:
    """Every compile-time choice of one launch (the compile test enumerates these)."""

    q_per_kv: int
    head_dim: int
    head_pad: int
    block_size: int
    tile_n: int
    block_q: int
    block_m: int
    num_segments: int  # a runtime argument, not compiled in: 1..MAX_SEGMENTS
    num_warps: int
    num_stages: int
    sliding: bool = False  # SLIDING: sliding-window mask and KV-tile skipping
    softcap: bool = False  # SOFTCAP: tanh logit capping
    split: bool = False  # SPLIT: partials per segment + the reduce kernel (flash-decoding)


def choose_config(
    *,
    num_tokens: int,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    max_context_bound: int,
    num_sms: int,
    decode_only: bool,
    num_segments: int | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> AttentionConfig:
    """Pick tile shapes and split-KV from shapes and caller-supplied bounds only.

    decode_only: every sequence brings exactly one query token (the caller knows: max query
    length 1). num_segments: None = automatic, 1 = no split, >1 = forced split.
    sliding_window / softcap: the attention options (None = off); a window bounds the KV
    a decode reads, so it also bounds the automatic segment count.

    The automatic choice splits a decode batch that cannot fill the GPU by itself, whatever
    its contexts: the compiled variant then stays the same while a context grows, and only
    the runtime segment count (from max_context_bound, at least 1) follows it.
    """
    q_per_kv = num_heads // num_kv_heads
    head_pad = max(16, triton.next_power_of_2(head_dim))
    min_m = max(16, triton.next_power_of_2(q_per_kv))  # tl.dot needs M >= 16
    if dtype == torch.float32:
        # Exact fp32 dots run on FMA units with large register fragments: small tiles
        # keep them out of local memory (checked with ptxas in the compile test).
        block_m, tile_n, num_warps = min_m, 16, 4
    elif decode_only:
        # One useful row per sequence and KV head: keep the tile at tl.dot's minimum.
        block_m, tile_n, num_warps = min_m, 64 if head_pad <= 128 else 32, 4
    elif head_pad <= 128:
        block_m, tile_n, num_warps = max(64, min_m), 64, 8
    else:
        block_m, tile_n, num_warps = max(32, min_m), 32, 4
    num_stages = 1 if dtype == torch.float32 and head_pad > 128 else 2
    if num_segments is None:
        span = max_context_bound
        if sliding_window is not None:  # W positions touch at most cdiv(W - 1, TILE_N) + 1 tiles
            span = min(span, sliding_window + tile_n - 1)
        programs = num_seqs * num_kv_heads
        split = decode_only and programs < num_sms
        num_segments = _auto_segments(programs, span, tile_n, num_sms) if split else 1
    else:
        if not 1 <= num_segments <= MAX_SEGMENTS:
            raise ValueError(f"num_segments must be in 1..{MAX_SEGMENTS}, got {num_segments}")
        split = num_segments > 1
    return AttentionConfig(
        q_per_kv=q_per_kv,
        head_dim=head_dim,
        head_pad=head_pad,
        block_size=block_size,
        tile_n=tile_n,
        block_q=block_m // q_per_kv,
        block_m=block_m,
        num_segments=num_segments,
        num_warps=num_warps,
        num_stages=num_stages,
        sliding=sliding_window is not None,
        softcap=bool(softcap),
        split=split,
    )


def _auto_segments(programs: int, max_context_bound: int, tile_n: int, num_sms: int) -> int:
    """Segments of a split decode batch: aim for about four programs per SM, never more
    segments than KV tiles (a one-tile context gets 1: the split variant still runs)."""
    want = triton.next_power_of_2(triton.cdiv(4 * num_sms, programs))
    tiles = triton.cdiv(max_context_bound, tile_n)
    segs = min(want, MAX_SEGMENTS)
    while segs > 1 and segs > tiles:
        segs //= 2
    return segs


def kernel_constexprs(
    cfg: AttentionConfig, dtype: torch.dtype, interpret: bool | None = None
) -> dict:
    """The compile-time arguments of `_attention_kernel` for one launch (the compile test
    enumerates variants through this too): everything that selects a compiled variant.
    interpret: CAST_F32, by default this module's INTERPRET (read at call time)."""
    interpret = INTERPRET if interpret is None else interpret
    return {
        "Q_PER_KV": cfg.q_per_kv, "HEAD_DIM": cfg.head_dim, "HEAD_PAD": cfg.head_pad,
        "BLOCK_SIZE": cfg.block_size, "TILE_N": cfg.tile_n, "BLOCK_Q": cfg.block_q,
        "BLOCK_M": cfg.block_m, "SPLIT": cfg.split, "CAST_F32": interpret,
        "DOT_PRECISION": _dot_precision(dtype), "SLIDING": cfg.sliding, "SOFTCAP": cfg.softcap,
    }  # fmt: skip


def reduce_constexprs(cfg: AttentionConfig) -> dict:
    """The compile-time arguments of `_reduce_segments_kernel` (independent of the count)."""
    return {"HEAD_DIM": cfg.head_dim, "HEAD_PAD": cfg.head_pad, "MAX_SEGMENTS": MAX_SEGMENTS}


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    # The interpreter: pretend a small GPU so automatic choices stay cheap to run.
    return 8


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 caches promise fp32 results: no TF32 rounding (1e-3) inside tl.dot.
    return "ieee" if dtype == torch.float32 else "tf32"


def unified_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    num_segments: int | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """See kernels.unified_attention. max_query_len / max_seq_len are optional host-side
    hints (the engine knows them without a sync); without them the choice falls back to
    shapes: all decodes iff num_tokens == num_seqs, contexts bounded by the table width.
    sliding_window / softcap: as in kernels.unified_attention (None = off)."""
    _check_inputs(q, k_cache, v_cache)
    window, softcap = check_options(sliding_window, softcap)
    # A window at least as wide as the block table can address hides nothing: launch the
    # plain causal variant. (The table width is a hard bound; max_seq_len is only a hint.)
    if window is not None and window >= block_tables.shape[1] * k_cache.shape[1]:
        window = None
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0 or seq_lens.shape[0] == 0:
        return out
    cfg = config_for(
        q, k_cache, seq_lens, block_tables, max_query_len, max_seq_len, num_segments,
        sliding_window=window, softcap=softcap,
    )  # fmt: skip
    _launch(
        q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out, cfg,
        window=window, softcap=softcap,
    )  # fmt: skip
    return out


def config_for(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    num_segments: int | None = None,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> AttentionConfig:
    """The configuration `unified_attention_triton` launches for these tensors (shapes only)."""
    num_tokens, num_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    _, block_size, num_kv_heads, _ = k_cache.shape
    decode_only = max_query_len == 1 if max_query_len is not None else num_tokens == num_seqs
    bound = max_seq_len if max_seq_len is not None else block_tables.shape[1] * block_size
    return choose_config(
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=k_cache.dtype,
        max_context_bound=bound,
        num_sms=_num_sms(q.device),
        decode_only=decode_only,
        num_segments=num_segments,
        sliding_window=sliding_window,
        softcap=softcap,
    )


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.dtype != k_cache.dtype or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"triton attention needs one dtype for q, k_cache, v_cache; got "
            f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"num_heads {q.shape[1]} is not a multiple of num_kv_heads {k_cache.shape[2]}")
    block_size = k_cache.shape[1]
    if block_size < 8 or block_size > 128 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two in 8..128, got {block_size}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache/v_cache need a contiguous head_dim")


def _launch(
    q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out, cfg,
    *, window=None, softcap=None,
):  # fmt: skip
    assert cfg.sliding == (window is not None) and cfg.softcap == bool(softcap)
    if cfg.softcap:  # the kernel caps (scale / softcap) * QK^T, then multiplies by this
        qk_scale, softcap_log2 = scale / softcap, softcap * LOG2E
    else:
        qk_scale, softcap_log2 = scale * LOG2E, 0.0
    if q.stride(-1) != 1:
        q = q.contiguous()
    target = out if out.stride(-1) == 1 else torch.empty_like(q)
    num_tokens, num_heads, _ = q.shape
    num_seqs, num_kv_heads = seq_lens.shape[0], k_cache.shape[2]
    split = cfg.split
    if split:
        seg_m = torch.empty(num_tokens, num_heads, cfg.num_segments, device=q.device)
        seg_l = torch.empty_like(seg_m)
        seg_acc = torch.empty(
            num_tokens, num_heads, cfg.num_segments, cfg.head_pad, device=q.device
        )
    else:
        seg_m = seg_l = seg_acc = target  # unused: any pointer does
    grid = (num_tokens // cfg.block_q + num_seqs, num_kv_heads, cfg.num_segments)
    _attention_kernel[grid](
        target, q, k_cache, v_cache, block_tables, seq_lens, cu_query_lens,
        seg_acc, seg_m, seg_l,
        qk_scale, softcap_log2, window or 0, num_seqs, num_heads, cfg.num_segments,
        q.stride(0), q.stride(1), target.stride(0), target.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        **kernel_constexprs(cfg, k_cache.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if split:
        _reduce_segments_kernel[(num_tokens, num_heads)](
            target, seg_acc, seg_m, seg_l, num_heads, cfg.num_segments,
            target.stride(0), target.stride(1),
            **reduce_constexprs(cfg), num_warps=4,
        )  # fmt: skip
    if target is not out:
        out.copy_(target)
