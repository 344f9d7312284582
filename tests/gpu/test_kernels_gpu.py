"""Triton kernels against the torch reference on CUDA, bf16/fp16 at realistic sizes.

Marked `gpu` and skipped without CUDA. Also runs without pytest (the bare GPU image may
lack it): `PYTHONPATH=. python tests/gpu/test_kernels_gpu.py` runs every case and exits
non-zero on a failure. Checks are plain functions; the pytest wrappers sit at the bottom.
"""

from __future__ import annotations

import sys
import time
import traceback

import torch

from kernels.reference import store_kv_torch, unified_attention_torch
from kernels.testing import (
    KERNEL_REL_L2,
    KERNEL_TOL,
    assert_kernel_close,
    make_paged_batch,
    nan_like,
)

try:
    import pytest
except ImportError:  # the bare GPU image: run through main()
    pytest = None

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda"  # a dry run on the CPU interpreter may set "cpu"
# One table with the CPU interpreter tests (kernels/testing.py; tests/test_kernels_triton.py
# checks that both use it): elementwise, and relative L2 over the whole output.
TOL = KERNEL_TOL
REL_L2 = KERNEL_REL_L2


def _lens(gen: torch.Generator, n: int, lo: int, hi: int) -> list[int]:
    return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()


def _batch(kind: str, seed: int) -> tuple[list[int], list[int]]:
    """(query_lens, context_lens) of a named batch shape."""
    g = torch.Generator().manual_seed(seed)
    if kind == "decode64":
        ctx = _lens(g, 64, 1, 4096)
        return [1] * 64, ctx
    if kind == "decode3_long":
        return [1, 1, 1], [8001, 5555, 77]
    if kind == "prefill":
        return [1500, 777, 1], [1500, 777, 1]
    if kind == "chunked":
        return [512, 300], [3000, 1000]
    if kind == "mixed":
        ctx = _lens(g, 20, 1, 3000)
        q = [1] * 16 + [257, 1000, 64, 130]
        ctx[16:] = [257, 2500, 64, 1333]
        return q, ctx
    raise ValueError(kind)


# (name, batch, (heads, kv_heads), head_dim, block_size, dtype, split_kv)
CASES = [
    ("decode64-auto", "decode64", (32, 8), 128, 16, torch.bfloat16, None),
    ("decode3-split", "decode3_long", (32, 8), 128, 16, torch.bfloat16, True),
    ("decode3-nosplit", "decode3_long", (32, 8), 128, 16, torch.float16, False),
    ("decode3-auto-fp16", "decode3_long", (32, 8), 128, 16, torch.float16, None),
    ("prefill-bf16", "prefill", (32, 8), 128, 16, torch.bfloat16, None),
    ("prefill-fp16", "prefill", (32, 8), 128, 16, torch.float16, None),
    ("chunked-bf16", "chunked", (32, 8), 128, 32, torch.bfloat16, None),
    ("mixed-bf16", "mixed", (32, 8), 128, 16, torch.bfloat16, None),
    ("mixed-fp16", "mixed", (32, 8), 128, 16, torch.float16, None),
    ("mixed-smollm2", "mixed", (9, 3), 64, 16, torch.bfloat16, None),
    ("mixed-mha-d64-bs8", "mixed", (16, 16), 64, 8, torch.float16, None),
    ("mixed-d80-bs64", "mixed", (32, 4), 80, 64, torch.bfloat16, None),
    ("mixed-d96-bs128", "mixed", (24, 8), 96, 128, torch.float16, None),
    ("mixed-d256", "mixed", (8, 4), 256, 16, torch.bfloat16, None),
    ("decode3-d256-split", "decode3_long", (8, 4), 256, 32, torch.bfloat16, True),
    ("decode3-d80-split", "decode3_long", (32, 4), 80, 16, torch.float16, True),
    ("mixed-fp32", "mixed", (32, 8), 128, 16, torch.float32, None),
    # Sliding windows (Mistral's 4096, a short one that skips many tiles) and Gemma 2's
    # softcap: (…, options for unified_attention).
    ("mixed-window1024", "mixed", (32, 8), 128, 16, torch.bfloat16, None, {"sliding_window": 1024}),
    ("decode3-window4096-split", "decode3_long", (32, 8), 128, 16, torch.bfloat16, True,
     {"sliding_window": 4096}),
    ("decode64-window300-auto", "decode64", (32, 8), 128, 16, torch.float16, None,
     {"sliding_window": 300}),
    ("mixed-gemma2-d256", "mixed", (8, 4), 256, 16, torch.bfloat16, None,
     {"sliding_window": 4096, "softcap": 50.0}),
    ("decode3-softcap-split", "decode3_long", (16, 8), 256, 16, torch.bfloat16, True, {"softcap": 50.0}),
]  # fmt: skip


def check_attention(case) -> None:
    import kernels

    _, kind, heads, head_dim, block_size, dtype, split, *rest = case
    options = rest[0] if rest else {}
    query_lens, context_lens = _batch(kind, seed=head_dim + block_size)
    b = make_paged_batch(
        query_lens, context_lens, num_heads=heads[0], num_kv_heads=heads[1],
        head_dim=head_dim, block_size=block_size, dtype=dtype, device=DEVICE,
        spare_blocks=64, seed=block_size,
    )  # fmt: skip
    out = nan_like(b.q)
    kernels.unified_attention(*b.args(), out=out, backend="triton", split_kv=split, **options)
    ref = unified_attention_torch(*b.args(), **options).float()
    _compare(out, ref, dtype)


def _compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert_kernel_close(out, ref, dtype)


