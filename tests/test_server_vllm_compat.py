"""The server against what vLLM's server does (vllm/entrypoints/openai, serve/tokenize,
v1/metrics/loggers.py): n > 1 streams one choice per chunk, stream_options needs a stream,
unimplemented fields are refused, /v1/models/{id}, /tokenize, /detokenize, /version, and
/metrics under vLLM's names and labels.

Driven by the official `openai` client where it has a call for it, else raw httpx.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.server import start_server
from engine.server.protocol import ChatCompletionRequest, CompletionRequest
from engine.server.unsupported import CHAT, COMPLETION, IGNORED

MESSAGES = [{"role": "user", "content": "Count with me"}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def model(served_engine) -> str:
    return served_engine.model_name


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ---------------------------------------------------------------- n > 1 streams


def test_chat_stream_with_n_sends_one_choice_per_chunk(api_client, model):
    """A client that reads choices[0] of each chunk (as most do) rebuilds every choice: its
    role, its text and its finish reason, equal to the non-streamed reply."""
    request = dict(model=model, messages=MESSAGES, n=3, max_tokens=12, temperature=1.0, seed=11,
                   extra_body={"ignore_eos": True})
    whole = api_client.chat.completions.create(**request)
    chunks = list(api_client.chat.completions.create(stream=True, **request))
    assert all(len(c.choices) == 1 for c in chunks)
    roles, texts, finishes = {}, {}, {}
    for chunk in chunks:
        c = chunk.choices[0]
        if c.delta.role:
            assert c.index not in texts  # the role comes first, once per choice
            roles[c.index] = c.delta.role
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        if c.finish_reason:
            assert c.index not in finishes
            finishes[c.index] = c.finish_reason
    expected = {c.index: c for c in whole.choices}
    assert roles == {i: "assistant" for i in expected}
    assert texts == {i: c.message.content for i, c in expected.items()}
    assert finishes == {i: c.finish_reason for i, c in expected.items()} == {0: "length", 1: "length",
                                                                             2: "length"}
    assert len(set(texts.values())) > 1  # seeded sampling: the samples differ


def test_completion_stream_with_n_and_two_prompts_sends_one_choice_per_chunk(api_client, model):
    request = dict(model=model, prompt=["One prompt", "Another prompt"], n=2, max_tokens=8,
                   extra_body={"ignore_eos": True}, **GREEDY)
    whole = api_client.completions.create(**request)
    chunks = list(api_client.completions.create(stream=True, stream_options={"include_usage": True},
                                                **request))
    *choice_chunks, usage_chunk = chunks
    assert all(len(c.choices) == 1 for c in choice_chunks)
    texts, finishes = {}, {}
    for chunk in choice_chunks:
        c = chunk.choices[0]
        texts[c.index] = texts.get(c.index, "") + c.text
        if c.finish_reason:
            finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert usage_chunk.choices == []
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)


def test_continuous_usage_stats_put_the_usage_so_far_in_every_chunk(api_client, model):
    chunks = list(api_client.completions.create(
        model=model, prompt="Usage", max_tokens=5, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}, **GREEDY))
    assert all(c.usage is not None for c in chunks)
    generated = [c.usage.completion_tokens for c in chunks]
    assert generated == sorted(generated) and generated[-1] == 5


# ---------------------------------------------------------------- stream_options


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "hi"}),
])
def test_stream_options_without_stream_is_a_400(api_server, model, path, body):
    url = f"{api_server.url}{path}"
    refused = httpx.post(url, json={"model": model, "max_tokens": 2, **body,
                                    "stream_options": {"include_usage": True}})
    assert refused.status_code == 400
    error = _error(refused)
    # vLLM's words and param
    assert error["message"] == "Stream options can only be defined when `stream=True`."
    assert error["param"] == "stream_options" and error["type"] == "invalid_request_error"
    # vLLM lets an empty or null stream_options through
    for options in ({}, None):
        ok = httpx.post(url, json={"model": model, "max_tokens": 2, **body, "stream_options": options})
        assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- unsupported fields

# One value per listed field that would change the answer (not a harmless default).
_CHANGING = {
    "use_beam_search": True, "length_penalty": 0.5, "watermarking": True,
    "spaces_between_special_tokens": False, "truncate_prompt_tokens": 4,
    "logprob_token_ids": [1], "repetition_detection": {"max_pattern_size": 4},
    "thinking_token_budget": 10, "logits_processors": ["my.module:Processor"],
    "early_stopping": True, "priority": 1, "stream_interval": 4,
    "return_tokens_as_token_ids": True, "return_token_ids": True, "return_prompt_text": True,
    "cache_salt": "salt", "kv_transfer_params": {}, "ec_transfer_params": {},
    "vllm_xargs": {"a": 1}, "mm_processor_kwargs": {}, "media_io_kwargs": {},
    "routed_experts_prompt_start": 2, "echo": True, "chat_template": "{{ messages }}",
    "documents": [{"title": "t", "text": "x"}], "reasoning_effort": "low",
    "include_reasoning": False, "verbosity": "low", "audio": {"voice": "alloy"},
    "modalities": ["text", "audio"], "prediction": {"type": "content", "content": "x"},
    "web_search_options": {}, "functions": [{"name": "f"}], "function_call": "auto",
    "suffix": "tail", "prompt_embeds": "AAAA",
}
_CASES = ([("/v1/chat/completions", name) for name in CHAT]
          + [("/v1/completions", name) for name in COMPLETION])


def _changing(path: str, name: str):
    if name == "add_special_tokens":  # the harmless value differs per endpoint, as vLLM's default
        return path == "/v1/chat/completions"
    return _CHANGING[name]


def _body(path: str, model: str) -> dict:
    if path == "/v1/chat/completions":
        return {"model": model, "messages": MESSAGES, "max_tokens": 2}
    return {"model": model, "prompt": "hi", "max_tokens": 2}


@pytest.mark.parametrize("path, name", _CASES)
def test_unimplemented_fields_are_refused_by_name(api_server, model, path, name):
    url = f"{api_server.url}{path}"
    refused = httpx.post(url, json={**_body(path, model), name: _changing(path, name)})
    assert refused.status_code == 400, refused.text
    error = _error(refused)
    assert error["param"] == name and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{name}=") and "is not supported" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_harmless_values_and_metadata_fields_are_accepted(api_server, model, path):
    """What vLLM-style clients send with its default values, and caller metadata."""
    table = CHAT if path == "/v1/chat/completions" else COMPLETION
    defaults = {name: harmless[-1] for name, harmless in table.items()}
    metadata = {"user": "u-1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto",
                "request_id": "mine", "session_id": "s", "parallel_tool_calls": True}
    response = httpx.post(f"{api_server.url}{path}",
                          json={**_body(path, model), **defaults, **metadata})
    assert response.status_code == 200, response.text


# vLLM 0.32's request fields (vllm/entrypoints/openai/chat_completion/protocol.py and
# completion/protocol.py), copied as the reference a user moving over relies on.
VLLM_CHAT_FIELDS = (
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "reasoning_effort", "thinking_token_budget", "include_reasoning", "parallel_tool_calls",
    "user", "use_beam_search", "top_k", "min_p", "repetition_penalty", "watermarking",
    "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "truncation_side", "prompt_logprobs", "logprob_token_ids", "allowed_token_ids", "bad_words",
    "echo", "add_generation_prompt", "continue_final_message", "add_special_tokens", "documents",
    "chat_template", "chat_template_kwargs", "media_io_kwargs", "mm_processor_kwargs",
    "structured_outputs", "priority", "request_id", "session_id", "return_tokens_as_token_ids",
    "return_token_ids", "routed_experts_prompt_start", "return_token_offsets",
    "return_prompt_text", "mm_payload", "return_mm_kwargs", "cache_salt", "kv_transfer_params",
    "ec_transfer_params", "vllm_xargs", "repetition_detection", "stream_interval",
)
VLLM_COMPLETION_FIELDS = (
    "model", "prompt", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature",
    "top_p", "user", "use_beam_search", "top_k", "min_p", "repetition_penalty", "watermarking",
    "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "truncation_side", "allowed_token_ids", "prompt_logprobs", "logprob_token_ids", "bad_words",
    "prompt_embeds", "add_special_tokens", "response_format", "structured_outputs", "priority",
    "request_id", "session_id", "return_tokens_as_token_ids", "return_token_ids",
    "routed_experts_prompt_start", "return_token_offsets", "mm_payload", "return_mm_kwargs",
    "cache_salt", "kv_transfer_params", "ec_transfer_params", "vllm_xargs",
    "repetition_detection", "thinking_token_budget", "stream_interval",
)
# Served by other parts of the server, with their own tests (structured outputs, logits
# constraints, prompt logprobs), whether or not the request model declares them.
SERVED_ELSEWHERE = {"response_format", "structured_outputs", "logit_bias", "allowed_token_ids",
                    "bad_words", "prompt_logprobs"}


@pytest.mark.parametrize("request_model, table, vllm_fields", [
    (ChatCompletionRequest, CHAT, VLLM_CHAT_FIELDS),
    (CompletionRequest, COMPLETION, VLLM_COMPLETION_FIELDS),
])
def test_every_vllm_field_is_served_refused_or_knowingly_ignored(request_model, table, vllm_fields):
    """No field of vLLM's falls through to "accepted and silently ignored" by accident."""
    accounted = set(request_model.model_fields) | set(table) | IGNORED | SERVED_ELSEWHERE
    assert [name for name in vllm_fields if name not in accounted] == []
    assert not IGNORED & set(table)


