"""The Triton kernels against the torch reference on fresh random inputs, on the CPU through
Triton's interpreter (TRITON_INTERPRET=1).

How the interpreter is switched on: @triton.jit picks interpreted or compiled kernels when
kernels.triton_* is first imported (kernels/__init__ imports them lazily, on first use).
So this file never touches os.environ in the pytest process (which would leak into every
later test file, e.g. turn GPU tests into interpreter runs). If this process is not already
in interpreter mode, the whole file runs in one child pytest with TRITON_INTERPRET=1 (one
test here, ~1-2 min; its log shows the failing cases). `TRITON_INTERPRET=1 pytest
tests/test_kernels_triton.py` runs the cases directly, one by one.

bf16: in the interpreter bf16 arithmetic (and tl.dot) is silently wrong, so under the
interpreter the attention kernel casts its loads to fp32 (CAST_F32, fixed at import); with
that, bf16 caches pass at the bf16 tolerance. `test_interpreter_bf16_needs_fp32_loads`
records what the uncast kernel does. The GPU keeps 16-bit tl.dot operands.

Sliding window and softcap: against the torch reference with the same options, split and
not, on batches long enough that whole KV tiles fall before the window and are skipped.

Shapes are tiny (the interpreter costs ~2.6 ms per program plus numpy per tile).

Tolerances: kernels.testing's KERNEL_TOL / KERNEL_REL_L2, the table the GPU tests use too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from kernels.testing import KERNEL_TOL, run_pytest_file, triton_mode_is_interpreted

TOL = KERNEL_TOL


def test_one_tolerance_table_for_cpu_and_gpu_kernel_tests():
    """The interpreter tests here and tests/gpu/test_kernels_gpu.py compare against the
    reference with the same table (kernels.testing), looser as the dtype gets coarser."""
    path = Path(__file__).parent / "gpu" / "test_kernels_gpu.py"
    spec = importlib.util.spec_from_file_location("_gpu_kernel_tests", path)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    from kernels import testing

    assert TOL is testing.KERNEL_TOL and gpu.TOL is testing.KERNEL_TOL
    assert gpu.REL_L2 is testing.KERNEL_REL_L2
    assert set(TOL) == set(testing.KERNEL_REL_L2) == {torch.float32, torch.float16, torch.bfloat16}
    order = [torch.float32, torch.float16, torch.bfloat16]
    for name in ("rtol", "atol"):
        assert [TOL[d][name] for d in order] == sorted(TOL[d][name] for d in order)
    assert [testing.KERNEL_REL_L2[d] for d in order] == sorted(testing.KERNEL_REL_L2.values())


def test_triton_calls_run_under_the_tensors_cuda_device(monkeypatch):
    """kernels.store_kv / unified_attention enter `_on_device(tensor.device)` around the
    Triton call (Triton launches on the current device, not the tensors'); the Triton
    modules are stand-ins here, so this runs without a GPU or the interpreter."""
    import contextlib

    import kernels

    current: list = []
    calls: list = []

    @contextlib.contextmanager
    def on_device(device):
        current.append(device)
        yield
        current.pop()

    class FakeTriton:
        def store_kv_triton(self, key, *args):
            calls.append(("store_kv", list(current)))

        def unified_attention_triton(self, q, *args, **kwargs):
            calls.append(("attention", list(current)))
            return q

    monkeypatch.setattr(kernels, "_on_device", on_device)
    monkeypatch.setattr(kernels, "_triton", lambda name: FakeTriton())
    monkeypatch.setattr(kernels, "resolve_backend", lambda requested, device: "triton")
    x = torch.zeros(2, 1, 16)
    kernels.store_kv(x, x, x, x, torch.zeros(2, dtype=torch.long), backend="triton")
    kernels.unified_attention(x, x, x, x, x, x, 1.0, backend="triton")
    assert calls == [("store_kv", [x.device]), ("attention", [x.device])]
    assert current == []


def test_on_device_switches_to_the_tensors_gpu(monkeypatch):
    import contextlib

    import kernels

    entered: list = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        entered.append(torch.device(device))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    monkeypatch.setattr(kernels, "_single_gpu", lambda: False)
    with kernels._on_device(torch.device("cuda:1")):
        assert entered == [torch.device("cuda:1")]
    with kernels._on_device(torch.device("cpu")):
        pass
    monkeypatch.setattr(kernels, "_single_gpu", lambda: True)  # one GPU: nothing to switch
    with kernels._on_device(torch.device("cuda:0")):
        pass
    assert entered == [torch.device("cuda:1")]


if not triton_mode_is_interpreted():

    def test_interpreter_suite_in_child_process():
        rc, log = run_pytest_file(__file__, interpret=True)
        assert rc == 0, log[-8000:]

else:
    import dataclasses

    import kernels
    from kernels import triton_attention as ta
    from kernels.reference import store_kv_torch, unified_attention_torch
    from kernels.testing import assert_kernel_close, make_paged_batch, nan_like
    from kernels.triton_store_kv import store_kv_triton

    # (query_lens, context_lens); contexts are not multiples of the block sizes.
    BATCHES = {
        "decode": ([1, 1, 1, 1], [1, 23, 70, 9]),
        "prefill": ([13, 5, 37], [13, 5, 37]),
        "chunked": ([7, 16], [45, 50]),  # prefill chunks after cached context
        "mixed": ([1, 9, 1, 20, 3, 1], [25, 9, 1, 47, 40, 66]),
        "len1": ([1], [1]),
    }
    # For the window: contexts of several KV tiles (16 in fp32, 64 in 16-bit decode), so
    # that tiles wholly before a window are skipped and split segments start past 0.
    LONG_BATCHES = {
        "long_decode": ([1, 1, 1], [150, 77, 3]),
        "long_mixed": ([1, 24, 1, 5], [130, 60, 9, 5]),
    }
    DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

    def _run(batch, *, dtype, heads=(8, 2), head_dim=64, block_size=16, seed=0,
             sliding_window=None, softcap=None, **kw):  # fmt: skip
        query_lens, context_lens = {**BATCHES, **LONG_BATCHES}[batch]
        b = make_paged_batch(
            query_lens,
            context_lens,
            num_heads=heads[0],
            num_kv_heads=heads[1],
            head_dim=head_dim,
            block_size=block_size,
            dtype=dtype,
            seed=seed,
        )
        out = nan_like(b.q)
        opts = dict(sliding_window=sliding_window, softcap=softcap)
        ta.unified_attention_triton(*b.args(), out=out, **opts, **kw)
        expected = unified_attention_torch(*b.args(), **opts)
        assert_kernel_close(out, expected, dtype)

    @pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
    @pytest.mark.parametrize("batch", list(BATCHES))
    def test_batches_no_split(batch, dtype):
        _run(batch, dtype=dtype, num_segments=1, seed=len(batch))

    @pytest.mark.parametrize(
        "ratio,head_dim,block_size",
        [(1, 64, 8), (1, 80, 32), (4, 80, 16), (4, 64, 32), (8, 64, 16), (8, 80, 8), (3, 80, 16)],
    )
    def test_gqa_head_sizes_block_sizes(ratio, head_dim, block_size):
        heads = (2 * ratio, 2)
        _run("mixed", dtype=torch.float16, heads=heads, head_dim=head_dim, block_size=block_size)

    @pytest.mark.parametrize("block_size", [8, 16, 32])
    def test_block_sizes_fp32(block_size):
        _run("chunked", dtype=torch.float32, block_size=block_size, seed=block_size)

    @pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
    @pytest.mark.parametrize("batch", ["decode", "mixed", "len1"])
    def test_split_kv(batch, dtype):
        # The split kernel is general (any query length), so mixed batches must work too.
        _run(batch, dtype=dtype, num_segments=4, head_dim=80, seed=7)

    def test_split_kv_max_segments_and_empty_segments():
        # 64 segments over a few tiles: most segments are empty and must be ignored.
        _run("decode", dtype=torch.float16, num_segments=ta.MAX_SEGMENTS, heads=(2, 1))

    @pytest.mark.parametrize("segments", [1, 3, 5])
    def test_split_kv_any_runtime_segment_count(segments):
        """The segment count is a runtime argument: counts that are no power of two, and a
        split launch with a single segment (what a short context gets automatically), merge
        through the same reduce kernel (masked to the count)."""
        b = make_paged_batch([1, 1, 1], [150, 77, 3], num_heads=2, num_kv_heads=1, head_dim=64,
                             block_size=16, dtype=torch.float32, seed=segments)  # fmt: skip
        cfg = ta.choose_config(num_tokens=3, num_seqs=3, num_heads=2, num_kv_heads=1,
                               head_dim=64, block_size=16, dtype=torch.float32,
                               max_context_bound=150, num_sms=8, decode_only=True)  # fmt: skip
        cfg = dataclasses.replace(cfg, split=True, num_segments=segments)
        out = nan_like(b.q)
        ta._launch(*b.args(), out, cfg)
        assert_kernel_close(out, unified_attention_torch(*b.args()), torch.float32)

    def test_out_of_range_segment_count_rejected():
        b = make_paged_batch([1], [5], num_heads=2, num_kv_heads=1, head_dim=64, block_size=8)
        with pytest.raises(ValueError, match="num_segments"):
            ta.unified_attention_triton(*b.args(), num_segments=ta.MAX_SEGMENTS + 1)

    # (batch, dtype, sliding_window, softcap, num_segments); windows of 1 (the diagonal
    # only), below a block, not a multiple of blocks or tiles, longer than some contexts.
    OPTION_CASES = [
        ("mixed", torch.float32, 1, None, 1),
        ("long_mixed", torch.float32, 13, None, 1),
        ("long_mixed", torch.float32, 5, None, 4),
        ("long_mixed", torch.float16, 19, None, 1),
        ("long_decode", torch.float16, 19, None, 4),
        ("long_decode", torch.float32, 40, None, 8),
        ("chunked", torch.float32, 20, None, 4),
        ("mixed", torch.float16, None, 2.0, 1),
        ("decode", torch.float32, None, 5.0, 4),
        ("prefill", torch.bfloat16, None, 2.0, 1),
        ("long_mixed", torch.float32, 13, 2.0, 1),
        ("long_mixed", torch.bfloat16, 40, 5.0, 4),
        ("long_decode", torch.float16, 7, 2.0, 2),
    ]

    def _option_id(case):
        batch, dtype, window, cap, segs = case
        return f"{batch}-{DTYPE_IDS[dtype]}-w{window}-cap{cap}-seg{segs}"

    @pytest.mark.parametrize("case", OPTION_CASES, ids=_option_id)
    def test_sliding_window_and_softcap(case):
        batch, dtype, window, cap, segs = case
        # The split's reduce runs one program per (token, head): few heads keep it cheap.
        heads = (8, 2) if segs == 1 else (2, 1)
        _run(batch, dtype=dtype, heads=heads, sliding_window=window, softcap=cap,
             num_segments=segs, seed=segs)  # fmt: skip

    def test_sliding_window_gqa_head_size_block_size():
        _run("long_mixed", dtype=torch.float16, heads=(6, 2), head_dim=80, block_size=8,
             sliding_window=11, softcap=3.0, num_segments=1)  # fmt: skip

    def test_public_api_options_and_wide_window():
        b = make_paged_batch(
            [1, 3, 1], [50, 12, 33], num_heads=2, num_kv_heads=1, head_dim=64, block_size=16,
            dtype=torch.float32, seed=6,
        )  # fmt: skip
        wide = b.block_tables.shape[1] * 16  # all the block table can address
        for opts, splits in (({"sliding_window": 9, "softcap": 3.0}, (True, False)),
                             ({"sliding_window": wide}, (False,))):  # fmt: skip
            expected = unified_attention_torch(*b.args(), **opts)
            for split in splits:
                out = nan_like(b.q)
                kernels.unified_attention(*b.args(), out=out, backend="triton", split_kv=split,
                                          **opts)  # fmt: skip
                torch.testing.assert_close(out, expected, **TOL[torch.float32])

    def test_window_bounds_auto_segments():
        common = dict(num_tokens=2, num_seqs=2, num_heads=8, num_kv_heads=2, head_dim=64,
                      block_size=16, dtype=torch.float16, num_sms=132,
                      max_context_bound=8192, decode_only=True)  # fmt: skip
        full = ta.choose_config(**common)
        windowed = ta.choose_config(**common, sliding_window=100)
        tiny = ta.choose_config(**common, sliding_window=1)  # one tile per decode
        assert windowed.sliding and not full.sliding and not full.softcap
        assert full.num_segments > windowed.num_segments > 1  # 100 positions: 2-3 tiles
        assert tiny.num_segments == 1
        assert ta.choose_config(**common, softcap=30.0).softcap

    def test_public_api_split_on_and_off_and_auto():
        b = make_paged_batch(
            [1, 1], [90, 33], num_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
            dtype=torch.float16, seed=3,
        )  # fmt: skip
        expected = unified_attention_torch(*b.args())
        for split in (True, False, None):
            out = nan_like(b.q)
            kernels.unified_attention(*b.args(), out=out, backend="triton", split_kv=split)
            torch.testing.assert_close(out.float(), expected.float(), **TOL[torch.float16])

    def test_auto_choice_splits_small_decode_batches_only():
        common = dict(num_heads=8, num_kv_heads=2, head_dim=64, block_size=16,
                      dtype=torch.float16, num_sms=132, max_context_bound=4096)  # fmt: skip
        small = ta.choose_config(num_tokens=2, num_seqs=2, decode_only=True, **common)
        big = ta.choose_config(num_tokens=256, num_seqs=256, decode_only=True, **common)
        prefill = ta.choose_config(num_tokens=300, num_seqs=2, decode_only=False, **common)
        short = ta.choose_config(
            num_tokens=2, num_seqs=2, decode_only=True, **{**common, "max_context_bound": 64}
        )
        assert small.num_segments > 1 and small.split
        assert big.num_segments == prefill.num_segments == short.num_segments == 1
        assert not big.split and not prefill.split
        assert short.split  # a short context keeps the split variant, with one segment

    def test_hints_do_not_change_results():
        b = make_paged_batch(
            [1, 1, 1], [40, 7, 19], num_heads=4, num_kv_heads=1, head_dim=64, block_size=8,
            dtype=torch.float32, seed=5,
        )  # fmt: skip
        expected = unified_attention_torch(*b.args())
        for hints in ({"max_query_len": 1, "max_seq_len": 40}, {"max_query_len": 2}):
            out = kernels.unified_attention(*b.args(), backend="triton", **hints)
            torch.testing.assert_close(out, expected, **TOL[torch.float32])

    def test_strided_q_and_out():
        """q as a view into a fused QKV projection; out as a view into a wider buffer."""
        b = make_paged_batch(
            [1, 6], [12, 6], num_heads=4, num_kv_heads=2, head_dim=64, block_size=16, seed=9
        )
        n = b.q.shape[0]
        qkv = torch.randn(n, 8 * 64)
        qkv[:, : 4 * 64] = b.q.reshape(n, -1)
        q = qkv[:, : 4 * 64].view(n, 4, 64)
        wide = torch.full((n, 6, 64), float("nan"))
        out = wide[:, 1:5]
        args = (q, *b.args()[1:])
        ta.unified_attention_triton(*args, out=out)
        torch.testing.assert_close(out, unified_attention_torch(*b.args()), **TOL[torch.float32])
        assert wide[:, 0].isnan().all() and wide[:, 5].isnan().all()

    def test_interpreter_bf16_needs_fp32_loads():
        """What holds in the interpreter: with bf16 operands kept as bf16 (the GPU path)
        the result is wrong; the fp32 cast the launcher applies makes it right."""
        b = make_paged_batch([1, 5], [20, 5], num_heads=2, num_kv_heads=1, head_dim=64,
                             block_size=16, dtype=torch.bfloat16, seed=11)  # fmt: skip
        expected = unified_attention_torch(*b.args()).float()
        cfg = ta.choose_config(num_tokens=6, num_seqs=2, num_heads=2, num_kv_heads=1,
                               head_dim=64, block_size=16, dtype=torch.bfloat16,
                               max_context_bound=32, num_sms=8, decode_only=False,
                               num_segments=1)  # fmt: skip
        out = nan_like(b.q)
        saved = ta.INTERPRET
        try:
            ta.INTERPRET = False  # launch with CAST_F32=False
            ta._launch(*b.args(), out, cfg)
        finally:
            ta.INTERPRET = saved
        wrong = not torch.allclose(out.float(), expected, **TOL[torch.bfloat16])
        ta._launch(*b.args(), out, cfg)
        torch.testing.assert_close(out.float(), expected, **TOL[torch.bfloat16])
        if not wrong:
            pytest.skip("this triton's interpreter now gets bf16 right: CAST_F32 could go")

    @pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)
    @pytest.mark.parametrize("block_size,kv_heads,head_dim", [(8, 2, 64), (16, 3, 80), (32, 1, 64)])
    def test_store_kv(dtype, block_size, kv_heads, head_dim):
        gen = torch.Generator().manual_seed(block_size + kv_heads)
        num_blocks, n = 7, 13
        k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
        v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
        slots = torch.randperm(num_blocks * block_size, generator=gen)[:n]
        slots[[0, 5, 12]] = -1
        # key/value as strided views into one fused buffer, like a QKV projection's output
        kv = torch.randn(n, 2, kv_heads, head_dim, generator=gen).to(dtype)
        key, value = kv[:, 0], kv[:, 1]
        ref_k, ref_v = k_cache.clone(), v_cache.clone()
        store_kv_torch(key, value, ref_k, ref_v, slots)
        kernels.store_kv(key, value, k_cache, v_cache, slots, backend="triton")
        assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)

    def test_store_kv_empty_and_all_skipped():
        k_cache = torch.randn(2, 8, 2, 64)
        before = k_cache.clone()
        key = torch.randn(4, 2, 64)
        store_kv_triton(key, key, k_cache, k_cache, torch.full((4,), -1, dtype=torch.int64))
        store_kv_triton(key[:0], key[:0], k_cache, k_cache, torch.empty(0, dtype=torch.int64))
        assert torch.equal(k_cache, before)

    def test_store_then_attend_triton():
        """The engine's per-layer order: store this step's K/V, then attend over the cache."""
        b = make_paged_batch([4, 1], [10, 17], num_heads=4, num_kv_heads=2, head_dim=64,
                             block_size=8, dtype=torch.float16, seed=13)  # fmt: skip
        n = b.q.shape[0]
        slots = []
        for s, (ql, cl) in enumerate(zip(b.query_lens, b.context_lens)):
            for p in range(cl - ql, cl):
                slots.append(int(b.block_tables[s, p // 8]) * 8 + p % 8)
        slots = torch.tensor(slots)
        key = torch.randn(n, 2, 64).half()
        value = torch.randn(n, 2, 64).half()
        ref_k, ref_v = b.k_cache.clone(), b.v_cache.clone()
        store_kv_torch(key, value, ref_k, ref_v, slots)
        kernels.store_kv(key, value, b.k_cache, b.v_cache, slots, backend="triton")
        out = kernels.unified_attention(*b.args(), backend="triton")
        args = list(b.args())
        args[1:3] = ref_k, ref_v
        torch.testing.assert_close(out, unified_attention_torch(*args), **TOL[torch.float16])

    def test_resolve_backend_in_interpreter_mode():
        assert kernels.resolve_backend("triton", torch.device("cpu")) == "triton"
        assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"
        assert kernels.resolve_backend("torch", torch.device("cpu")) == "torch"
        with pytest.raises(ValueError):
            kernels.resolve_backend("cuda", torch.device("cpu"))

    def test_mismatched_dtypes_rejected():
        b = make_paged_batch([1], [5], num_heads=2, num_kv_heads=1, head_dim=64, block_size=8)
        with pytest.raises(ValueError, match="dtype"):
            ta.unified_attention_triton(b.q.half(), *b.args()[1:])
