"""The engine's side of the learner's panels: pause / step / slow motion, a record for every
step with its batch, stable block hashes, the KV event vocabulary, and the panel's numbers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.async_engine import AsyncEngine
from engine.kv_cache_manager import KVCacheManager
from engine.kv_metrics import internal_waste_tokens, paged_vs_contiguous, prefix_hit_rate
from engine.kv_snapshot import BlockState
from engine.stats import StepKind
from engine_helpers import greedy, run_to_completion

PROMPTS = [[(7 * i + j) % 250 + 3 for j in range(20 + 9 * i)] for i in range(4)]


def config(model_dir, **kw) -> EngineConfig:
    kw.setdefault("block_size", 8)
    return EngineConfig(model=str(model_dir), device="cpu", dtype="float32", **kw)


async def stream_tokens(engine: AsyncEngine, prompt, params, rid, seen: list) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(prompt, params, request_id=rid):
        tokens += out.outputs[0].delta_token_ids
        seen.append(time.monotonic())
    return tokens


# ---------------------------------------------------------------- pause, step, resume
def test_pause_step_resume_loses_nothing(random_llama):
    expected = run_to_completion(LLMEngine(config(random_llama)), PROMPTS, greedy(24))
    engine = AsyncEngine(config(random_llama))
    arrivals: list[float] = []

    async def main():
        tasks = [asyncio.ensure_future(stream_tokens(engine, p, greedy(24), f"r{i}", arrivals))
                 for i, p in enumerate(PROMPTS)]  # fmt: skip
        while len(arrivals) < 8:
            await asyncio.sleep(0.005)
        engine.pause(wait=True)
        await asyncio.sleep(0.05)  # outputs of the last step before the pause land
        steps, seen = engine.engine.num_steps, len(arrivals)
        await asyncio.sleep(0.5)
        assert len(arrivals) == seen, "a token arrived while paused"
        assert engine.engine.num_steps == steps
        for k in range(3):  # exactly one scheduler step per call, with its record
            record = await asyncio.wrap_future(engine.step_once_async())
            assert record.step == steps + k
            assert engine.engine.num_steps == steps + k + 1
            assert record.batch_size == len(record.scheduled) > 0
        engine.resume()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    engine.shutdown()
    assert results == [e.outputs[0].token_ids for e in expected]


def test_requests_added_while_paused_wait_then_run(random_llama):
    engine = AsyncEngine(config(random_llama))
    engine.pause(wait=True)

    async def main():
        task = asyncio.ensure_future(stream_tokens(engine, PROMPTS[0], greedy(4), "late", []))
        await asyncio.sleep(0.3)
        assert not task.done() and engine.engine.num_steps == 0
        assert engine.engine.get_num_unfinished_requests() == 1  # queued, not lost
        engine.resume()
        return await task

    assert len(asyncio.run(main())) == 4
    assert engine.step_once() is None  # nothing left to schedule
    engine.shutdown()


def test_slow_motion_spaces_the_steps(random_llama):
    engine = AsyncEngine(config(random_llama))
    engine.set_step_delay(0.1)
    done = []

    async def main():
        await stream_tokens(engine, PROMPTS[0], greedy(5), "slow", done)

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    engine.set_step_delay(0)
    engine.shutdown()
    gaps = [b.start_time - a.finished_time
            for a, b in zip(engine.engine.stats_history, list(engine.engine.stats_history)[1:])]
    assert len(gaps) == 4 and min(gaps) >= 0.09, gaps
    assert elapsed >= 0.4
    with pytest.raises(ValueError, match="step delay"):
        engine.set_step_delay(-1)


# ---------------------------------------------------------------- records and snapshots
def test_no_record_is_lost_under_a_rate_limited_listener(random_llama):
    engine = AsyncEngine(config(random_llama), stats_interval=0.2)
    calls: list[tuple[list, object]] = []
    engine.add_stats_listener(lambda records, snap: calls.append((records, snap)))

    async def main():
        await asyncio.gather(*(stream_tokens(engine, p, greedy(40), f"r{i}", [])
                               for i, p in enumerate(PROMPTS)))  # fmt: skip

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    time.sleep(0.3)
    engine.shutdown()
    steps = [r.step for records, _ in calls for r in records]
    assert steps == list(range(engine.engine.num_steps)) and len(steps) >= 40
    assert len(calls) <= elapsed / 0.2 + 3  # rate-limited: many records per call
    assert all(snap is None for _, snap in calls)  # nobody asked for a picture


def test_a_snapshot_is_built_only_when_asked(random_llama):
    engine = AsyncEngine(config(random_llama))
    got = threading.Event()
    snaps = []
    engine.add_stats_listener(lambda records, snap: snap and (snaps.append(snap), got.set()))
    run = asyncio.run
    run(stream_tokens(engine, PROMPTS[1], greedy(3), "a", []))
    time.sleep(0.1)
    assert not snaps
    engine.request_snapshot()  # idle engine: it answers at once
    assert got.wait(5) and len(snaps) == 1
    assert snaps[0].num_in_use == 0 and snaps[0].num_cached_free > 0  # a's prompt is cached
    time.sleep(0.1)
    engine.request_snapshot()  # nothing changed since: no copy of the same picture
    time.sleep(0.2)
    assert len(snaps) == 1
    cleared = engine.reset_prefix_cache().result(5)
    assert cleared == snaps[0].num_cached_free
    time.sleep(0.2)
    assert len(snaps) == 2 and snaps[1].num_cached_free == 0  # the wanted picture came
    assert snaps[1].events[-1].kind == "AllBlocksCleared"
    engine.shutdown()


def test_records_show_chunked_prefill_beside_decodes(random_llama):
    engine = LLMEngine(config(random_llama, max_num_batched_tokens=16))
    engine.add_request("short", PROMPTS[0][:10], greedy(6))
    engine.step()  # short: prefill of 10 tokens in one step
    engine.add_request("long", PROMPTS[3], greedy(2))  # 47 tokens: chunks of <= 15
    while engine.has_unfinished_requests():
        engine.step()
    records = list(engine.stats_history)
    first = records[0].scheduled[0]
    assert (first.kind, first.num_new_tokens, first.sampled) == (StepKind.PREFILL, 10, True)
    mixed = records[1]
    kinds = {e.request_id: e for e in mixed.scheduled}
    assert kinds["short"].kind is StepKind.DECODE and kinds["short"].num_new_tokens == 1
    assert kinds["long"].kind is StepKind.CHUNKED_PREFILL and kinds["long"].num_new_tokens == 15
    assert not kinds["long"].sampled
    chunks = [e for r in records for e in r.scheduled if e.request_id == "long"
              and e.kind is StepKind.CHUNKED_PREFILL]  # fmt: skip
    assert sum(e.num_new_tokens for e in chunks) == 47
    assert [e.num_computed_before for e in chunks] == [0, 15, 30, 45]
    for r in records:  # the totals agree with the batch
        assert r.decode_tokens == sum(e.num_new_tokens for e in r.scheduled
                                      if e.kind is StepKind.DECODE)  # fmt: skip
        assert r.prefill_tokens + r.decode_tokens == sum(e.num_new_tokens for e in r.scheduled)
    finished = [rid for r in records for rid in r.finished]
    assert sorted(finished) == ["long", "short"]
    assert len([t for r in records for t in r.time_to_first_token]) == 2
    assert len([t for r in records for t in r.inter_token_latency]) == 5 + 1


def test_records_show_preemption_and_recompute(random_llama):
    # 12 blocks of 8 tokens: three requests that each grow to 5 blocks cannot all fit.
    cfg = config(random_llama, num_kv_blocks=12, enable_prefix_caching=False)
    prompts = [PROMPTS[1][:20], PROMPTS[2][:20], PROMPTS[3][:20]]
    expected = run_to_completion(LLMEngine(config(random_llama)), prompts, greedy(18))
    engine = LLMEngine(cfg)
    outs = run_to_completion(engine, prompts, greedy(18))
    assert [o.outputs[0].token_ids for o in outs] == [e.outputs[0].token_ids for e in expected]
    records = list(engine.stats_history)
    preempted = [(r.step, rid) for r in records for rid in r.preempted]
    assert preempted, "the small cache never preempted"
    step, victim = preempted[0]
    later = [e for r in records if r.step > step for e in r.scheduled if e.request_id == victim]
    assert later[0].kind is StepKind.RECOMPUTE and later[0].num_computed_before == 0
    assert later[0].num_new_tokens > 20  # its prompt and the tokens it had made
    assert victim in records[step].waiting
    events = engine.kv_manager.events
    assert any(e.kind == "preempt" and e.request_id == victim and e.step == step for e in events)


# ---------------------------------------------------------------- hashes and events
HASH_SCRIPT = """
import json, sys
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams
kv = KVCacheManager(8, 4)
r = Request("a", list(range(10, 22)), SamplingParams(max_tokens=1), 0.0)
kv.allocate_slots(r, 12); r.num_computed_tokens = 12; kv.cache_full_blocks(r)
print(json.dumps([str(h) for h in kv.snapshot().hashes]))
"""


def test_block_hashes_are_the_same_in_two_processes():
    def hashes(seed: str) -> list[str]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", HASH_SCRIPT], env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        return json.loads(out)

    first, second = hashes("1"), hashes("2")
    assert first == second and sum(h != "None" for h in first) == 3


def test_event_vocabulary(random_llama):
    from engine.request import Request

    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = Request("a", [1, 2, 3], SamplingParams(max_tokens=4), 0.0)
    assert kv.allocate_slots(a, 3)
    a.num_computed_tokens = 3
    kv.cache_full_blocks(a)
    a.append_output_token(9)
    assert kv.allocate_slots(a, 1)  # 4 tokens fit in 2 blocks: no new block
    a.num_computed_tokens = 4
    kv.cache_full_blocks(a)
    a.append_output_token(9)
    assert kv.allocate_slots(a, 1)  # the 5th token needs a third block
    kv.free(a)
    b = Request("b", [5, 6, 7, 8, 1, 1, 1], SamplingParams(max_tokens=1), 0.0)
    assert kv.allocate_slots(b, 7)  # takes the empty block, then evicts two cached ones
    kv.free(b, reason="abort")
    kv.reset_prefix_cache()
    kinds = [(e.kind, e.request_id, e.block_ids, e.detail) for e in kv.events]
    assert kinds == [
        ("allocate", "a", (0, 1), ""),
        ("BlockStored", "a", (0,), ""),
        ("BlockStored", "a", (1,), ""),
        ("append", "a", (2,), ""),
        ("free", "a", (0, 1, 2), "finish"),
        ("BlockRemoved", None, (1,), ""),  # a's tail block is evicted first
        ("BlockRemoved", None, (0,), ""),
        ("allocate", "b", (3, 2, 1, 0), ""),
        ("free", "b", (3, 2, 1, 0), "abort"),
        ("AllBlocksCleared", None, (), ""),
    ]


# ---------------------------------------------------------------- the panel's numbers
def test_numbers_equal_an_independent_count(random_llama):
    engine = LLMEngine(config(random_llama, max_model_len=512))
    system = PROMPTS[3][:33]
    for i in range(3):  # one after another: each finds the system prompt already cached
        params = SamplingParams(temperature=0.0, max_tokens=40 + 10 * i, ignore_eos=True)
        engine.add_request(f"s{i}", system + [100 + i] * (i + 1), params)
        engine.step()
        engine.step()
    snap = engine.kv_snapshot()
    cfg = engine.loaded.hf_config
    per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * 32 * 2 * 4
    assert snap.kv_bytes_per_token == per_token
    holds = {rid: r.num_computed_tokens for rid, r in engine.requests.items()}
    blocks = {rid: len(engine.kv_manager.block_table(rid)) for rid in engine.requests}
    assert internal_waste_tokens(snap) == sum(blocks[r] * 8 - holds[r] for r in holds)
    in_use = {b for t in snap.block_tables.values() for b in t}
    reserved = sum(min(len(r.prompt_token_ids) + r.sampling_params.max_tokens, 512)
                   for r in engine.requests.values())  # fmt: skip
    figure = paged_vs_contiguous(snap)
    assert figure.paged_bytes == len(in_use) * 8 * per_token
    assert figure.contiguous_bytes == reserved * per_token
    assert figure.ratio == pytest.approx(reserved / (len(in_use) * 8))
    shared = [b for b in in_use if snap.ref_counts[b] == 3]
    assert len(shared) == 4  # the 33-token system prompt's four full blocks, held by all three
    assert all(snap.state(b) is BlockState.IN_USE for b in shared)
    assert prefix_hit_rate(snap) == pytest.approx(snap.prefix_hits / snap.prefix_queries)


def test_locate_tokens_finds_a_messages_blocks(random_llama):
    from engine.kv_locate import locate_tokens

    engine = LLMEngine(config(random_llama))
    prompt = PROMPTS[3][:30]  # 3 full blocks of 8 and 6 tokens in a 4th
    engine.add_request("a", prompt, SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    engine.step()
    snap = engine.kv_snapshot()
    table = snap.block_tables["a"]
    assert locate_tokens(snap, prompt) == list(table)
    assert locate_tokens(snap, prompt, 9, 20) == list(table[1:3])  # tokens 9..19: blocks 1, 2
    assert locate_tokens(snap, prompt[:5] + [1] * 20) == [table[0]]  # only the first block
    engine.abort_request("a")
    engine.step()
    snap = engine.kv_snapshot()  # finished: the full blocks are cached-free, found by hash
    assert locate_tokens(snap, prompt) == list(table[:3])
