"""The server's logit_bias, allowed_token_ids, bad_words, seed range and caps (n,
max_tokens, logprobs, top_logprobs): through the official `openai` client and raw HTTP.

The served model is the random-weight Llama with a byte tokenizer (vocabulary 259: one
token per byte), so a text's characters are its tokens.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from engine.server.params import MAX_LOGPROBS, MAX_N

VOCAB = 259
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def model(api_client) -> str:
    return api_client.models.list().data[0].id


def token_of(served_engine, char: str) -> int:
    (token,) = served_engine.tokenizer.encode(char, add_special_tokens=False)
    return token


def error_of(exc: openai.APIStatusError) -> dict:
    """The OpenAI error object (the client unwraps {"error": {...}})."""
    assert exc.status_code == 400
    assert set(exc.body) == {"message", "type", "param", "code"}, exc.body
    assert exc.body["type"] == "invalid_request_error"
    return exc.body


def still_serving(api_client, model) -> None:
    reply = api_client.completions.create(model=model, prompt="ok", max_tokens=2, **GREEDY)
    assert reply.usage.completion_tokens == 2


# ---------------------------------------------------------------- each field works


def test_logit_bias_forces_a_token_in_chat_and_completions(api_client, served_engine, model):
    a = token_of(served_engine, "A")
    done = api_client.completions.create(model=model, prompt="hello", max_tokens=6,
                                         logit_bias={str(a): 100}, temperature=1.0, seed=5)
    assert done.choices[0].text == "A" * 6
    chat = api_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        logit_bias={str(a): 100}, **GREEDY)
    assert chat.choices[0].message.content == "A" * 4


def test_logit_bias_of_minus_100_removes_the_greedy_choice(api_client, served_engine, model):
    a, b = token_of(served_engine, "A"), token_of(served_engine, "B")
    both = {str(a): 100, str(b): 100}  # greedy picks the one the model prefers
    first = api_client.completions.create(model=model, prompt="hello", max_tokens=1,
                                          logit_bias=both, **GREEDY).choices[0].text
    assert first in ("A", "B")
    other = "B" if first == "A" else "A"
    both[str(token_of(served_engine, first))] = -100
    second = api_client.completions.create(model=model, prompt="hello", max_tokens=1,
                                           logit_bias=both, **GREEDY).choices[0].text
    assert second == other


def test_allowed_token_ids_limit_the_sampled_text(api_client, served_engine, model):
    allowed = {token_of(served_engine, c): c for c in "xyz"}
    for seed in range(3):
        reply = api_client.completions.create(
            model=model, prompt="hello", max_tokens=12, temperature=1.0, seed=seed,
            extra_body={"allowed_token_ids": list(allowed), "ignore_eos": True})
        text = reply.choices[0].text
        assert len(text) == 12 and set(text) <= set("xyz"), text


def test_bad_words_keep_a_free_runs_character_out(api_client, model):
    request = dict(model=model, prompt="hello there", max_tokens=24,
                   extra_body={"ignore_eos": True}, **GREEDY)
    free = api_client.completions.create(**request).choices[0].text
    word = next(c for c in free if c.isascii() and c.isalnum())
    body = {**request["extra_body"], "bad_words": [word]}
    text = api_client.completions.create(**{**request, "extra_body": body}).choices[0].text
    assert word not in text and text[:free.index(word)] == free[:free.index(word)]


def test_the_whole_64_bit_seed_range_is_accepted(api_client, model):
    for seed in (2**63 - 1, -(2**63)):
        reply = api_client.completions.create(model=model, prompt="abc", max_tokens=3, n=2,
                                              temperature=1.0, seed=seed)
        assert len(reply.choices) == 2


def test_n_up_to_the_cap_is_served(api_client, model):
    reply = api_client.completions.create(model=model, prompt="abc", max_tokens=1, n=MAX_N,
                                          temperature=1.0)
    assert len(reply.choices) == MAX_N


# ---------------------------------------------------------------- bad input: 400 naming it


@pytest.mark.parametrize("fields, param, words", [
    ({"logit_bias": {"abc": 1}}, "logit_bias", ["'abc'"]),
    ({"logit_bias": {"1.5": 1}}, "logit_bias", ["'1.5'"]),
    ({"logit_bias": {str(VOCAB): 1}}, "logit_bias", [str(VOCAB), f"vocabulary size is {VOCAB}"]),
    ({"logit_bias": {"-3": 1}}, "logit_bias", ["-3", str(VOCAB)]),
    ({"logit_bias": {"5": 100.5}}, "logit_bias", ["[-100, 100]"]),
    ({"logit_bias": {"5": -150}}, "logit_bias", ["[-100, 100]"]),
    ({"stop_token_ids": [10**6]}, "stop_token_ids", [str(10**6), str(VOCAB)]),
    ({"allowed_token_ids": [3, VOCAB + 1]}, "allowed_token_ids", [str(VOCAB + 1), str(VOCAB)]),
    ({"allowed_token_ids": []}, "allowed_token_ids", ["non-empty"]),
    ({"bad_words": [""]}, "bad_words", []),
    ({"bad_words": [f"w{i}" for i in range(200)]}, "bad_words", ["at most 128"]),
    ({"seed": 2**63}, "seed", [str(2**63)]),
    ({"seed": -(2**63) - 1}, "seed", [str(-(2**63) - 1)]),
    ({"n": MAX_N + 1}, "n", [str(MAX_N)]),
    ({"max_tokens": 10**9}, "max_tokens", [str(10**9)]),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs", ["20"]),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_completion_fields_get_a_400_naming_them(api_client, model, fields, param, words,
                                                     stream):  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.completions.create(model=model, prompt="abc", max_tokens=4, stream=stream,
                                      extra_body=fields)
    error = error_of(caught.value)
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error
    still_serving(api_client, model)


@pytest.mark.parametrize("fields, param", [
    ({"logit_bias": {"x1": 5}}, "logit_bias"),
    ({"logit_bias": {str(VOCAB + 50): 5}}, "logit_bias"),
    ({"seed": 2**64}, "seed"),
    ({"max_tokens": 10**9}, "max_tokens"),
    ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
    ({"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"n": 1000}, "n"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
])
def test_bad_chat_fields_get_a_400_naming_them(api_client, model, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            extra_body=fields)
    assert error_of(caught.value)["param"] == param
    still_serving(api_client, model)


def test_raw_json_bodies_get_vllm_shaped_400s(api_server, model):
    url = f"{api_server.url}/v1/completions"
    for body, param, needle in [
        ({"logit_bias": {"not-a-token": 3}}, "logit_bias", "not-a-token"),
        ({"logit_bias": {"99999": 3}}, "logit_bias", "99999"),
        ({"logit_bias": {"5": "strong"}}, "logit_bias.5", "5"),
        ({"seed": 2**63}, "seed", "seed"),
        ({"bad_words": "  "}, "bad_words", "bad_words"),
    ]:
        reply = httpx.post(url, json={"model": model, "prompt": "abc", "max_tokens": 2, **body})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        assert needle in error["message"], error
    ok = httpx.post(url, json={"model": model, "prompt": "abc", "max_tokens": 2,
                               "logit_bias": {"70": 100}, "temperature": 0})
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) == 2