def test_the_openai_client_gets_a_bad_request_error(api_client, model):
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2,
                                           extra_body={"use_beam_search": True})
    assert caught.value.body["param"] == "use_beam_search"


# ---------------------------------------------------------------- /v1/models/{id}


def test_models_retrieve(api_client, model, served_engine):
    card = api_client.models.retrieve(model)
    assert (card.id, card.object, card.owned_by) == (model, "model", "pagedesk")
    assert card.model_extra["max_model_len"] == served_engine.max_model_len
    assert card.model_dump() == api_client.models.list().data[0].model_dump() | {
        "created": card.created}
    with pytest.raises(openai.NotFoundError) as caught:
        api_client.models.retrieve("no-such/model")
    assert caught.value.status_code == 404
    assert caught.value.body == {"message": "The model `no-such/model` does not exist.",
                                 "type": "invalid_request_error", "param": "model",
                                 "code": "model_not_found"}


def test_model_names_with_a_slash_are_retrieved(served_engine):
    with start_server(served_engine, served_model_name="org/some-model") as named:
        cli = openai.OpenAI(base_url=f"{named.url}/v1", api_key="unused", max_retries=0)
        assert cli.models.retrieve("org/some-model").id == "org/some-model"


# ---------------------------------------------------------------- /tokenize, /detokenize


