"""The static-batching comparison: the step model by hand, and lengths read from records."""

from __future__ import annotations

import pytest

from engine.static_batching import (
    RequestLengths,
    finished_request_lengths,
    static_batching_steps,
)
from engine.stats import ScheduledEntry, StepKind, StepStats

K = StepKind


def entry(rid: str, kind: StepKind, new: int, before: int, sampled: bool) -> ScheduledEntry:
    return ScheduledEntry(rid, rid.split("#")[0], new, kind, before, sampled)


def record(step: int, scheduled=(), **fields) -> StepStats:
    base = dict(prefill_tokens=0, decode_tokens=0, batch_size=len(scheduled), step_seconds=0.01,
                num_running=len(scheduled), num_waiting=len(fields.get("waiting", ())),
                num_preemptions=len(fields.get("preempted", ())), prefix_cache_hit_tokens=0,
                kv_usage=0.1, finished_time=100.0 + step * 0.01)
    base.update(fields)
    return StepStats(step=step, scheduled=tuple(scheduled), **base)


def scenario() -> list[StepStats]:
    """A (prompt 3) decodes beside B's chunked prefill (3 + 2); C waits, runs, is preempted
    and recomputed (its prompt 2 + 1 earlier output), then finishes. Each makes 3 tokens."""
    return [
        record(0, [entry("A", K.PREFILL, 3, 0, True)], waiting=("B", "C")),
        record(1, [entry("A", K.DECODE, 1, 3, True), entry("B", K.CHUNKED_PREFILL, 3, 0, False)],
               waiting=("C",)),
        record(2, [entry("A", K.DECODE, 1, 4, True), entry("B", K.CHUNKED_PREFILL, 2, 3, True)],
               finished=("A",), waiting=("C",)),
        record(3, [entry("B", K.DECODE, 1, 5, True), entry("C", K.PREFILL, 2, 0, True)]),
        record(4, [entry("B", K.DECODE, 1, 6, True)], preempted=("C",), finished=("B",),
               waiting=("C",)),
        record(5, [entry("C", K.RECOMPUTE, 3, 0, True)]),
        record(6, [entry("C", K.DECODE, 1, 3, True)], finished=("C",)),
    ]


@pytest.mark.parametrize(
    ("batch_size", "steps"),
    [(1, 5 + 1 + 8 + 2), (2, 5 + 8), (3, 8 + 2), (4, 8), (10, 8)],
)
def test_static_steps_by_hand(batch_size, steps):
    requests = [(10, 5), (3, 1), (7, 8), (2, 2)]
    assert static_batching_steps(requests, batch_size) == steps


def test_static_steps_edges():
    assert static_batching_steps([], 4) == 0
    # A batch whose members made no token still pays its prefill step.
    assert static_batching_steps([(5, 0), (4, 0)], 2) == 1
    # Prompt lengths pad the prefill but do not add steps.
    assert static_batching_steps([(1000, 3), (1, 3)], 2) == 3
    with pytest.raises(ValueError, match="batch_size"):
        static_batching_steps([(1, 1)], 0)


def test_lengths_from_records_with_chunks_and_recompute():
    assert finished_request_lengths(scenario()) == [(3, 3), (5, 3), (2, 3)]


def test_unfinished_and_outputless_requests_are_left_out():
    assert finished_request_lengths(scenario()[:5]) == [(3, 3), (5, 3)]  # C still running
    aborted_c = scenario()[:5] + [record(5, [], finished=("C",))]  # aborted after preemption
    assert finished_request_lengths(aborted_c) == [(3, 3), (5, 3), (2, 1)]
    aborted = [record(0, [], waiting=("X",)), record(1, [], finished=("X",))]
    assert finished_request_lengths(aborted) == []


def test_prefix_cache_hits_count_as_prompt():
    records = [record(0, [entry("P", K.PREFILL, 4, 12, True)]),
               record(1, [entry("P", K.DECODE, 1, 16, True)], finished=("P",))]
    assert finished_request_lengths(records) == [(16, 2)]


def test_comparison_uses_the_largest_batch_seen():
    tracker = RequestLengths()
    for r in scenario():
        tracker.add(r)
    cmp = tracker.compare()
    # Largest batch: 2. Static: [A, B] -> 3 steps, [C] -> 3 steps. Continuous: steps 0..6.
    assert (cmp.batch_size, cmp.static_steps, cmp.continuous_steps) == (2, 6, 7)
    assert cmp.describe() == ("continuous batching: 7 steps · static batches of 2 padded to "
                              "the longest: 6 steps (0.9× fewer)")
    assert tracker.compare(batch_size=1).static_steps == 9
    assert RequestLengths().compare().describe().endswith("no finished request yet")


def test_describe_says_when_both_take_the_same_steps():
    tracker = RequestLengths()
    for r in [record(0, [entry("Q", K.PREFILL, 2, 0, True)]),
              record(1, [entry("Q", K.DECODE, 1, 2, True)], finished=("Q",))]:
        tracker.add(r)
    assert tracker.compare().describe().endswith("2 steps (the same)")
