"""Prompt logprobs (vLLM's `prompt_logprobs`) against transformers' full forward of the
same random-weight Llama: every prompt position, chunked or not, alone or batched, and
what they do to the prefix cache (the asking request reads none; everyone else keeps theirs)."""

from __future__ import annotations

import random

import pytest

from engine import SamplingParams
from engine.sampling_params import RequestOutputKind
from engine_helpers import greedy, run_to_completion

RNG = random.Random(12)
LONG_PROMPT = [RNG.randrange(3, 250) for _ in range(45)]  # several blocks of 8
OTHER_PROMPT = [RNG.randrange(3, 250) for _ in range(29)]


def asking(top_n: int, max_tokens: int = 3, **fields) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                          prompt_logprobs=top_n, **fields)  # fmt: skip


@pytest.fixture(scope="module")
def reference_logprobs(random_llama_logprobs):
    return random_llama_logprobs


def assert_matches_reference(prompt, logprobs, ranks, top_n, reference):
    """Entry i holds token i's logprob from row i-1 and the top-N of that row; ranks count
    the vocabulary entries above the token."""
    assert len(logprobs) == len(ranks) == len(prompt)
    assert logprobs[0] is None and ranks[0] is None
    for i in range(1, len(prompt)):
        row, token, entry = reference[i - 1], prompt[i], logprobs[i]
        top = row.topk(top_n)
        assert set(entry) == set(top.indices.tolist()) | {token}
        for t, lp in entry.items():
            assert lp == pytest.approx(row[t].item(), abs=1e-4)
        assert ranks[i] == int((row > row[token]).sum()) + 1


def assert_same_logprobs(got, want):
    assert len(got) == len(want) and got[0] is None and want[0] is None
    for a, b in zip(got[1:], want[1:]):
        assert set(a) == set(b) and all(a[t] == pytest.approx(b[t], abs=1e-4) for t in a)


def test_prompt_logprobs_match_a_full_transformers_forward(make_random_engine, reference_logprobs):
    engine = make_random_engine()
    out = run_to_completion(engine, [LONG_PROMPT], asking(5))[0]
    assert_matches_reference(LONG_PROMPT, out.prompt_logprobs, out.prompt_logprob_ranks, 5,
                             reference_logprobs(LONG_PROMPT))  # fmt: skip


def test_zero_gives_only_the_prompt_tokens_own_logprob(make_random_engine, reference_logprobs):
    engine = make_random_engine()
    out = run_to_completion(engine, [OTHER_PROMPT], asking(0))[0]
    reference = reference_logprobs(OTHER_PROMPT)
    assert [list(e) for e in out.prompt_logprobs[1:]] == [[t] for t in OTHER_PROMPT[1:]]
    assert_matches_reference(OTHER_PROMPT, out.prompt_logprobs, out.prompt_logprob_ranks, 0, reference)


def test_a_request_that_does_not_ask_gets_none(make_random_engine):
    out = run_to_completion(make_random_engine(), [OTHER_PROMPT], greedy(2))[0]
    assert out.prompt_logprobs is None and out.prompt_logprob_ranks is None


def test_chunked_prefill_gives_what_one_step_gives(make_random_engine, reference_logprobs):
    whole = run_to_completion(make_random_engine(), [LONG_PROMPT], asking(3))[0]
    engine = make_random_engine(max_num_batched_tokens=7)  # 45 prompt tokens: 7 chunks
    chunked = run_to_completion(engine, [LONG_PROMPT], asking(3))[0]
    prefill_steps = [s for s in engine.stats_history if s.prefill_tokens]
    assert len(prefill_steps) >= 7
    assert_matches_reference(LONG_PROMPT, chunked.prompt_logprobs, chunked.prompt_logprob_ranks,
                             3, reference_logprobs(LONG_PROMPT))  # fmt: skip
    # Chunks sum in another order than one pass: equal to float32 rounding.
    assert_same_logprobs(chunked.prompt_logprobs, whole.prompt_logprobs)
    assert chunked.outputs[0].token_ids == whole.outputs[0].token_ids