def check_large_cache_int64_offsets() -> None:
    """Blocks past 2**31 elements: offsets must be computed in int64."""
    import kernels

    block_size, kvh, d, dtype = 16, 8, 128, torch.bfloat16
    elems_per_block = block_size * kvh * d
    num_blocks = 2**31 // elems_per_block + 64  # each cache ~4.3 GB
    b = make_paged_batch(
        [1, 40], [300, 900], num_heads=32, num_kv_heads=kvh, head_dim=d,
        block_size=block_size, dtype=dtype, device=DEVICE, spare_blocks=0,
    )  # fmt: skip
    k_big = torch.empty(num_blocks, block_size, kvh, d, dtype=dtype, device=DEVICE)
    v_big = torch.empty_like(k_big)
    high = num_blocks - b.k_cache.shape[0]  # move every block above the 2**31 boundary
    k_big[high:] = b.k_cache
    v_big[high:] = b.v_cache
    tables = b.block_tables + high
    args = (b.q, k_big, v_big, b.cu_query_lens, b.seq_lens, tables, b.scale)
    for split in (False, True):
        out = nan_like(b.q)
        kernels.unified_attention(*args, out=out, backend="triton", split_kv=split)
        _compare(out, unified_attention_torch(*b.args()).float(), dtype)
    # store_kv into the high blocks
    n = 64
    slots = torch.arange(n, device=DEVICE) + (num_blocks - 8) * block_size
    slots[::7] = -1
    key = torch.randn(n, kvh, d, device=DEVICE, dtype=dtype)
    kernels.store_kv(key, key, k_big, v_big, slots, backend="triton")
    flat = k_big.view(-1, kvh, d)
    keep = slots >= 0
    assert torch.equal(flat[slots[keep]], key[keep])
    del k_big, v_big
    torch.cuda.empty_cache()


STORE_CASES = [
    (torch.bfloat16, 16, 8, 128, 4096),
    (torch.float16, 32, 3, 64, 1000),
    (torch.float32, 8, 4, 80, 333),
    (torch.bfloat16, 128, 4, 256, 2048),
]


def check_store_kv(case) -> None:
    import kernels

    dtype, block_size, kvh, d, n = case
    g = torch.Generator(device=DEVICE).manual_seed(n)
    num_blocks = n // block_size + 40
    k_cache = torch.randn(num_blocks, block_size, kvh, d, device=DEVICE, generator=g).to(dtype)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE, generator=g)[:n]
    slots[::5] = -1
    kv = torch.randn(n, 2, kvh, d, device=DEVICE, generator=g).to(dtype)
    key, value = kv[:, 0], kv[:, 1]  # strided views, like a fused projection's output
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    store_kv_torch(key, value, ref_k, ref_v, slots)
    kernels.store_kv(key, value, k_cache, v_cache, slots, backend="triton")
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def check_second_device() -> None:
    """Tensors on cuda:1 while cuda:0 is current: the kernels launch on cuda:1 (Triton
    launches on the current device unless kernels switches to the tensors')."""
    import kernels

    device = "cuda:1"
    assert torch.cuda.current_device() == 0
    b = make_paged_batch(
        [1, 30, 1], [700, 30, 1200], num_heads=8, num_kv_heads=2, head_dim=128,
        block_size=16, dtype=torch.bfloat16, device=device,
    )  # fmt: skip
    for split in (False, True):
        out = nan_like(b.q)
        kernels.unified_attention(*b.args(), out=out, backend="triton", split_kv=split)
        torch.cuda.synchronize(device)
        _compare(out, unified_attention_torch(*b.args()).float(), torch.bfloat16)
    slots = torch.arange(32, device=device)
    slots[::3] = -1
    key = torch.randn(32, 2, 128, device=device, dtype=torch.bfloat16)
    ref_k, ref_v = b.k_cache.clone(), b.v_cache.clone()
    store_kv_torch(key, key, ref_k, ref_v, slots)
    kernels.store_kv(key, key, b.k_cache, b.v_cache, slots, backend="triton")
    assert torch.equal(b.k_cache, ref_k) and torch.equal(b.v_cache, ref_v)
    assert torch.cuda.current_device() == 0


def check_backend_choice() -> None:
    import kernels

    assert kernels.resolve_backend("auto", torch.device("cuda")) == "triton"
    assert kernels.resolve_backend("triton", "cuda") == "triton"


def _all_checks():
    yield "backend_choice", check_backend_choice
    for case in CASES:
        yield f"attention[{case[0]}]", lambda c=case: check_attention(c)
    for case in STORE_CASES:
        yield f"store_kv[{case[0]}-bs{case[1]}-d{case[3]}]", lambda c=case: check_store_kv(c)
    yield "large_cache_int64_offsets", check_large_cache_int64_offsets
    if torch.cuda.device_count() >= 2:
        yield "second_device", check_second_device


def main() -> int:
    if not HAS_CUDA:
        print("no CUDA device: nothing to run")
        return 0
    failed = 0
    for name, fn in _all_checks():
        t0 = time.perf_counter()
        try:
            fn()
            status = "ok"
        except Exception:  # report every case, then fail at the end
            failed += 1
            status = "FAILED"
            traceback.print_exc()
        print(f"{status:7s} {name} ({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"{failed} failed" if failed else "all passed")
    return 1 if failed else 0


if pytest is not None:
    pytestmark = [
        pytest.mark.gpu,
        pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
    ]

    @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
    def test_attention_matches_reference(case):
        check_attention(case)

    @pytest.mark.parametrize("case", STORE_CASES, ids=lambda c: str(c).replace("torch.", ""))
    def test_store_kv_matches_reference(case):
        check_store_kv(case)

    def test_large_cache_int64_offsets():
        check_large_cache_int64_offsets()

    def test_backend_choice():
        check_backend_choice()

    @pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
    def test_second_device():
        check_second_device()


if __name__ == "__main__":
    sys.exit(main())