def test_tokenize_a_prompt(api_server, model, served_engine):
    tok = served_engine.tokenizer
    text = "Tokens, please"
    body = httpx.post(f"{api_server.url}/tokenize", json={"model": model, "prompt": text}).json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["tokens"] == tok.encode(text) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == served_engine.max_model_len and body["token_strs"] is None
    with_strs = httpx.post(f"{api_server.url}/tokenize",
                           json={"prompt": text, "return_token_strs": True,
                                 "add_special_tokens": False}).json()
    assert with_strs["tokens"] == tok.encode(text, add_special_tokens=False)
    assert with_strs["token_strs"] == tok.convert_ids_to_tokens(with_strs["tokens"])


def test_tokenize_messages_equals_the_chat_prompt(api_server, api_client, model, served_engine):
    body = httpx.post(f"{api_server.url}/tokenize", json={"model": model, "messages": MESSAGES}).json()
    expected = served_engine.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert body["tokens"] == list(expected)
    reply = api_client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert body["count"] == reply.usage.prompt_tokens
    bare = httpx.post(f"{api_server.url}/tokenize",
                      json={"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert bare["tokens"] == list(served_engine.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=False, tokenize=True, return_dict=False))


def test_detokenize_round_trips(api_server, model, served_engine):
    text = "round trip"
    ids = served_engine.tokenizer.encode(text, add_special_tokens=False)
    body = httpx.post(f"{api_server.url}/detokenize", json={"model": model, "tokens": ids}).json()
    assert body == {"prompt": served_engine.tokenizer.decode(ids)} == {"prompt": text}


@pytest.mark.parametrize("path, body, param", [
    ("/detokenize", {"tokens": [1, 10**6]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens.0"),
    ("/detokenize", {"tokens": ["a"]}, "tokens.0"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": MESSAGES}, "prompt"),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ 1 }}"}, "chat_template"),
    ("/tokenize", {"messages": MESSAGES, "add_special_tokens": True}, "add_special_tokens"),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
])
def test_bad_tokenizer_requests_are_400s(api_server, path, body, param):
    response = httpx.post(f"{api_server.url}{path}", json=body)
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == param


def test_tokenizer_routes_check_the_model(api_server):
    for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
        response = httpx.post(f"{api_server.url}{path}", json={"model": "nope", **body})
        assert response.status_code == 404 and _error(response)["code"] == "model_not_found"


def test_version_and_which_routes_want_the_api_key(served_engine, model):
    """vLLM guards only /v1 (and /v2, /inference): /tokenize, /detokenize, /version,
    /health and /metrics answer without the key."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    with start_server(served_engine, api_key="k") as locked:
        assert httpx.get(f"{locked.url}/version").json() == {
            "version": pyproject["project"]["version"]}
        assert httpx.post(f"{locked.url}/tokenize", json={"prompt": "x"}).status_code == 200
        assert httpx.post(f"{locked.url}/detokenize", json={"tokens": [70]}).status_code == 200
        assert httpx.get(f"{locked.url}/v1/models/{model}").status_code == 401
        keyed = httpx.get(f"{locked.url}/v1/models/{model}", headers={"Authorization": "Bearer k"})
        assert keyed.status_code == 200 and keyed.json()["id"] == model


# ---------------------------------------------------------------- /metrics

_ENGINE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting",
                  "vllm:kv_cache_usage_perc")
_HISTOGRAMS = ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
               "request_inference_time_seconds", "request_prefill_time_seconds",
               "request_decode_time_seconds", "request_time_per_output_token_seconds",
               "request_prompt_tokens", "request_generation_tokens", "request_params_n",
               "request_params_max_tokens", "request_num_preemptions")


def _samples(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, model: str, **labels) -> float:
    key = (name, tuple(sorted({"model_name": model, "engine": "0", **labels}.items())))
    return samples.get(key, 0.0)


def test_metrics_under_vllms_names_and_labels(api_server, api_client, model):
    before = _samples(api_server)
    for name in _ENGINE_GAUGES:
        assert (name, (("engine", "0"), ("model_name", model))) in before
    assert not [n for n, _ in before if not n.startswith(("vllm:", "pagedesk:"))]
    prompt = "Count these tokens"
    replies = [api_client.completions.create(model=model, prompt=prompt, max_tokens=k,
                                             extra_body={"ignore_eos": True}, **GREEDY)
               for k in (3, 5)]
    middle = _samples(api_server)
    stopped = api_client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, n=2,
                                                 extra_body={"ignore_eos": True}, **GREEDY)
    after = _samples(api_server)

    def grew(name: str, **labels) -> float:
        return _value(after, name, model, **labels) - _value(before, name, model, **labels)

    prompt_tokens = sum(r.usage.prompt_tokens for r in replies) + stopped.usage.prompt_tokens
    assert grew("vllm:prompt_tokens_total") == prompt_tokens
    assert grew("vllm:generation_tokens_total") == 3 + 5 + 2 * 4
    assert grew("vllm:request_success_total", finished_reason="length") == 2 + 2  # per sample
    assert grew("vllm:request_success_total", finished_reason="stop") == 0
    for name in _HISTOGRAMS:  # one observation per engine request
        assert grew(f"vllm:{name}_count") == 3, name
    assert grew("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert grew("vllm:request_generation_tokens_sum") == 3 + 5 + 2 * 4
    assert grew("vllm:request_params_n_sum") == 1 + 1 + 2
    itl = "vllm:inter_token_latency_seconds_count"
    assert _value(middle, itl, model) - _value(before, itl, model) == (3 - 1) + (5 - 1)
    assert grew("vllm:prefix_cache_queries_total") >= prompt_tokens - 3  # the last token is computed
    # the same prompt again: its full blocks come from the prefix cache
    assert grew("vllm:prefix_cache_hits_total") > 0
    assert grew("vllm:prompt_tokens_cached_total") > 0
    assert grew("vllm:num_preemptions_total") == 0 and grew("pagedesk:engine_steps_total") > 0
    assert _value(after, "vllm:kv_cache_usage_perc", model) == 0
    assert _value(after, "vllm:num_requests_running", model) == 0


def test_request_phases_add_up():
    """vLLM's intervals from a request's times: queue + prefill + decode = e2e when the last
    token ends the request."""
    from engine.outputs import RequestMetrics
    from engine.server.metrics import request_phases

    times = RequestMetrics(arrival_time=10.0, first_scheduled_time=10.5, first_token_time=11.25,
                           finished_time=13.0, last_token_time=13.0)
    assert request_phases(times, now=99.0) == {"e2e": 3.0, "queue": 0.5, "prefill": 0.75,
                                               "decode": 1.75, "inference": 2.5}
    waiting = RequestMetrics(arrival_time=10.0, finished_time=12.0)  # aborted before scheduling
    assert request_phases(waiting, now=99.0) == {"e2e": 2.0, "queue": 2.0, "prefill": 0.0,
                                                 "decode": 0.0, "inference": 0.0}


def test_preemptions_are_counted(random_llama):
    """A KV cache too small for two long requests at once preempts one: the engine's
    counter and the request histogram both see it."""
    from engine import EngineConfig
    from engine.async_engine import AsyncEngine

    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                      block_size=8, num_kv_blocks=12))
    try:
        with start_server(engine) as server:
            async_client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                              max_retries=0, timeout=60)
            _run_two(async_client, engine.model_name)
            samples = _samples(server)
    finally:
        engine.shutdown()
    name = engine.model_name
    preempted = _value(samples, "vllm:num_preemptions_total", name)
    assert preempted >= 1
    assert _value(samples, "vllm:request_num_preemptions_sum", name) == preempted
    assert _value(samples, "vllm:request_success_total", name, finished_reason="length") == 2


def _run_two(client: openai.AsyncOpenAI, model: str) -> None:
    import asyncio

    async def main():
        async with client:
            return await asyncio.gather(*(client.completions.create(
                model=model, prompt=f"Long request {i}", max_tokens=60,
                extra_body={"ignore_eos": True}, **GREEDY) for i in range(2)))

    asyncio.run(main())
