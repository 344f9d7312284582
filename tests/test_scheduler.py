"""Scheduler + KV cache manager as one unit, with no model: schedule() a step, hand
update_from_output() made-up sampled tokens, and check the request state it advanced."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import engine.request
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus
from engine.sampler import SamplerOutput
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput, SchedulerUpdate

EOS = 2


def make(rid: str, prompt: list[int], **params) -> Request:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 8)
    return Request(rid, list(prompt), SamplingParams(**params), arrival_time=0.0,
                   eos_token_id=EOS, extra_eos_token_ids=(3,))  # fmt: skip


def sampled(tokens: list[int], logprobs: list[float] | None = None) -> SamplerOutput:
    if logprobs is None:
        return SamplerOutput(list(tokens), [None] * len(tokens), [None] * len(tokens))
    rows = [{t: lp} for t, lp in zip(tokens, logprobs)]
    return SamplerOutput(list(tokens), rows, list(logprobs))


def step(sched: Scheduler, token: int | dict[str, int] = 7) -> tuple[SchedulerOutput, SchedulerUpdate]:
    """One step: every request that samples gets `token` (or its own, by request id)."""
    out = sched.schedule()
    rows = [s.request.request_id for s in out.scheduled if s.samples]
    tokens = [token[r] if isinstance(token, dict) else token for r in rows]
    return out, sched.update_from_output(out, sampled(tokens))


def steps(sched: Scheduler, until, token: int = 1, limit: int = 100) -> int:
    """Step until `until()` holds (at most `limit` steps); returns the steps taken."""
    for n in range(limit):
        if until():
            return n
        step(sched, token)
    raise AssertionError(f"not done after {limit} steps")


def unit(num_blocks: int = 16, block_size: int = 4, budget: int = 64, seqs: int = 8) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, block_size), seqs, budget)


def held_blocks(kv: KVCacheManager) -> int:
    return int((kv.ref_counts > 0).sum())


def test_decode_advances_computed_tokens_and_appends_the_sampled_token():
    sched = unit()
    r = make("r", [10, 11, 12, 13, 14])
    sched.add(r)
    out = sched.schedule()
    assert [(s.request, s.num_new_tokens, s.samples) for s in out.scheduled] == [(r, 5, True)]
    assert r.num_computed_tokens == 0  # schedule() plans; the update moves the state
    update = sched.update_from_output(out, sampled([40]))
    assert update.sampled == [r] and update.finished == []
    assert r.num_computed_tokens == 5
    assert r.output_token_ids == [40] and r.all_token_ids == [10, 11, 12, 13, 14, 40]
    out, update = step(sched, 41)
    assert [s.num_new_tokens for s in out.scheduled] == [1]  # a decode: the gap is one
    assert r.num_computed_tokens == 6 and r.output_token_ids == [40, 41]
    assert r.status is RequestStatus.RUNNING


def test_logprobs_are_appended_and_summed():
    sched = unit()
    r = make("r", [10, 11, 12], logprobs=1)
    sched.add(r)
    for token, lp in ((40, -0.5), (41, -1.25)):
        out = sched.schedule()
        sched.update_from_output(out, sampled([token], [lp]))
    assert r.logprobs == [{40: -0.5}, {41: -1.25}]
    assert r.cumulative_logprob == pytest.approx(-1.75)


def test_chunked_prefill_samples_only_when_it_reaches_the_end():
    sched = unit(budget=4)
    r = make("r", list(range(20, 30)))  # 10 tokens: chunks of 4, 4, 2
    sched.add(r)
    for computed in (4, 8):
        out = sched.schedule()
        assert not any(s.samples for s in out.scheduled)
        with pytest.raises(ValueError):  # a mid-prompt chunk has no token to take
            sched.update_from_output(out, sampled([5]))
        update = sched.update_from_output(out, sampled([]))
        assert r.num_computed_tokens == computed and r.output_token_ids == []
        assert update.sampled == []
    out, update = step(sched, 50)
    assert [s.num_new_tokens for s in out.scheduled] == [2]
    assert r.num_computed_tokens == 10 and r.output_token_ids == [50] and update.sampled == [r]


def test_max_tokens_finishes_with_length_and_frees_the_blocks():
    sched = unit()
    kv = sched.kv
    r = make("r", [10, 11, 12, 13, 14], max_tokens=3)
    sched.add(r)
    for _ in range(2):
        _, update = step(sched)
        assert update.finished == [] and held_blocks(kv) == 2
    _, update = step(sched)
    assert update.finished == [r] and update.sampled == [r]
    assert r.status is RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 3
    assert r.finished_time is not None and r.stop_reason is None
    assert not sched.has_unfinished() and kv.block_table("r") == []
    assert held_blocks(kv) == 0 and kv.num_free_blocks == kv.num_blocks
    assert [e.kind for e in kv.events][-1] == "free"


def test_stop_token_finishes_with_it_as_the_stop_reason():
    sched = unit()
    r = make("r", [10, 11, 12], stop_token_ids=[42], max_tokens=20)
    sched.add(r)
    step(sched, 41)
    assert not r.is_finished
    _, update = step(sched, 42)
    assert update.finished == [r]
    assert r.status is RequestStatus.FINISHED_STOPPED and r.stop_reason == 42
    assert r.output_token_ids == [41, 42] and held_blocks(sched.kv) == 0


def test_eos_stops_a_request_unless_it_ignores_eos():
    sched = unit()
    stops = make("stops", [10, 11, 12], max_tokens=5)
    ignores = make("ignores", [20, 21, 22], max_tokens=5, ignore_eos=True)
    extra = make("extra", [30, 31, 32], max_tokens=5)
    for r in (stops, ignores, extra):
        sched.add(r)
    _, update = step(sched, {"stops": EOS, "ignores": EOS, "extra": 3})
    assert update.finished == [stops, extra]
    assert stops.status is RequestStatus.FINISHED_STOPPED and stops.stop_reason is None
    assert extra.status is RequestStatus.FINISHED_STOPPED and extra.stop_reason == 3
    assert not ignores.is_finished and sched.running == [ignores]
    for _ in range(4):
        step(sched, EOS)
    assert ignores.status is RequestStatus.FINISHED_LENGTH
    assert ignores.output_token_ids == [EOS] * 5


def test_preemption_under_block_pressure_then_recompute():
    # 4 blocks of 2 slots; two 3-token prompts take 2 blocks each, so the first decode that
    # needs a third block must preempt the newest request.
    sched = unit(num_blocks=4, block_size=2)
    kv = sched.kv
    a, b = make("a", [10, 11, 12], max_tokens=4), make("b", [20, 21, 22], max_tokens=4)
    sched.add(a)
    sched.add(b)
    step(sched, 1)  # both prefilled, one token each
    step(sched, 1)  # both decode into their second block
    assert held_blocks(kv) == 4 and (a.num_tokens, b.num_tokens) == (5, 5)
    out, _ = step(sched, 1)
    assert out.preempted == [b] and [s.request for s in out.scheduled] == [a]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.output_token_ids == [1, 1] and kv.block_table("b") == []  # kept; recomputed
    assert list(sched.waiting) == [b] and sched.num_preemptions_total == 1
    steps(sched, lambda: a.is_finished)
    out, _ = step(sched, 9)  # b comes back: prompt and outputs so far, in one prefill
    item = out.scheduled[0]
    assert item.request is b and item.admitted
    assert out.num_prefix_hit_tokens + item.num_new_tokens == 5
    assert b.num_computed_tokens == 5 and b.output_token_ids == [1, 1, 9]
    steps(sched, lambda: not sched.has_unfinished())
    assert b.status is RequestStatus.FINISHED_LENGTH and b.num_output_tokens == 4
    assert held_blocks(kv) == 0


def test_full_blocks_enter_the_prefix_cache_after_the_update():
    sched = unit()
    kv = sched.kv
    prompt = list(range(40, 49))  # 9 tokens: 2 full blocks of 4, then one token
    first = make("first", prompt, max_tokens=1)
    sched.add(first)
    out = sched.schedule()
    table = kv.block_table("first")
    assert all(kv.block_hashes[b] is None for b in table)  # nothing is cached before
    sched.update_from_output(out, sampled([5]))
    assert [kv.block_hashes[b] is not None for b in table] == [True, True, False]
    assert first.is_finished
    second = make("second", prompt + [77], max_tokens=1)
    sched.add(second)
    out = sched.schedule()
    assert out.num_prefix_hit_tokens == 8 and kv.block_table("second")[:2] == table[:2]


def test_a_sibling_waits_for_its_leader_then_shares_the_prompt_blocks():
    sched = unit()
    kv = sched.kv
    prompt = list(range(50, 59))
    leader, sibling = make("p#0", prompt), make("p#1", prompt)
    sibling.leader = leader
    sched.add(leader)
    sched.add(sibling)
    out = sched.schedule()
    assert [s.request for s in out.scheduled] == [leader]  # the sibling waits
    sched.update_from_output(out, sampled([5]))
    out = sched.schedule()
    assert [s.request for s in out.scheduled] == [leader, sibling]
    shared = kv.block_table("p#0")[:2]
    assert kv.block_table("p#1")[:2] == shared and all(kv.ref_counts[b] == 2 for b in shared)


def test_an_abort_frees_the_blocks_of_a_running_and_a_waiting_request():
    sched = unit(num_blocks=3, block_size=4)
    running, waiting = make("run", list(range(8))), make("wait", list(range(10, 18)))
    sched.add(running)
    sched.add(waiting)
    step(sched)
    assert sched.running == [running] and list(sched.waiting) == [waiting]
    for r in (running, waiting):
        sched.finish(r, RequestStatus.FINISHED_ABORTED)
    assert not sched.has_unfinished() and held_blocks(sched.kv) == 0
    assert running.status is RequestStatus.FINISHED_ABORTED


def test_a_retried_admission_does_not_hash_the_prompt_again(monkeypatch):
    calls: Counter[tuple[int, ...]] = Counter()
    real = engine.request.hash_block

    def counting(parent, token_ids):
        calls[tuple(token_ids)] += 1
        return real(parent, token_ids)

    monkeypatch.setattr(engine.request, "hash_block", counting)
    sched = unit(num_blocks=4, block_size=4)
    big = make("big", list(range(100, 112)), max_tokens=4)  # 3 blocks, then a 4th
    sched.add(big)
    step(sched)
    late = make("late", list(range(200, 209)), max_tokens=3)  # needs 3 blocks: must wait
    sched.add(late)
    for _ in range(3):
        out, _ = step(sched)
        assert late not in [s.request for s in out.scheduled]  # no blocks: it stays waiting
    assert big.is_finished and late.status is RequestStatus.WAITING
    assert calls[tuple(range(200, 204))] == 1  # the prefix lookup hashed its block once
    steps(sched, lambda: not sched.has_unfinished())
    # Each full block of each request was hashed exactly once, lookups and caching alike.
    assert set(calls.values()) == {1}
    assert calls[tuple(range(204, 208))] == 1


def test_random_workloads_free_every_block_and_keep_the_counts():
    rng = random.Random(5)
    sched = unit(num_blocks=8, block_size=4, budget=16, seqs=4)
    kv = sched.kv
    requests = [make(f"r{i}", [rng.randrange(10, 60) for _ in range(rng.randrange(1, 20))],
                     max_tokens=rng.randrange(1, 10)) for i in range(12)]  # fmt: skip
    for r in requests:
        sched.add(r)
    for _ in range(500):
        if not sched.has_unfinished():
            break
        out = sched.schedule()
        plan = [(s.request, s.start + s.num_new_tokens, s.request.num_tokens + s.samples)
                for s in out.scheduled]  # fmt: skip
        rows = sum(s.samples for s in out.scheduled)
        sched.update_from_output(out, sampled([rng.randrange(10, 60) for _ in range(rows)]))
        for request, computed, length in plan:
            assert (request.num_computed_tokens, request.num_tokens) == (computed, length)
        holders = Counter(b for t in kv.block_tables.values() for b in t)
        assert all(kv.ref_counts[b] == holders.get(b, 0) for b in range(kv.num_blocks))
    assert sched.num_preemptions_total > 0  # the workload did hit block pressure
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in requests)
    assert all(r.num_output_tokens == r.sampling_params.max_tokens for r in requests)
    assert held_blocks(kv) == 0 and not kv.block_tables
