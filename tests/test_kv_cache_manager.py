"""The KV cache manager and scheduler bookkeeping, driven without a model.

A fake step advances each scheduled request exactly as the engine does (computed tokens
grow, full blocks get hashed, a sampled token is appended), so the invariants below are
checked on the same sequences of calls the engine makes.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings, strategies as st

from engine.kv_cache_manager import KVCacheManager
from engine.kv_snapshot import BlockState
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def make_request(rid: str, tokens: list[int], max_tokens: int = 8) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return Request(rid, list(tokens), params, arrival_time=0.0)


def fake_step(sched: Scheduler, rng: random.Random) -> list[Request]:
    """Advance one step; returns the requests that finished."""
    out = sched.schedule()
    finished = []
    for item in out.scheduled:
        r = item.request
        r.num_computed_tokens += item.num_new_tokens
        sched.kv.cache_full_blocks(r)
        if item.samples:
            r.append_output_token(rng.randrange(50))
            status = r.check_stop()
            if status is not None:
                sched.finish(r, status)
                finished.append(r)
    return finished


def check_invariants(kv: KVCacheManager) -> None:
    snap = kv.snapshot()
    holders = Counter(b for t in snap.block_tables.values() for b in t)
    for b in range(kv.num_blocks):
        # A block's ref count is the number of block tables that hold it.
        assert snap.ref_counts[b] == holders.get(b, 0), f"block {b}"
        state = snap.state(b)
        assert (state == BlockState.IN_USE) == (holders.get(b, 0) > 0)
        if state == BlockState.CACHED_FREE:
            assert snap.hashes[b] is not None
    for rid, table in snap.block_tables.items():
        assert len(set(table)) == len(table), "a block twice in one table"
    # Two owners of one block may only share a full, hashed (prefix) block.
    for b, owners in snap.owners_by_block().items():
        if len(owners) > 1:
            assert snap.hashes[b] is not None, f"block {b} shared by {owners} without a hash"
    assert kv.num_free_blocks == snap.num_free + snap.num_cached_free


def test_prefix_hit_reuses_blocks_and_leaves_one_token():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=64)
    prompt = list(range(1, 13))  # exactly three full blocks
    a = make_request("a", prompt, max_tokens=2)
    sched.add(a)
    rng = random.Random(0)
    while sched.has_unfinished():
        fake_step(sched, rng)
    cached = [b for b in range(16) if kv.snapshot().state(b) == BlockState.CACHED_FREE]
    assert len(cached) == 3
    b = make_request("b", prompt, max_tokens=2)
    sched.add(b)
    out = sched.schedule()
    # Two of three blocks hit: the last block is recomputed so there are logits to sample.
    assert out.num_prefix_hit_tokens == 8
    assert out.scheduled[0].num_new_tokens == 4
    assert set(kv.block_table("b")[:2]) <= set(cached)
    kinds = [e.kind for e in kv.events]
    assert "prefix_hit" in kinds


def test_shared_prefix_while_in_use_counts_refs():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=64)
    rng = random.Random(1)
    sched.add(make_request("a", list(range(1, 18)), max_tokens=20))
    fake_step(sched, rng)  # a's prompt is computed and hashed
    sched.add(make_request("b", list(range(1, 18)) + [99], max_tokens=20))
    fake_step(sched, rng)
    shared = set(kv.block_table("a")[:4]) & set(kv.block_table("b"))
    assert len(shared) == 4
    snap = kv.snapshot()
    assert all(snap.ref_counts[b] == 2 for b in shared)
    assert any(e.kind == "share" for e in snap.events)
    check_invariants(kv)


def test_lru_eviction_takes_empty_blocks_before_cached_ones():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    r = make_request("a", [1, 2, 3, 4])
    assert kv.allocate_slots(r, 4)
    r.num_computed_tokens = 4
    kv.cache_full_blocks(r)
    kv.free(r)
    assert kv.snapshot().num_cached_free == 2
    s = make_request("b", [7, 8, 9, 10])
    assert kv.allocate_slots(s, 4)  # takes the two empty blocks
    assert kv.snapshot().num_cached_free == 2
    t = make_request("c", [5, 6])
    assert kv.allocate_slots(t, 2)  # now one cached block must be evicted
    assert kv.snapshot().num_cached_free == 1
    assert any(e.kind == "BlockRemoved" for e in kv.events)
    assert not kv.allocate_slots(make_request("d", [1, 1, 1, 1]), 4)  # only one left


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    before = kv.snapshot()
    assert not kv.allocate_slots(make_request("x", list(range(12))), 12)
    after = kv.snapshot()
    assert (before.states == after.states).all() and not after.block_tables


def test_preemption_when_blocks_run_out_and_everyone_finishes():
    kv = KVCacheManager(num_blocks=6, block_size=4)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64)
    for i in range(3):
        sched.add(make_request(f"r{i}", [i + 1] * 5, max_tokens=10))
    rng = random.Random(2)
    done = []
    for _ in range(200):
        done += fake_step(sched, rng)
        check_invariants(kv)
        if not sched.has_unfinished():
            break
    assert sorted(r.request_id for r in done) == ["r0", "r1", "r2"]
    assert sched.num_preemptions_total > 0
    assert all(r.num_output_tokens == 10 for r in done)
    assert any(e.kind == "preempt" for e in kv.events)
    snap = kv.snapshot()
    assert snap.num_in_use == 0


def test_chunked_prefill_respects_token_budget():
    kv = KVCacheManager(num_blocks=64, block_size=4)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=7)
    sched.add(make_request("long", list(range(1, 31)), max_tokens=3))
    sched.add(make_request("short", [5, 6], max_tokens=3))
    rng = random.Random(3)
    sizes = []
    while sched.has_unfinished():
        out = sched.schedule()
        assert out.num_tokens <= 7
        sizes.append([(s.request.request_id, s.num_new_tokens) for s in out.scheduled])
        for item in out.scheduled:
            r = item.request
            r.num_computed_tokens += item.num_new_tokens
            kv.cache_full_blocks(r)
            if item.samples:
                r.append_output_token(rng.randrange(50))
                if (st_ := r.check_stop()) is not None:
                    sched.finish(r, st_)
    assert sizes[0] == [("long", 7)]
    assert sum(n for step in sizes for rid, n in step if rid == "long") == 30 + 2


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "step", "step", "step", "abort"]),
        st.integers(1, 40),  # prompt length
        st.integers(0, 3),  # which prefix family (shared prefixes make cache hits)
        st.integers(1, 12),  # max tokens
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, num_blocks=st.integers(8, 40), block_size=st.sampled_from([2, 4, 8]),
       budget=st.integers(4, 64), seed=st.integers(0, 1000))
def test_random_workloads_keep_the_invariants(ops, num_blocks, block_size, budget, seed):
    kv = KVCacheManager(num_blocks=num_blocks, block_size=block_size)
    sched = Scheduler(kv, max_num_seqs=6, max_num_batched_tokens=budget)
    rng = random.Random(seed)
    live: list[Request] = []
    n = 0
    for op, length, family, max_tokens in ops:
        if op == "add":
            # A request must fit the cache alone (the engine refuses any other at add).
            length = min(length, num_blocks * block_size - max_tokens - 1)
            if length < 1:
                continue
            prefix = [family * 100 + i for i in range(length)]
            r = make_request(f"r{n}", prefix, max_tokens=max_tokens)
            n += 1
            sched.add(r)
            live.append(r)
        elif op == "step":
            fake_step(sched, rng)
        elif op == "abort" and live:
            victim = live[rng.randrange(len(live))]
            if not victim.is_finished:
                sched.finish(victim, RequestStatus.FINISHED_ABORTED)
        check_invariants(kv)
    for _ in range(2000):  # drain: every request ends and every block comes back
        if not sched.has_unfinished():
            break
        fake_step(sched, rng)
        check_invariants(kv)
    assert not sched.has_unfinished()
    snap = kv.snapshot()
    assert snap.num_in_use == 0 and not snap.block_tables
    assert all(s in (BlockState.FREE, BlockState.CACHED_FREE) for s in map(BlockState, snap.states))
