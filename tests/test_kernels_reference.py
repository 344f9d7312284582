"""The torch kernels (the engine's CPU path and the Triton kernels' definition) against a
naive dense causal attention written here from the spec, one sequence at a time, also with
a sliding window and with logit soft-capping."""

from __future__ import annotations

import pytest
import torch

from kernels.reference import store_kv_torch, unified_attention_torch
from kernels.testing import make_paged_batch, naive_attention, nan_like


# (query_lens, context_lens): every batch shape the engine produces.
BATCHES = {
    "decode_only": ([1, 1, 1, 1], [1, 17, 40, 9]),
    "prefill_only": ([13, 5, 33], [13, 5, 33]),
    "chunked_prefill": ([7, 16], [30, 50]),
    "mixed": ([1, 9, 1, 20, 1, 3], [25, 9, 1, 47, 64, 40]),
    "single_token_seq": ([1], [1]),
}
HEADS = {"mha": (4, 4), "gqa3": (6, 2), "gqa4": (8, 2)}


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", list(HEADS), ids=str)
@pytest.mark.parametrize("batch", list(BATCHES), ids=str)
def test_unified_attention_matches_naive(block_size, heads, batch):
    num_heads, num_kv_heads = HEADS[heads]
    query_lens, context_lens = BATCHES[batch]
    b = make_paged_batch(
        query_lens,
        context_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=16,
        block_size=block_size,
        seed=block_size + len(batch),
    )
    out = nan_like(b.q)
    result = unified_attention_torch(*b.args(), out=out)
    assert result is out
    expected = naive_attention(*b.args())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unified_attention_half_dtypes(head_dim, dtype):
    b = make_paged_batch(
        [1, 6, 1],
        [19, 30, 3],
        num_heads=8,
        num_kv_heads=2,
        head_dim=head_dim,
        block_size=16,
        dtype=dtype,
    )
    out = nan_like(b.q)
    unified_attention_torch(*b.args(), out=out)
    assert out.dtype == dtype
    expected = naive_attention(*b.args())
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


# Windows: only the token itself, shorter than a block, not a multiple of any block size,
# longer than some contexts (every batch has contexts below 40 and above it).
WINDOWS = [1, 5, 13, 40]


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("batch", list(BATCHES), ids=str)
def test_sliding_window_matches_naive(block_size, window, batch):
    query_lens, context_lens = BATCHES[batch]
    b = make_paged_batch(query_lens, context_lens, num_heads=6, num_kv_heads=2, head_dim=16,
                         block_size=block_size, seed=window + block_size)  # fmt: skip
    out = nan_like(b.q)
    unified_attention_torch(*b.args(), out=out, sliding_window=window)
    expected = naive_attention(*b.args(), sliding_window=window)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("softcap", [1.0, 5.0])
@pytest.mark.parametrize("batch", list(BATCHES), ids=str)
def test_softcap_matches_naive(softcap, batch):
    query_lens, context_lens = BATCHES[batch]
    b = make_paged_batch(query_lens, context_lens, num_heads=8, num_kv_heads=2, head_dim=16,
                         block_size=8, seed=3)  # fmt: skip
    b.q.mul_(4)  # logits of a few units, so that both caps bite
    out = nan_like(b.q)
    unified_attention_torch(*b.args(), out=out, softcap=softcap)
    expected = naive_attention(*b.args(), softcap=softcap)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,softcap", [(1, 2.0), (13, 5.0), (40, 1.0)])
@pytest.mark.parametrize("batch", list(BATCHES), ids=str)
def test_sliding_window_and_softcap_match_naive(window, softcap, batch):
    query_lens, context_lens = BATCHES[batch]
    b = make_paged_batch(query_lens, context_lens, num_heads=4, num_kv_heads=4, head_dim=16,
                         block_size=16, seed=window)  # fmt: skip
    b.q.mul_(4)
    out = nan_like(b.q)
    opts = dict(sliding_window=window, softcap=softcap)
    unified_attention_torch(*b.args(), out=out, **opts)
    expected = naive_attention(*b.args(), **opts)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [{"sliding_window": 13}, {"softcap": 5.0},
                                  {"sliding_window": 7, "softcap": 2.0}], ids=str)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_options_half_dtypes(dtype, opts):
    b = make_paged_batch([1, 6, 1, 9], [19, 30, 3, 9], num_heads=8, num_kv_heads=2,
                         head_dim=64, block_size=16, dtype=dtype, seed=4)  # fmt: skip
    b.q.mul_(2)
    out = nan_like(b.q)
    unified_attention_torch(*b.args(), out=out, **opts)
    assert out.dtype == dtype
    expected = naive_attention(*b.args(), **opts)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


def test_options_change_the_result_and_off_values_do_not():
    b = make_paged_batch([1, 5, 1], [30, 20, 12], num_heads=4, num_kv_heads=2, head_dim=16,
                         block_size=8)  # fmt: skip
    b.q.mul_(4)
    full = unified_attention_torch(*b.args())
    assert torch.equal(unified_attention_torch(*b.args(), softcap=0.0), full)
    assert torch.equal(unified_attention_torch(*b.args(), sliding_window=None, softcap=None), full)
    # a window at least as long as every context hides nothing
    torch.testing.assert_close(unified_attention_torch(*b.args(), sliding_window=30), full)
    windowed = unified_attention_torch(*b.args(), sliding_window=6)
    capped = unified_attention_torch(*b.args(), softcap=2.0)
    assert not torch.allclose(windowed, full, atol=1e-3)
    assert not torch.allclose(capped, full, atol=1e-3)
    # the single-token sequence has context 12 > 6 too: all three sequences change
    for rows in ([0], [1, 2, 3, 4, 5], [6]):
        assert not torch.allclose(windowed[rows], full[rows], atol=1e-3)


