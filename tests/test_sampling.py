"""The full sampling set: distributions, penalties, seeds, stop strings, n, logprobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import SamplingParams
from engine.kv_snapshot import BlockState
from engine.request import Request
from engine.sampler import Sampler
from engine_helpers import greedy, run_to_completion

VOCAB_LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]
DRAWS = 20_000


def expected_distribution(logits, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0):
    """Independent reference in numpy: the filtered, renormalised softmax."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones_like(p, dtype=bool)
    order = np.argsort(-p)
    if top_k > 0:
        keep[order[top_k:]] = False
    if min_p > 0:
        keep &= p >= min_p * p.max()
    q = np.where(keep, p, 0)
    q /= q.sum()
    if top_p < 1.0:
        sorted_q = q[order]
        before = np.cumsum(sorted_q) - sorted_q
        drop = order[before >= top_p]
        q[drop] = 0
        q /= q.sum()
    return q


def draw(params: SamplingParams, draws: int = DRAWS) -> np.ndarray:
    logits = torch.tensor([VOCAB_LOGITS] * draws)
    requests = [Request(f"r{i}", [1], params, 0.0) for i in range(draws)]
    tokens = Sampler(torch.device("cpu"), seed=123)(logits, requests).token_ids
    return np.bincount(tokens, minlength=len(VOCAB_LOGITS)) / draws


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=1.0), dict(temperature=0.5), dict(temperature=2.0),
     dict(temperature=1.0, top_k=3), dict(temperature=1.0, top_p=0.7),
     dict(temperature=1.0, min_p=0.2), dict(temperature=1.3, top_k=5, top_p=0.9)],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_empirical_distribution_matches_the_filtered_softmax(kw):
    empirical = draw(SamplingParams(**kw))
    expected = expected_distribution(VOCAB_LOGITS, **kw)
    tv = 0.5 * np.abs(empirical - expected).sum()
    # Sampling noise of TV with 20k draws over 8 bins is ~0.01; 0.02 is a safe bound.
    assert tv < 0.02, (empirical, expected)
    assert np.all(empirical[expected == 0] == 0), "a filtered-out token was drawn"


def test_greedy_is_argmax():
    assert draw(SamplingParams(temperature=0.0), draws=50)[0] == 1.0


def test_penalties_against_a_hand_computed_example():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    # Prompt holds token 1; output so far holds token 3 twice and token 0 once.
    req = Request("p", [1], SamplingParams(temperature=0, repetition_penalty=2.0,
                                           presence_penalty=0.5, frequency_penalty=0.25), 0.0)
    for t in (3, 3, 0):
        req.append_output_token(t)
    from engine.sampler import apply_penalties

    got = apply_penalties(logits, [req])[0].tolist()
    # token 0: seen, positive -> 2/2 = 1; minus presence 0.5, frequency 0.25*1 -> 0.25
    # token 1: seen in prompt only, negative -> -1*2 = -2; no output penalties
    # token 2: unseen -> 0.5
    # token 3: seen, positive -> 3/2 = 1.5; minus 0.5 and 0.25*2 -> 0.5
    # token 4: unseen -> 1.0
    assert got == pytest.approx([0.25, -2.0, 0.5, 0.5, 1.0])


PROMPTS = [[(11 * i + j) % 250 + 3 for j in range(5 + 6 * i)] for i in range(9)]


def test_a_seeded_request_is_the_same_alone_and_in_a_batch(make_random_engine):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=20, ignore_eos=True)
    alone = run_to_completion(make_random_engine(), [PROMPTS[4]], seeded)[0]
    others = [SamplingParams(temperature=0.8, max_tokens=20 + i, ignore_eos=True) for i in range(8)]
    batch = run_to_completion(make_random_engine(), PROMPTS[:4] + [PROMPTS[4]] + PROMPTS[5:],
                              others[:4] + [seeded] + others[4:])
    assert batch[4].outputs[0].token_ids == alone.outputs[0].token_ids
    # And a different seed gives a different sample (the seed matters).
    other = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=20, ignore_eos=True)
    assert run_to_completion(make_random_engine(), [PROMPTS[4]], other)[0].outputs[0].token_ids \
        != alone.outputs[0].token_ids


