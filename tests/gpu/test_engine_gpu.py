"""The engine on a CUDA device: Triton and torch backends agree, the KV cache is sized
from the memory profile without over-reserving, and shutdown gives the memory back.
Runs only where CUDA exists (`pytest -m gpu`, benchmarks/gpu_check.sh)."""

from __future__ import annotations

import asyncio
import gc

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_factory import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("gpu") / "llama", num_heads=8,
                             num_kv_heads=2, head_dim=64, num_layers=4, hidden_size=512)


def _engine(model_dir, **kw):
    from engine import EngineConfig, LLMEngine

    kw.setdefault("dtype", "float32")  # fp32 everywhere: greedy tokens comparable exactly
    return LLMEngine(EngineConfig(model=str(model_dir), device="cuda", **kw))


def test_triton_and_torch_backends_agree_on_cuda(model_dir):
    from engine_helpers import greedy, run_to_completion

    prompts = [[(13 * i + j) % 250 + 3 for j in range(n)] for i, n in enumerate((1, 17, 64, 200, 333))]
    tokens = {}
    for backend in ("torch", "triton"):
        engine = _engine(model_dir, attention_backend=backend, max_num_batched_tokens=128)
        outs = run_to_completion(engine, prompts, greedy(24))
        tokens[backend] = [o.outputs[0].token_ids for o in outs]
        assert engine.attention_backend == backend
    assert tokens["triton"] == tokens["torch"]


def test_kv_cache_is_profiled_and_capped(model_dir):
    engine = _engine(model_dir, max_num_seqs=4, gpu_memory_fraction=0.5)
    useful_blocks = 4 * -(-engine.max_model_len // engine.config.block_size)
    # A tiny model must not take half the GPU: the cache stops at what it can use.
    assert engine.num_kv_blocks <= useful_blocks
    total = torch.cuda.get_device_properties(0).total_memory
    assert engine.runner.cache_bytes < 0.5 * total


def test_shutdown_then_reload_does_not_grow_memory(model_dir):
    from engine.async_engine import AsyncEngine
    from engine import EngineConfig, SamplingParams

    async def one(engine):
        async for _ in engine.generate([5, 6, 7], SamplingParams(max_tokens=4)):
            pass

    def cycle() -> int:
        engine = AsyncEngine(EngineConfig(model=str(model_dir), device="cuda", max_num_seqs=8))
        asyncio.run(one(engine))
        engine.shutdown()
        del engine
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    before = torch.cuda.memory_allocated()
    first = cycle()
    second = cycle()
    assert first - before < 64 * 2**20, "shutdown left the model or cache allocated"
    assert second <= first + 8 * 2**20, "memory grew across load / shutdown cycles"