@pytest.mark.parametrize("opts", [{"sliding_window": 0}, {"sliding_window": -4},
                                  {"softcap": -1.0}], ids=str)  # fmt: skip
def test_invalid_options_rejected(opts):
    b = make_paged_batch([1], [5], num_heads=2, num_kv_heads=1, head_dim=16, block_size=8)
    with pytest.raises(ValueError):
        unified_attention_torch(*b.args(), **opts)


def test_unified_attention_allocates_output():
    b = make_paged_batch([3, 1], [3, 12], num_heads=4, num_kv_heads=2, head_dim=16, block_size=8)
    out = unified_attention_torch(*b.args())
    assert out.shape == b.q.shape and out.dtype == b.q.dtype
    torch.testing.assert_close(out.double(), naive_attention(*b.args()), rtol=1e-5, atol=1e-5)


def test_public_entry_point_uses_torch_on_cpu():
    import kernels

    b = make_paged_batch([1, 4], [10, 4], num_heads=4, num_kv_heads=1, head_dim=16, block_size=8)
    out = nan_like(b.q)
    kernels.unified_attention(*b.args(), out=out)
    torch.testing.assert_close(out.double(), naive_attention(*b.args()), rtol=1e-5, atol=1e-5)
    opts = dict(sliding_window=3, softcap=2.0)
    kernels.unified_attention(*b.args(), out=out, **opts)
    expected = naive_attention(*b.args(), **opts)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_store_kv_writes_only_its_slots(block_size, dtype):
    gen = torch.Generator().manual_seed(block_size)
    num_blocks, kvh, d, n = 12, 3, 16, 20
    k_cache = torch.randn(num_blocks, block_size, kvh, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kvh, d, generator=gen).to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:n]
    slots[[2, 7, 19]] = -1  # padding tokens: must not be written anywhere
    key = torch.randn(n, kvh, d, generator=gen).to(dtype)
    value = torch.randn(n, kvh, d, generator=gen).to(dtype)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expect_k[slot // block_size, slot % block_size] = key[t]
            expect_v[slot // block_size, slot % block_size] = value[t]

    store_kv_torch(key, value, k_cache, v_cache, slots.to(torch.int64))
    assert torch.equal(k_cache, expect_k)
    assert torch.equal(v_cache, expect_v)


def test_store_kv_all_skipped_and_public_entry_point():
    import kernels

    k_cache = torch.randn(4, 8, 2, 16)
    v_cache = torch.randn(4, 8, 2, 16)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    key = torch.randn(3, 2, 16)
    kernels.store_kv(key, key, k_cache, v_cache, torch.full((3,), -1, dtype=torch.int64))
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)


def test_store_then_attend_roundtrip():
    """store_kv followed by attention over the stored rows: the engine's per-layer order."""
    import kernels

    block_size, kvh, heads, d = 8, 2, 4, 16
    k_cache = torch.zeros(6, block_size, kvh, d)
    v_cache = torch.zeros(6, block_size, kvh, d)
    tables = torch.tensor([[4, 1, 3]], dtype=torch.int32)
    n = 19
    slots = torch.tensor(
        [int(tables[0, p // block_size]) * block_size + p % block_size for p in range(n)]
    )
    k, v, q = torch.randn(n, kvh, d), torch.randn(n, kvh, d), torch.randn(n, heads, d)
    kernels.store_kv(k, v, k_cache, v_cache, slots)
    cu = torch.tensor([0, n], dtype=torch.int32)
    lens = torch.tensor([n], dtype=torch.int32)
    out = kernels.unified_attention(q, k_cache, v_cache, cu, lens, tables, d**-0.5)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1).repeat_interleave(heads // kvh, 0),
        v.transpose(0, 1).repeat_interleave(heads // kvh, 0),
        is_causal=True,
    ).transpose(0, 1)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_resolve_backend():
    import kernels
    from kernels.testing import triton_mode_is_interpreted

    cpu = torch.device("cpu")
    assert kernels.resolve_backend("auto", cpu) == "torch"
    assert kernels.resolve_backend(None, "cpu") == "torch"
    assert kernels.resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.resolve_backend("cuda", cpu)
    if triton_mode_is_interpreted():
        assert kernels.resolve_backend("triton", cpu) == "triton"
    else:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kernels.resolve_backend("triton", cpu)
        b = make_paged_batch([1], [3], num_heads=2, num_kv_heads=1, head_dim=16, block_size=8)
        with pytest.raises(RuntimeError):
            kernels.unified_attention(*b.args(), backend="triton")
        with pytest.raises(RuntimeError):
            kernels.store_kv(b.q, b.q, b.k_cache, b.v_cache, torch.zeros(1, dtype=torch.int64),
                             backend="triton")  # fmt: skip


@pytest.mark.parametrize("batch", ["prefill_only", "chunked_prefill"])
def test_prefill_chunks_take_sdpas_flash_kernel_not_its_math_path(batch):
    """SDPA on the CPU runs 3-D inputs through its math path (scores materialised: 5x
    slower at 1,000 tokens); the prefill attention must hand it 4-D ones."""
    from torch.profiler import ProfilerActivity, profile

    b = make_paged_batch(*BATCHES[batch], num_heads=6, num_kv_heads=2, head_dim=16, block_size=16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        unified_attention_torch(*b.args())
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops
