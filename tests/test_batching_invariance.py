"""Batching must not change results: one greedy request gives the same tokens alone,
inside a batch of 16 mixed-length requests, with chunked prefill forced, with preemption
forced, and when its prompt hits the prefix cache. Checked on the bundled SmolLM2."""

from __future__ import annotations

import random

import pytest

from engine_helpers import greedy, run_to_completion

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def prompts(default_loaded):
    tok = default_loaded.tokenizer
    topics = ["the sea", "bread", "a paged KV cache", "mountains", "Python", "winter",
              "the moon", "coffee", "trains", "music", "gardens", "rain", "chess", "owls",
              "volcanoes", "libraries"]
    rng = random.Random(0)
    out = []
    for i, topic in enumerate(topics):
        words = " ".join(rng.choice(["very", "quite", "truly", "rather"]) for _ in range(i * 3))
        messages = [{"role": "user", "content": f"Tell me something {words} interesting about {topic}."}]
        out.append(list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)))
    return out


@pytest.fixture(scope="module")
def alone(make_engine, prompts):
    """The reference: the target request (the longest prompt) run by itself."""
    engine = make_engine()
    return run_to_completion(engine, [prompts[-1]], greedy(NEW_TOKENS))[0].outputs[0].token_ids


def test_in_a_batch_of_16(make_engine, prompts, alone):
    engine = make_engine()
    outs = run_to_completion(engine, prompts, greedy(NEW_TOKENS))
    assert outs[-1].outputs[0].token_ids == alone
    assert max(s.batch_size for s in engine.stats_history) == 16
    # Mixed steps happened: some step computed prompt tokens and decode tokens together.
    # (All 16 prompts arrive at once, so later steps are pure decodes of all 16.)
    assert any(s.decode_tokens == 16 for s in engine.stats_history)


def test_with_chunked_prefill(make_engine, prompts, alone):
    engine = make_engine(max_num_batched_tokens=16)
    outs = run_to_completion(engine, prompts[-3:], greedy(NEW_TOKENS))
    assert outs[-1].outputs[0].token_ids == alone
    assert all(s.prefill_tokens + s.decode_tokens <= 16 for s in engine.stats_history)
    # The long prompt needed several chunks.
    assert len(prompts[-1]) > 16


def test_with_preemption(make_engine, prompts, alone):
    batch = prompts[-6:]
    need = [-(-(len(p) + NEW_TOKENS) // 16) for p in batch]  # blocks to finish each
    # Room for the first two prompts at admission, but not for both to finish; the
    # longest request still fits alone (or the engine would refuse it).
    blocks = -(-len(batch[0]) // 16) + -(-len(batch[1]) // 16)
    assert max(need) <= blocks < need[0] + need[1]
    engine = make_engine(num_kv_blocks=blocks, enable_prefix_caching=False)
    outs = run_to_completion(engine, batch, greedy(NEW_TOKENS))
    assert engine.scheduler.num_preemptions_total > 0
    assert outs[-1].outputs[0].token_ids == alone
    assert all(len(o.outputs[0].token_ids) == NEW_TOKENS for o in outs)
    assert engine.kv_snapshot().num_in_use == 0


def test_with_a_prefix_cache_hit(make_engine, prompts, alone):
    engine = make_engine()
    first = run_to_completion(engine, [prompts[-1]], greedy(NEW_TOKENS), prefix="a")[0]
    second = run_to_completion(engine, [prompts[-1]], greedy(NEW_TOKENS), prefix="b")[0]
    assert first.num_cached_tokens == 0
    # Every full block but the one holding the last prompt token came from the cache.
    assert second.num_cached_tokens == (len(prompts[-1]) - 1) // 16 * 16 > 0
    assert second.outputs[0].token_ids == alone == first.outputs[0].token_ids
    assert any(s.prefix_cache_hit_tokens > 0 for s in engine.stats_history)
