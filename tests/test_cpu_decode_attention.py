"""The compiled CPU decode-attention kernel (kernels/csrc/cpu_decode_attention.cpp) against a
naive dense attention written from the spec, on paged batches whose unused cache slots hold
NaN: inside unified_attention_torch (decodes by the kernel, prefill chunks by torch), with
GQA, sliding windows, soft-capping, 16-bit caches, and split contexts (more threads than
sequences)."""

from __future__ import annotations

import shutil

import pytest
import torch

from kernels import cpu_decode_attention
from kernels.reference import AttentionPlan, unified_attention_torch
from kernels.testing import make_paged_batch, naive_attention, nan_like

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the engine keeps the torch path", allow_module_level=True)

BATCHES = {
    "decodes": ([1, 1, 1, 1, 1], [1, 17, 40, 9, 64]),
    "mixed": ([1, 9, 1, 20, 1, 3], [25, 9, 1, 47, 64, 40]),
    "one_long": ([1], [1000]),
}
HEADS = {"mha": (4, 4), "gqa3": (6, 2), "gqa9": (9, 1)}


@pytest.fixture(scope="module")
def kernel():
    built = cpu_decode_attention.load()
    assert built is not None, "the CPU decode kernel did not build (see the log)"
    return built


def run_with_kernel(kernel, b, **options) -> torch.Tensor:
    plan = AttentionPlan.from_tensors(b.cu_query_lens, b.seq_lens, b.block_tables,
                                      b.k_cache.shape[1])  # fmt: skip
    plan.decode_kernel = kernel
    out = nan_like(b.q)
    unified_attention_torch(*b.args(), out=out, plan=plan, **options)
    return out


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_kernel_matches_naive(kernel, threads, block_size, heads, batch):
    num_heads, num_kv_heads = HEADS[heads]
    b = make_paged_batch(*BATCHES[batch], num_heads=num_heads, num_kv_heads=num_kv_heads,
                         head_dim=64, block_size=block_size, seed=block_size)  # fmt: skip
    out = run_with_kernel(kernel, b)
    torch.testing.assert_close(out.double(), naive_attention(*b.args()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 5, 40])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_kernel_window_and_softcap_match_naive(kernel, threads, window, softcap):
    b = make_paged_batch(*BATCHES["mixed"], num_heads=6, num_kv_heads=2, head_dim=32,
                         block_size=16, seed=window)  # fmt: skip
    out = run_with_kernel(kernel, b, sliding_window=window, softcap=softcap)
    expected = naive_attention(*b.args(), sliding_window=window, softcap=softcap)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_16_bit_caches(kernel, threads, dtype):
    b = make_paged_batch(*BATCHES["decodes"], num_heads=6, num_kv_heads=2, head_dim=64,
                         block_size=16, dtype=dtype)  # fmt: skip
    out = run_with_kernel(kernel, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), naive_attention(*b.args()), rtol=2e-2, atol=2e-2)


def test_kernel_refuses_what_it_cannot_read(kernel):
    b = make_paged_batch([1, 1], [5, 9], num_heads=4, num_kv_heads=2, head_dim=16, block_size=8)
    with pytest.raises(RuntimeError, match="int32"):
        kernel(b.q, b.k_cache, b.v_cache, b.block_tables.long(), b.seq_lens, 0.25, 0, 0.0)
    with pytest.raises(RuntimeError, match="share a dtype"):
        kernel(b.q.double(), b.k_cache, b.v_cache, b.block_tables, b.seq_lens, 0.25, 0, 0.0)


def test_engine_decodes_through_the_kernel_unless_switched_off(cpu_kernel_switch, random_llama):
    from engine import LLM, SamplingParams

    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [[3, 8, 1, 9], list(range(2, 50))]
    runs = {}
    for switch in ("1", "0"):
        cpu_kernel_switch(cpu_decode_attention, switch)
        llm = LLM(str(random_llama), num_kv_blocks=64)
        assert (llm.engine.runner.decode_kernel is not None) == (switch == "1")
        runs[switch] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert runs["1"] == runs["0"]
