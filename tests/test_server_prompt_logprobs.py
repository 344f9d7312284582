"""Prompt logprobs through the server, as vLLM's serves them: completions' `echo` with
`logprobs` (prompt tokens then generated ones, streamed or not), the `prompt_logprobs`
field on completions and chat, and `usage.prompt_tokens_details.cached_tokens`.

Logprob values are checked against transformers' full forward of the same random-weight
Llama the server runs (float32)."""

from __future__ import annotations

import json
import random

import httpx
import pytest

PROMPT = "Paged attention keeps the KV cache in blocks."  # 46 bytes: several blocks of 8
BLOCK = 8  # conftest's served_engine


@pytest.fixture(scope="module")
def model(served_engine):
    return served_engine.model_name


@pytest.fixture(scope="module")
def reference(random_llama_logprobs):
    return random_llama_logprobs


def greedy(**extra) -> dict:
    return {"temperature": 0, "extra_body": {"ignore_eos": True, **extra}}


def post(api_server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{api_server.url}/v1/{path}", json=body, timeout=60)


def unique_prompt(length: int) -> str:
    """A prompt no other test sent, so its prefix-cache hit is this test's own."""
    rng = random.Random()
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))


def stream_chunks(api_server, path: str, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{api_server.url}/v1/{path}", json={**body, "stream": True},
                      timeout=60) as reply:  # fmt: skip
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


def assert_continuous(logprobs) -> None:
    """text_offset starts at 0 and each token starts where the one before it ended."""
    offsets, tokens = logprobs.text_offset, logprobs.tokens
    assert offsets[0] == 0
    assert all(offsets[i + 1] == offsets[i] + len(tokens[i]) for i in range(len(tokens) - 1))


# ---------------------------------------------------------------- echo with logprobs
def test_echo_with_logprobs_covers_prompt_then_output(api_client, model, served_engine, reference):
    reply = api_client.completions.create(model=model, prompt=PROMPT, max_tokens=5, echo=True,
                                          logprobs=2, **greedy())  # fmt: skip
    choice = reply.choices[0]
    prompt_ids = served_engine.tokenizer.encode(PROMPT)
    p, lp = len(prompt_ids), choice.logprobs
    assert choice.text.startswith(PROMPT)
    assert len(lp.tokens) == p + 5 and reply.usage.prompt_tokens == p
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # no logprob for token 0
    assert "".join(lp.tokens[:p]) == PROMPT
    assert_continuous(lp)
    assert lp.text_offset[p] == len(PROMPT)  # the reply's tokens go on from the prompt's end
    ref = reference(prompt_ids)
    for i in range(1, p):
        assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, prompt_ids[i]].item(), abs=1e-4)
        assert lp.tokens[i] in lp.top_logprobs[i] and 2 <= len(lp.top_logprobs[i]) <= 3
    # The generated part is what the same request without echo reports.
    plain = api_client.completions.create(model=model, prompt=PROMPT, max_tokens=5, logprobs=2,
                                          **greedy()).choices[0]  # fmt: skip
    assert choice.text == PROMPT + plain.text
    assert lp.tokens[p:] == plain.logprobs.tokens
    assert lp.token_logprobs[p:] == pytest.approx(plain.logprobs.token_logprobs, abs=1e-5)


def test_echo_with_logprobs_streamed_equals_not_streamed(api_server, model):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 6, "echo": True, "logprobs": 1,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    whole = post(api_server, "completions", body).json()["choices"][0]
    chunks = stream_chunks(api_server, "completions", body)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[0]["text"].startswith(PROMPT)  # the echo comes with the first text
    assert "".join(c["text"] for c in choices) == whole["text"]
    joined = {k: sum((c["logprobs"][k] for c in choices), []) for k in whole["logprobs"]}
    assert joined["tokens"] == whole["logprobs"]["tokens"]
    assert joined["text_offset"] == whole["logprobs"]["text_offset"]  # continuous across chunks
    assert joined["token_logprobs"][0] is None
    assert joined["token_logprobs"][1:] == pytest.approx(whole["logprobs"]["token_logprobs"][1:], abs=1e-5)
    assert all("prompt_logprobs" not in c for c in choices)  # vLLM's stream choices have none


