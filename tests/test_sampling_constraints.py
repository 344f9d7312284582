"""logit_bias, allowed_token_ids and bad_words (vLLM's SamplingParams), the 64-bit seed,
and the vocabulary checks: in the sampler against naive references, and in the engine."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from engine import SamplingParams
from engine.bad_words import MAX_BAD_WORD_SEQUENCES, MAX_BAD_WORD_TOKENS, tokenize_bad_words
from engine import logits_constraints
from engine.logits_constraints import apply_constraints
from engine.request import Request
from engine.sampler import Sampler
from engine_helpers import greedy, run_to_completion
from model_factory import make_byte_tokenizer

CPU = torch.device("cpu")
PROMPTS = [[(13 * i + j) % 250 + 3 for j in range(6 + 5 * i)] for i in range(6)]


def request(params: SamplingParams, output: list[int] = (), seed: int | None = None,
            bad_words: list[list[int]] = ()) -> Request:  # fmt: skip
    r = Request("r", [1], params, 0.0, bad_words_token_ids=[list(w) for w in bad_words])
    for t in output:
        r.append_output_token(t)
    if seed is not None:
        r.generator = torch.Generator().manual_seed(seed)
    return r


def naive_constraints(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """The same rules, one row and one token at a time."""
    out = logits.clone()
    for i, r in enumerate(requests):
        p = r.sampling_params
        if p.allowed_token_ids is not None:
            for t in range(out.shape[1]):
                if t not in p.allowed_token_ids:
                    out[i, t] = float("-inf")
        for word in r.bad_words_token_ids:
            head = word[:-1]
            if len(head) <= r.num_output_tokens and (
                    not head or r.output_token_ids[-len(head):] == head):
                out[i, word[-1]] = float("-inf")
        for t, b in (p.logit_bias or {}).items():
            out[i, t] += b
    return out


# ---------------------------------------------------------------- the sampler


def test_constraints_touch_exactly_the_listed_logits_of_the_rows_that_ask():
    torch.manual_seed(0)
    logits = torch.randn(5, 40)
    before = logits.clone()
    requests = [
        request(SamplingParams(logit_bias={3: 2.5, 7: -1.25, 39: 100})),
        request(SamplingParams()),  # free: untouched
        request(SamplingParams(allowed_token_ids=[0, 5, 9], logit_bias={5: -3})),
        request(SamplingParams(), output=[4, 8, 2], bad_words=[[11], [8, 2, 17], [2, 21], [9, 9, 22]]),
        request(SamplingParams(allowed_token_ids=[30]), output=[1], bad_words=[[30]]),
    ]
    got = apply_constraints(logits, requests)
    assert torch.equal(logits, before), "the raw logits (kept for logprobs) were changed"
    assert torch.equal(got, naive_constraints(logits, requests))
    changed = (got != logits).nonzero().tolist()
    assert [c for r, c in changed if r == 0] == [3, 7, 39]
    assert [c for r, c in changed if r == 1] == []
    assert [c for r, c in changed if r == 3] == [11, 17, 21]  # [9, 9, 22]: prefix not there


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.5])
def test_a_plus_100_bias_forces_its_token_and_minus_100_bans_it(temperature):
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -2.0, -6.0, -9.0]] * 400)
    forced = [request(SamplingParams(temperature=temperature, logit_bias={7: 100.0}),
                      seed=i if i % 2 else None) for i in range(400)]  # fmt: skip
    assert set(Sampler(CPU, seed=1)(logits, forced).token_ids) == {7}
    banned = [request(SamplingParams(temperature=temperature, logit_bias={0: -100.0}))
              for _ in range(400)]
    tokens = Sampler(CPU, seed=2)(logits, banned).token_ids
    assert 0 not in tokens
    if temperature == 0:
        assert set(tokens) == {1}


def test_allowed_token_ids_only_ever_yield_allowed_ids_with_the_renormalised_softmax():
    raw = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]
    allowed = [1, 4, 7]
    seeded = [request(SamplingParams(temperature=1.0, allowed_token_ids=allowed), seed=s)
              for s in range(300)]
    tokens = Sampler(CPU)(torch.tensor([raw] * 300), seeded).token_ids
    assert set(tokens) <= set(allowed)
    draws = 20_000
    free = [request(SamplingParams(temperature=1.0, allowed_token_ids=allowed))] * draws
    tokens = Sampler(CPU, seed=5)(torch.tensor([raw] * draws), free).token_ids
    empirical = np.bincount(tokens, minlength=len(raw)) / draws
    expected = np.zeros(len(raw))
    expected[allowed] = np.exp(np.asarray(raw)[allowed])
    expected /= expected.sum()
    assert 0.5 * np.abs(empirical - expected).sum() < 0.02, (empirical, expected)
    greedy_pick = Sampler(CPU)(torch.tensor([raw]), [request(SamplingParams(
        temperature=0, allowed_token_ids=allowed))]).token_ids
    assert greedy_pick == [1]  # the best allowed token, not the best token


def test_logprobs_stay_those_of_the_raw_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -4.0]])
    params = SamplingParams(temperature=0, logprobs=2, logit_bias={4: 50.0})
    out = Sampler(CPU)(logits, [request(params)])
    raw = logits[0].log_softmax(-1)
    assert out.token_ids == [4]
    assert out.chosen_logprobs[0] == pytest.approx(raw[4].item())
    assert out.logprobs[0] == pytest.approx({0: raw[0].item(), 1: raw[1].item(), 4: raw[4].item()})


# ---------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize("fields, name", [
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
    ({"logit_bias": {"1.5": 1.0}}, "logit_bias"),
    ({"logit_bias": {5: 100.5}}, "logit_bias"),
    ({"logit_bias": {5: -101}}, "logit_bias"),
    ({"logit_bias": {5: float("nan")}}, "logit_bias"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [3, -1]}, "allowed_token_ids"),
    ({"bad_words": [""]}, "bad_words"),
    ({"bad_words": ["ok", "  "]}, "bad_words"),
])
def test_bad_constraint_values_raise_value_errors_naming_the_field(fields, name):
    with pytest.raises(ValueError, match=f"^{name} must "):
        SamplingParams(**fields)


def test_json_style_keys_and_the_64_bit_seed_limits_are_accepted():
    assert SamplingParams(logit_bias={"12": 1.5, 7: -100, "+3": 100}).logit_bias == {
        12: 1.5, 7: -100, 3: 100}
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
    assert SamplingParams(seed=-(2**63)).seed == -(2**63)
    assert SamplingParams(bad_words=["a", "b", "a"]).bad_words == ["a", "b"]
    # Vocabulary bounds, negative ids included, are the engine's to check (it knows the size).
    assert SamplingParams(logit_bias={-1: 1.0}).logit_bias == {-1: 1.0}


# ---------------------------------------------------------------- the engine


def test_ids_outside_the_vocabulary_name_the_field_and_the_engine_goes_on(make_random_engine):
    engine = make_random_engine()
    vocab = engine.loaded.hf_config.vocab_size
    free_before = engine.kv_manager.num_free_blocks
    for field, value, bad in [("logit_bias", {5: 1.0, vocab: 2.0}, vocab),
                              ("logit_bias", {-1: 1.0}, -1),
                              ("allowed_token_ids", [4, vocab + 7], vocab + 7),
                              ("stop_token_ids", [10**6], 10**6)]:
        with pytest.raises(ValueError) as caught:
            engine.add_request(f"bad-{field}", PROMPTS[0], SamplingParams(**{field: value}))
        message = str(caught.value)
        assert message.startswith(f"{field} must ") and str(bad) in message and str(vocab) in message
    assert not engine.has_unfinished_requests() and not engine.groups
    assert engine.kv_manager.num_free_blocks == free_before
    assert len(run_to_completion(engine, [PROMPTS[0]], greedy(4))[0].outputs[0].token_ids) == 4


def _ascii_window(tokenizer, token_ids: list[int], length: int, start: int = 2) -> tuple[int, str]:
    """The first place in `token_ids` from `start` whose `length` tokens decode to printable,
    space-free text that tokenizes back to exactly them, and that text."""
    for k in range(start, len(token_ids) - length):
        text = tokenizer.decode(token_ids[k:k + length])
        if (text.isprintable() and not any(c.isspace() for c in text)
                and tokenizer.encode(text, add_special_tokens=False) == token_ids[k:k + length]):
            return k, text
    raise AssertionError(f"no printable {length}-token window in {token_ids}")


@pytest.mark.parametrize("length", [1, 3])
def test_bad_words_never_appear_where_the_free_greedy_run_had_them(make_random_engine, length):
    engine = make_random_engine()
    free = run_to_completion(engine, [PROMPTS[2]], greedy(48))[0].outputs[0].token_ids
    k, word = _ascii_window(engine.tokenizer, free, length)
    word_ids = free[k:k + length]
    out = run_to_completion(engine, [PROMPTS[2]], SamplingParams(
        temperature=0, max_tokens=48, ignore_eos=True, bad_words=[word]), "bw")[0].outputs[0]
    got = out.token_ids
    windows = [got[i:i + length] for i in range(len(got) - length + 1)]
    assert word_ids not in windows
    # Greedy is unchanged up to the word's last token, which is the one banned there.
    assert got[:k + length - 1] == free[:k + length - 1] and got[k + length - 1] != free[k + length - 1]


def test_bad_words_tokenize_as_vllm_does(default_loaded):
    tok = default_loaded.tokenizer
    plain = tok.encode("Paris", add_special_tokens=False)
    spaced = tok.encode(" Paris", add_special_tokens=False)
    assert len(plain) == len(spaced) == 1 and plain != spaced
    # Both forms, so the word is banned at the start of a reply and after a space; a
    # leading space in the word itself changes nothing.
    assert tokenize_bad_words(tok, ["Paris"], 49152) == [plain, spaced]
    assert tokenize_bad_words(tok, [" Paris"], 49152) == [plain, spaced]
    # A spaced form of another length is the plain word behind a space: vLLM drops it.
    byte_tok = make_byte_tokenizer()
    ab = byte_tok.encode("ab", add_special_tokens=False)
    assert len(byte_tok.encode(" ab", add_special_tokens=False)) == 3
    assert tokenize_bad_words(byte_tok, ["ab"], 259) == [ab]
    many = [f"w{i}" for i in range(MAX_BAD_WORD_SEQUENCES + 1)]  # one sequence each here
    assert len(tokenize_bad_words(byte_tok, many[:-1], 259)) == MAX_BAD_WORD_SEQUENCES
    with pytest.raises(ValueError, match=f"^bad_words must make at most {MAX_BAD_WORD_SEQUENCES}"):
        tokenize_bad_words(byte_tok, many, 259)
    with pytest.raises(ValueError, match=f"^bad_words must .* {MAX_BAD_WORD_TOKENS} tokens"):
        tokenize_bad_words(byte_tok, ["x" * (MAX_BAD_WORD_TOKENS + 1)], 259)
    with pytest.raises(ValueError, match=r"^bad_words must .*vocabulary size is 100\), got \[" + str(plain[0])):
        tokenize_bad_words(tok, ["Paris"], 100)


def test_bad_words_keep_a_word_out_of_a_real_models_answer(make_engine):
    engine = make_engine(max_model_len=256)
    prompt = "The capital of France is"
    free = run_to_completion(engine, [prompt], greedy(8))[0].outputs[0].text
    assert "Paris" in free  # the unconstrained answer names it
    out = run_to_completion(engine, [prompt], SamplingParams(
        temperature=0, max_tokens=8, ignore_eos=True, bad_words=["Paris"]), "bw")[0].outputs[0]
    assert "Paris" not in out.text


def test_constrained_and_free_rows_share_steps_and_free_rows_are_unchanged(make_random_engine):
    free_params = [greedy(16), SamplingParams(temperature=1.0, seed=11, max_tokens=16, ignore_eos=True)]
    alone = run_to_completion(make_random_engine(), PROMPTS[:2], free_params)
    engine = make_random_engine()
    allowed = [40, 41, 42]
    constrained = [
        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, allowed_token_ids=allowed),
        SamplingParams(temperature=1.0, seed=3, max_tokens=16, ignore_eos=True,
                       logit_bias={77: 100.0}),
        SamplingParams(temperature=0.8, max_tokens=16, ignore_eos=True, allowed_token_ids=allowed,
                       logit_bias={42: -100.0}),
    ]
    mixed = run_to_completion(engine, PROMPTS[:2] + PROMPTS[2:5], free_params + constrained)
    assert max(s.batch_size for s in engine.stats_history) == 5  # all in one step
    assert [o.outputs[0].token_ids for o in mixed[:2]] == [o.outputs[0].token_ids for o in alone]
    assert set(mixed[2].outputs[0].token_ids) <= set(allowed)
    assert mixed[3].outputs[0].token_ids == [77] * 16
    assert set(mixed[4].outputs[0].token_ids) <= {40, 41}
    # The per-request tensors cached for the constraints go with their finished requests.
    gc.collect()
    assert not logits_constraints._drop_masks and not logits_constraints._biases


def test_n_samples_of_the_largest_seed_are_seeded_apart(make_random_engine):
    params = SamplingParams(n=3, temperature=1.0, seed=2**63 - 1, max_tokens=8, ignore_eos=True)
    first = run_to_completion(make_random_engine(), [PROMPTS[1]], params)[0]
    again = run_to_completion(make_random_engine(), [PROMPTS[1]], params)[0]
    samples = [c.token_ids for c in first.outputs]
    assert samples == [c.token_ids for c in again.outputs]  # reproducible
    assert len({tuple(s) for s in samples}) == 3
