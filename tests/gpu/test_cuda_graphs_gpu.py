"""Decode CUDA graphs (engine/cuda_graphs.py) on a GPU: replaying the captured graphs gives
the eager forward pass's greedy tokens, hidden states and cache contents, step after step,
as the batch shrinks through several padded sizes. Runs only where CUDA exists
(`pytest -m gpu`, benchmarks/gpu_check.sh); the dispatch is tested on the CPU in
tests/test_cuda_graphs.py."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]

BLOCK, BLOCKS_PER_SEQ, MAX_SEQS = 16, 16, 8  # contexts up to 256 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_factory import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("graphs") / "llama", num_heads=8,
                             num_kv_heads=2, head_dim=64, num_layers=4, hidden_size=512)  # fmt: skip


@pytest.fixture(scope="module")
def loaded(model_dir):
    from engine.model_loader import load_model

    return load_model(str(model_dir), dtype=torch.float32, device=torch.device("cuda"))


def _meta(tables, starts, lens, backend="triton"):
    """Metadata of one step: sequence s computes positions starts[s] .. starts[s]+lens[s]-1."""
    from engine.attention import AttentionMetadata

    slots, cu = [], [0]
    for table, start, n in zip(tables, starts, lens):
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, start + n)]
        cu.append(cu[-1] + n)
    ends = [s + n for s, n in zip(starts, lens)]
    width = max(len(t) for t in tables)
    dev = "cuda"
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=dev),
        cu_query_lens=torch.tensor(cu, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor(ends, dtype=torch.int32, device=dev),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                  dtype=torch.int32, device=dev),  # fmt: skip
        backend=backend,
        max_query_len=max(lens),
        max_seq_len=max(ends),
    )


@torch.inference_mode()
def test_graph_replay_gives_the_eager_greedy_tokens(loaded):
    from engine.cuda_graphs import DecodeGraphs

    model, cfg = loaded.model, loaded.hf_config
    kv_heads, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    dims = (MAX_SEQS * BLOCKS_PER_SEQ + 1, BLOCK, kv_heads, head_dim)
    caches = [(torch.zeros(dims, device="cuda"), torch.zeros(dims, device="cuda"))
              for _ in range(cfg.num_hidden_layers)]  # fmt: skip
    prompts = [[(11 * i + 7 * j) % 250 + 3 for j in range(n)] for i, n in enumerate((3, 17, 40, 1, 64))]
    tables = [list(range(1 + i * BLOCKS_PER_SEQ, 1 + (i + 1) * BLOCKS_PER_SEQ)) for i in range(5)]
    tokens = []
    for prompt, table in zip(prompts, tables):  # prefill, eagerly, into the shared caches
        ids = torch.tensor(prompt, device="cuda")
        hidden = model(ids, torch.arange(len(prompt), device="cuda"), caches,
                       _meta([table], [0], [len(prompt)]))  # fmt: skip
        tokens.append(int(model.compute_logits(hidden[-1:]).argmax()))
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]

    graphs = DecodeGraphs(model, caches, MAX_SEQS, BLOCKS_PER_SEQ, "cuda", "triton",
                          max_model_len=BLOCK * BLOCKS_PER_SEQ)  # fmt: skip
    assert graphs.capture() == [1, 2, 4, 8]
    assert all(k.abs().sum() == e.abs().sum() for (k, _), (e, _) in zip(caches, eager_caches)), \
        "capturing wrote into the cache"  # fmt: skip

    lengths = [len(p) for p in prompts]
    live = list(range(5))
    for step in range(30):
        if step in (10, 20):
            live = live[: len(live) // 2 + (step == 10)]  # 5 -> 3 -> 1 requests: sizes 8, 4, 1
        ids = torch.tensor([tokens[i] for i in live], device="cuda")
        pos = torch.tensor([lengths[i] for i in live], device="cuda")
        meta = _meta([tables[i] for i in live], [lengths[i] for i in live], [1] * len(live))
        expected = model(ids, pos, eager_caches, meta)
        assert graphs.padded_size(len(live), meta.max_seq_len) == {5: 8, 3: 4, 1: 1}[len(live)]
        replayed = graphs.run(ids, pos, meta).clone()
        torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-4)
        want = model.compute_logits(expected).argmax(-1).tolist()
        got = model.compute_logits(replayed).argmax(-1).tolist()
        assert got == want, f"step {step}"
        for i, t in zip(live, want):
            tokens[i] = t
            lengths[i] += 1
    for (k, v), (ke, ve) in zip(caches, eager_caches):
        torch.testing.assert_close(k, ke, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v, ve, rtol=1e-4, atol=1e-4)
    graphs.close()


def test_engine_tokens_are_the_same_with_and_without_graphs(model_dir):
    """Once the model runner uses DecodeGraphs (enforce_eager=False, the default), its
    greedy tokens must be those of the eager engine."""
    from engine import EngineConfig, LLMEngine
    from engine_helpers import greedy, run_to_completion

    prompts = [[(5 * i + j) % 250 + 3 for j in range(n)] for i, n in enumerate((1, 9, 30, 70, 2, 5))]
    tokens = {}
    for eager in (True, False):
        engine = LLMEngine(EngineConfig(model=str(model_dir), device="cuda", dtype="float32",
                                        max_num_seqs=8, enforce_eager=eager))  # fmt: skip
        outs = run_to_completion(engine, prompts, greedy(20))
        tokens[eager] = [o.outputs[0].token_ids for o in outs]
    assert tokens[False] == tokens[True]