def test_echo_with_logprobs_and_n_gives_every_choice_the_prompt(api_server, model, served_engine):
    tokenizer = served_engine.tokenizer
    body = {"model": model, "prompt": [PROMPT, "Blocks of eight"], "max_tokens": 3, "n": 2,
            "echo": True, "logprobs": 0, "temperature": 0.8, "seed": 3, "ignore_eos": True}  # fmt: skip
    choices = post(api_server, "completions", body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c in choices:
        prompt = body["prompt"][c["index"] // 2]
        assert c["text"].startswith(prompt)
        assert len(c["logprobs"]["tokens"]) == len(tokenizer.encode(prompt)) + 3
        assert c["logprobs"]["token_logprobs"][0] is None
        assert all(v is not None for v in c["logprobs"]["token_logprobs"][1:])
    assert choices[0]["prompt_logprobs"] == choices[1]["prompt_logprobs"]  # computed once


# ---------------------------------------------------------------- prompt_logprobs
def assert_prompt_logprobs_shape(entries, prompt_ids, top_n, ref, tokenizer) -> None:
    """vLLM's shape: one entry per prompt token, None first, then {token id (a JSON key):
    {logprob, rank, decoded_token}} with the top-N and the prompt token."""
    assert len(entries) == len(prompt_ids) and entries[0] is None
    for i in range(1, len(prompt_ids)):
        entry, token = entries[i], prompt_ids[i]
        assert str(token) in entry and top_n <= len(entry) <= top_n + 1
        top = ref[i - 1].topk(max(top_n, 1)).indices.tolist()[:top_n]
        assert {str(t) for t in top} <= set(entry)
        for key, value in entry.items():
            assert set(value) == {"logprob", "rank", "decoded_token"}
            assert value["logprob"] == pytest.approx(ref[i - 1, int(key)].item(), abs=1e-4)
            assert value["rank"] == int((ref[i - 1] > ref[i - 1, int(key)]).sum()) + 1
            assert value["decoded_token"] == tokenizer.decode([int(key)])


def test_completion_prompt_logprobs_shape_and_values(api_server, model, served_engine, reference):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2, "prompt_logprobs": 3, "temperature": 0}
    reply = post(api_server, "completions", body)
    assert reply.status_code == 200
    choice = reply.json()["choices"][0]
    prompt_ids = served_engine.tokenizer.encode(PROMPT)
    assert_prompt_logprobs_shape(choice["prompt_logprobs"], prompt_ids, 3, reference(prompt_ids),
                                 served_engine.tokenizer)
    assert choice["logprobs"] is None  # prompt_logprobs alone asks for no generated ones


def test_zero_prompt_logprobs_hold_only_the_prompt_token(api_server, model, served_engine):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 0}
    entries = post(api_server, "completions", body).json()["choices"][0]["prompt_logprobs"]
    prompt_ids = served_engine.tokenizer.encode(PROMPT)
    assert [list(e) for e in entries[1:]] == [[str(t)] for t in prompt_ids[1:]]


def test_chat_prompt_logprobs_sit_on_the_response(api_server, model, served_engine, reference):
    messages = [{"role": "user", "content": "How do blocks work?"}]
    body = {"model": model, "messages": messages, "max_tokens": 2, "prompt_logprobs": 1}
    reply = post(api_server, "chat/completions", body).json()
    prompt_ids = served_engine.tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=True)
    assert reply["usage"]["prompt_tokens"] == len(prompt_ids)
    assert "prompt_logprobs" not in reply["choices"][0]
    assert_prompt_logprobs_shape(reply["prompt_logprobs"], list(prompt_ids), 1,
                                 reference(list(prompt_ids)), served_engine.tokenizer)


def test_responses_without_prompt_logprobs_carry_null(api_server, model):
    chat = post(api_server, "chat/completions", {"model": model, "max_tokens": 1,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["prompt_logprobs"] is None
    done = post(api_server, "completions", {"model": model, "prompt": "hi", "max_tokens": 1})
    assert done.json()["choices"][0]["prompt_logprobs"] is None


@pytest.mark.parametrize("path, extra", [
    ("completions", {"prompt": PROMPT}),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
])  # fmt: skip
def test_top_n_prompt_logprobs_cannot_stream(api_server, model, path, extra):
    reply = post(api_server, path, {"model": model, "max_tokens": 2, "stream": True,
                                    "prompt_logprobs": 2, **extra})  # fmt: skip
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "prompt_logprobs" and error["type"] == "invalid_request_error"
    assert "stream" in error["message"]
    # 0 (only each prompt token's own) streams, as in vLLM.
    chunks = stream_chunks(api_server, path, {"model": model, "max_tokens": 2, "prompt_logprobs": 0, **extra})
    assert chunks


@pytest.mark.parametrize("bad", [-1, 21])
def test_prompt_logprobs_out_of_range_is_a_400_naming_it(api_server, model, bad):
    reply = post(api_server, "completions", {"model": model, "prompt": "hi", "prompt_logprobs": bad})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt_logprobs"


# ---------------------------------------------------------------- cached_tokens
def test_cached_tokens_is_the_prefix_hit_of_a_repeated_prompt(api_client, model, served_engine):
    prompt = unique_prompt(45)
    length = len(served_engine.tokenizer.encode(prompt))
    first = api_client.completions.create(model=model, prompt=prompt, max_tokens=2, **greedy())
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = api_client.completions.create(model=model, prompt=prompt, max_tokens=2, **greedy())
    # Every full block of the prompt, leaving at least one token to compute.
    assert again.usage.prompt_tokens_details.cached_tokens == (length - 1) // BLOCK * BLOCK > 0
    # A request asking for prompt logprobs reads no cache (vLLM's rule), though it is there.
    asking = api_client.completions.create(model=model, prompt=prompt, max_tokens=2,
                                           **greedy(prompt_logprobs=0))  # fmt: skip
    assert asking.usage.prompt_tokens_details.cached_tokens == 0


def test_cached_tokens_in_a_streamed_chat_usage(api_client, model):
    messages = [{"role": "user", "content": unique_prompt(40)}]
    kwargs = {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    usages = []
    for _ in range(2):
        chunks = list(api_client.chat.completions.create(**kwargs))
        usages.append(chunks[-1].usage)
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    cached = usages[1].prompt_tokens_details.cached_tokens
    assert cached == (usages[1].prompt_tokens - 1) // BLOCK * BLOCK > 0