def test_others_in_the_batch_are_unchanged_and_keep_their_prefix_hits(make_random_engine):
    """A warm-up fills the cache with both prompts; then an asking request runs batched
    with two that do not ask: their tokens equal a run without it, and their hits stay."""
    plain = greedy(6)
    alone = make_random_engine()
    run_to_completion(alone, [LONG_PROMPT, OTHER_PROMPT], plain, prefix="warm")
    want = run_to_completion(alone, [LONG_PROMPT, OTHER_PROMPT], plain)

    engine = make_random_engine()
    run_to_completion(engine, [LONG_PROMPT, OTHER_PROMPT], plain, prefix="warm")
    got = run_to_completion(engine, [LONG_PROMPT, OTHER_PROMPT, LONG_PROMPT],
                            [plain, plain, asking(2, max_tokens=6)])  # fmt: skip
    for w, g in zip(want, got[:2]):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert g.prompt_logprobs is None
        assert g.num_cached_tokens == w.num_cached_tokens > 0  # full blocks from the warm-up
    # The asking request read nothing from the cache, though its whole prompt was there.
    assert got[2].num_cached_tokens == 0
    assert got[2].outputs[0].token_ids == got[0].outputs[0].token_ids


def test_the_asking_request_fills_the_cache_for_the_next(make_random_engine):
    engine = make_random_engine()
    first = run_to_completion(engine, [LONG_PROMPT], asking(1), prefix="ask")[0]
    assert first.num_cached_tokens == 0
    again = run_to_completion(engine, [LONG_PROMPT], greedy(3))[0]
    assert again.num_cached_tokens == len(LONG_PROMPT) // 8 * 8  # every full block it wrote
    asks_again = run_to_completion(engine, [LONG_PROMPT], asking(1), prefix="ask-2")[0]
    assert asks_again.num_cached_tokens == 0
    assert_same_logprobs(asks_again.prompt_logprobs, first.prompt_logprobs)


def test_n_samples_share_one_computation(make_random_engine, reference_logprobs):
    """The first sample computes them (reading no cache), the second shares its prompt
    blocks through the prefix cache and computes none; the output has them once, for both."""
    engine = make_random_engine()
    params = SamplingParams(n=2, temperature=1.0, seed=5, max_tokens=4, ignore_eos=True,
                            prompt_logprobs=2)  # fmt: skip
    leader, sibling = engine.add_request("n2", LONG_PROMPT, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    out = outputs[-1]
    assert out.finished and len(out.outputs) == 2
    assert_matches_reference(LONG_PROMPT, out.prompt_logprobs, out.prompt_logprob_ranks, 2,
                             reference_logprobs(LONG_PROMPT))  # fmt: skip
    assert leader.num_cached_tokens == 0 and sibling.prompt_logprobs is None
    assert sibling.num_cached_tokens == len(LONG_PROMPT) // 8 * 8
    prefill = sum(s.prefill_tokens for s in engine.stats_history)
    assert prefill == 2 * len(LONG_PROMPT) - sibling.num_cached_tokens


def test_delta_outputs_carry_them_once_in_the_first(make_random_engine):
    engine = make_random_engine()
    engine.add_request("d", OTHER_PROMPT, asking(1, max_tokens=4, output_kind=RequestOutputKind.DELTA))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert len(outputs) == 4
    assert len(outputs[0].prompt_logprobs) == len(OTHER_PROMPT)
    assert all(o.prompt_logprobs is None for o in outputs[1:])


def test_cumulative_outputs_carry_them_every_time(make_random_engine):
    engine = make_random_engine()
    engine.add_request("c", OTHER_PROMPT, asking(1, max_tokens=3))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert len(outputs) == 3
    assert all(len(o.prompt_logprobs) == len(OTHER_PROMPT) for o in outputs)


@pytest.mark.parametrize("bad", [-1, 21, 1.5, True, "3"])
def test_prompt_logprobs_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=bad)


def test_a_preempted_request_keeps_its_prompt_logprobs_once(make_random_engine, reference_logprobs):
    """Blocks run out while both decode: the newer (asking) request is preempted and
    recomputed; its prompt logprobs are neither lost nor computed twice."""
    engine = make_random_engine(num_kv_blocks=11)
    outs = run_to_completion(engine, [OTHER_PROMPT, LONG_PROMPT],
                             [greedy(30), asking(2, max_tokens=10)])  # fmt: skip
    preempted = [rid for s in engine.stats_history for rid in s.preempted]
    assert "req-1" in preempted
    asked = outs[1]
    assert_matches_reference(LONG_PROMPT, asked.prompt_logprobs, asked.prompt_logprob_ranks, 2,
                             reference_logprobs(LONG_PROMPT))  # fmt: skip
    alone = run_to_completion(make_random_engine(), [LONG_PROMPT], asking(2, max_tokens=10))[0]
    assert asked.outputs[0].token_ids == alone.outputs[0].token_ids