def test_stop_strings_spanning_token_boundaries(make_random_engine):
    free = run_to_completion(make_random_engine(), [PROMPTS[2]], greedy(40))[0].outputs[0]
    text = free.text
    # The byte-level tokenizer makes one token per byte: any 3-character stop string
    # spans three tokens. Pick one from the middle of the free-running text.
    stop = next(text[i:i + 3] for i in range(8, len(text) - 3) if text[i:i + 3].isprintable()
                and text.find(text[i:i + 3]) == i)
    cut = text.index(stop)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop, "\x00never"])
    out = run_to_completion(make_random_engine(), [PROMPTS[2]], params)[0].outputs[0]
    assert out.text == text[:cut]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    keep = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop],
                          include_stop_str_in_output=True)
    out = run_to_completion(make_random_engine(), [PROMPTS[2]], keep)[0].outputs[0]
    assert out.text == text[:cut + len(stop)]


def test_stop_token_ids_and_min_tokens(make_random_engine):
    free = run_to_completion(make_random_engine(), [PROMPTS[3]], greedy(30))[0].outputs[0]
    stop_id = free.token_ids[5]
    first = free.token_ids.index(stop_id)
    out = run_to_completion(make_random_engine(), [PROMPTS[3]],
                            SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_id]))[0]
    assert out.outputs[0].token_ids == free.token_ids[: first + 1]
    assert out.outputs[0].stop_reason == stop_id
    # min_tokens forbids the stop token until enough tokens exist.
    later = run_to_completion(make_random_engine(), [PROMPTS[3]], SamplingParams(
        temperature=0, max_tokens=30, stop_token_ids=[stop_id], min_tokens=first + 2))[0]
    assert len(later.outputs[0].token_ids) >= first + 2


def test_n_samples_share_the_prompt_blocks_and_free_them(make_random_engine):
    engine = make_random_engine()
    prompt = PROMPTS[6]  # 41 tokens: 5 full blocks of 8
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True)
    engine.add_request("multi", prompt, params)
    shared_seen = 0
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final = out
        snap = engine.kv_snapshot()
        tables = [t for rid, t in snap.block_tables.items() if rid.startswith("multi#")]
        if len(tables) == 4:
            common = set.intersection(*(set(t[:5]) for t in tables))
            shared_seen = max(shared_seen, len(common))
            assert all(snap.ref_counts[b] == 4 for b in common)
    assert shared_seen == 5, "the four samples did not share the five full prompt blocks"
    assert [c.index for c in final.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 12 for c in final.outputs)
    assert len({tuple(c.token_ids) for c in final.outputs}) > 1  # different samples
    snap = engine.kv_snapshot()
    assert snap.num_in_use == 0 and not snap.block_tables
    assert all(BlockState(s) != BlockState.IN_USE for s in snap.states)


def test_logprobs_are_the_models_log_softmax(random_llama, make_random_engine):
    engine = make_random_engine()
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3)
    out = run_to_completion(engine, [PROMPTS[1]], params)[0].outputs[0]
    assert len(out.logprobs) == 6
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32).eval()
    ids = torch.tensor([PROMPTS[1] + out.token_ids])
    with torch.no_grad():
        ref = hf(ids).logits[0].log_softmax(-1)
    total = 0.0
    for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        row = ref[len(PROMPTS[1]) - 1 + step]
        top = row.topk(3)
        assert list(entry)[:3] == top.indices.tolist()
        assert list(entry.values())[:3] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry[token] == pytest.approx(row[token].item(), abs=1e-4)
        total += entry[token]
    assert out.cumulative_logprob == pytest.approx(total)
    assert math.isfinite(out.cumulative_logprob)
