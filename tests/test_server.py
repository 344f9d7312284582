"""The OpenAI-compatible server, driven by the official `openai` client over 127.0.0.1.

One random-weight Llama (byte-level tokenizer, ChatML template) behind one AsyncEngine,
served by `start_server` in a background thread, as the desktop app will do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import EngineConfig
from engine.async_engine import AsyncEngine
from engine.server import start_server
from engine_helpers import aborted_ids

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def engine(served_engine):
    return served_engine


@pytest.fixture(scope="module")
def server(api_server):
    return api_server


@pytest.fixture(scope="module")
def client(api_client):
    return api_client


@pytest.fixture(scope="module")
def model(engine):
    return engine.model_name


def greedy(**extra) -> dict:
    return {"temperature": 0, "extra_body": {"ignore_eos": True, **extra}}


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def idle(engine) -> bool:
    core = engine.engine
    return core.kv_manager.usage == 0 and not core.has_unfinished_requests()


# ---------------------------------------------------------------- the happy paths


def test_binds_loopback_and_lists_the_model(server, client, model, engine):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    assert models[0].max_model_len == engine.max_model_len
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_chat_usage_equals_the_token_counts(client, model, engine):
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12, **greedy())
    prompt_ids = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                      tokenize=True, return_dict=False)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == len(prompt_ids) + 12


def test_completion_usage_echo_n_and_batched_prompts(client, model, engine):
    prompts = ["The cache", "Blocks of sixteen tokens"]
    reply = client.completions.create(model=model, prompt=prompts, max_tokens=5, n=2, echo=True,
                                      **greedy())
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for c in reply.choices:
        assert c.text.startswith(prompts[c.index // 2]) and c.finish_reason == "length"
    assert reply.choices[0].text == reply.choices[1].text  # greedy: n identical samples
    assert reply.usage.prompt_tokens == sum(len(engine.tokenizer.encode(p)) for p in prompts)
    assert reply.usage.completion_tokens == 4 * 5
    ids = engine.tokenizer.encode(prompts[0])
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=5, **greedy())
    assert prompts[0] + by_ids.choices[0].text == reply.choices[0].text


def test_streamed_chat_equals_the_whole_reply(client, model):
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, **greedy())
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=16, stream=True,
        stream_options={"include_usage": True}, **greedy()))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_streamed_completion_equals_the_whole_reply(client, model):
    whole = client.completions.create(model=model, prompt="Paged attention", max_tokens=16, **greedy())
    chunks = list(client.completions.create(model=model, prompt="Paged attention", max_tokens=16,
                                            stream=True, stream_options={"include_usage": True},
                                            **greedy()))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 16 == whole.usage.completion_tokens


def test_streamed_batch_with_n_equals_the_whole_reply(client, model):
    """Two prompts x n=2: four choices, interleaved in the stream, indexed as OpenAI's."""
    request = dict(model=model, prompt=["First prompt", "Second, longer prompt"], max_tokens=8, n=2,
                   logprobs=1, **greedy())
    whole = client.completions.create(**request)
    texts, offsets = ["", "", "", ""], [[] for _ in range(4)]
    for chunk in client.completions.create(stream=True, **request):
        for c in chunk.choices:
            texts[c.index] += c.text
            offsets[c.index] += c.logprobs.text_offset
    assert texts == [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert offsets == [c.logprobs.text_offset for c in sorted(whole.choices, key=lambda c: c.index)]


def test_extra_body_sampling_fields_reach_the_engine(client, model):
    """stop / stop_reason, seed, and vLLM's extras (top_k, min_p, repetition_penalty,
    min_tokens) are accepted and do what they say."""
    base = client.completions.create(model=model, prompt="abc", max_tokens=24, **greedy()).choices[0]
    stop = next(ch for ch in base.text[3:] if ch.isprintable() and ch != "\ufffd")
    cut = client.completions.create(model=model, prompt="abc", max_tokens=24, stop=[stop], **greedy())
    assert cut.choices[0].text == base.text[:base.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].model_extra["stop_reason"] == stop
    sampled = dict(model=model, prompt="abc", max_tokens=8, temperature=1.0, seed=7,
                   extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 8})
    first = client.completions.create(**sampled).choices[0]
    assert first.text == client.completions.create(**sampled).choices[0].text
    assert first.finish_reason == "length"


def test_logprobs_in_both_shapes(client, model, engine):
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4,
                                          logprobs=True, top_logprobs=3, **greedy())
    entries = chat.choices[0].logprobs.content
    assert len(entries) == 4
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob == e.top_logprobs[0].logprob  # greedy
    done = client.completions.create(model=model, prompt="abc", max_tokens=4, logprobs=2, **greedy())
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == logprob == max(top.values()) and logprob <= 0  # greedy


# ---------------------------------------------------------------- bad requests


def _error_of(exc: openai.APIStatusError) -> dict:
    assert set(exc.body) == {"message", "type", "param", "code"}, exc.body
    return exc.body


@pytest.mark.parametrize("fields, status, param", [
    ({"model": "no-such-model"}, 404, "model"),
    ({"max_tokens": -5}, 400, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x" * 1100}]}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"temperature": -1}, 400, "temperature"),
    ({"extra_body": {"top_k": 0}}, 400, "top_k"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
])
def test_bad_chat_requests_get_openai_errors(client, model, fields, status, param):
    request = {"model": model, "messages": MESSAGES, "max_tokens": 4, **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    assert _error_of(caught.value)["param"] == param
    ok = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, **greedy())
    assert ok.usage.completion_tokens == 2  # the server goes on serving


def test_bad_completion_requests_get_openai_errors(client, model, server):
    for prompt in ("", [], "y" * 1100, [10**6]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=model, prompt=prompt, max_tokens=4)
        assert _error_of(caught.value)["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt="abc", max_tokens=4, stream=True,
                                  extra_body={"min_tokens": 9})  # min_tokens > max_tokens
    assert _error_of(caught.value)["param"] == "min_tokens"
    # No client makes invalid JSON: that one goes by hand.
    raw = httpx.post(f"{server.url}/v1/completions", content=b'{"model": "x", "prompt": ',
                     headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{server.url}/v1/nowhere").json()["error"]["type"] == "invalid_request_error"
    assert client.completions.create(model=model, prompt="ok", max_tokens=2).usage.completion_tokens >= 1


def test_api_key_is_required_when_set(engine, model):
    with start_server(engine, api_key="s3cret") as locked:
        url = f"{locked.url}/v1"
        for key in ("wrong", "s3cret-and-more"):
            with pytest.raises(openai.AuthenticationError) as caught:
                openai.OpenAI(base_url=url, api_key=key, max_retries=0).models.list()
            assert caught.value.status_code == 401
            assert _error_of(caught.value)["code"] == "invalid_api_key"
        assert httpx.post(f"{url}/chat/completions", json={}).status_code == 401
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        reply = good.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert reply.usage.completion_tokens >= 1
        assert httpx.get(f"{locked.url}/health").status_code == 200  # probes need no key


def test_web_pages_cannot_drive_the_local_server(server, model):
    """DNS rebinding (a foreign Host name) and form posts (no JSON content type) are refused;
    no CORS header lets a page read an answer."""
    body = {"model": model, "prompt": "hi", "max_tokens": 2}
    rebound = httpx.post(f"{server.url}/v1/completions", json=body,
                         headers={"Host": f"evil.example:{server.port}"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{server.url}/metrics", headers={"Host": "evil.example"}).status_code == 400
    local = httpx.post(f"http://localhost:{server.port}/v1/completions", json=body,
                       headers={"Origin": "http://evil.example"})
    assert local.status_code == 200 and "access-control-allow-origin" not in local.headers
    form = httpx.post(f"{server.url}/v1/completions", content=str(body).replace("'", '"'),
                      headers={"Content-Type": "text/plain"})
    assert form.status_code == 400


# ---------------------------------------------------------------- load and disconnects


def test_32_concurrent_streams_complete_with_the_right_text(client, server, model):
    prompts = [f"Request {i}: " + "kv " * (i % 7) for i in range(32)]
    expected = [client.completions.create(model=model, prompt=p, max_tokens=20, **greedy())
                .choices[0].text for p in prompts]

    async def one(aclient: openai.AsyncOpenAI, prompt: str) -> tuple[str, int]:
        stream = await aclient.completions.create(model=model, prompt=prompt, max_tokens=20, stream=True,
                                                  stream_options={"include_usage": True}, **greedy())
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage.completion_tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                      max_retries=0, timeout=60) as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in prompts))

    results = asyncio.run(main())
    assert [text for text, _ in results] == expected
    assert all(tokens == 20 for _, tokens in results)


def test_a_client_that_goes_away_has_its_request_aborted(client, model, engine):
    stream = client.completions.create(model=model, prompt="x", max_tokens=1000, stream=True, **greedy())
    chunks = iter(stream)
    rid = next(chunks).id
    next(chunks)
    assert engine.engine.kv_manager.usage > 0
    stream.close()  # drop the connection mid-stream
    assert wait_until(lambda: idle(engine))
    assert any(r.startswith(rid) for r in aborted_ids(engine.engine.kv_manager))

    # A non-streaming client that gives up (a timeout) is aborted too.
    aborts = len(aborted_ids(engine.engine.kv_manager))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).completions.create(model=model, prompt="y", max_tokens=1000,
                                                            **greedy())
    assert wait_until(lambda: idle(engine))
    assert len(aborted_ids(engine.engine.kv_manager)) == aborts + 1


def test_stopping_the_server_ends_open_streams(engine, model):
    with start_server(engine) as spare:
        cli = openai.OpenAI(base_url=f"{spare.url}/v1", api_key="unused", max_retries=0, timeout=30)
        stream = cli.completions.create(model=model, prompt="z", max_tokens=1000, stream=True, **greedy())
        next(iter(stream))
        started = time.monotonic()
        spare.stop()
        assert time.monotonic() - started < 8 and not spare.is_running
        stream.close()
    assert wait_until(lambda: idle(engine))


def test_a_dead_engine_gets_503_not_500(random_llama):
    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32"))

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    engine.engine.runner.execute = broken
    with start_server(engine) as doomed:
        cli = openai.OpenAI(base_url=f"{doomed.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            cli.completions.create(model=engine.model_name, prompt="hi", max_tokens=4)
        assert caught.value.status_code == 503 and _error_of(caught.value)["code"] == "engine_dead"
        assert httpx.get(f"{doomed.url}/health").status_code == 503
    engine.shutdown()


# ---------------------------------------------------------------- metrics


def _scrape(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if "le" not in s.labels}


def test_metrics_parse_and_count_up(server, client, model):
    before = _scrape(server)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"vllm:{name}" in before
    reply = client.completions.create(model=model, prompt="Metrics, please", max_tokens=6, **greedy())
    after = _scrape(server)

    def grew(name: str) -> float:
        return after[f"vllm:{name}"] - before.get(f"vllm:{name}", 0.0)

    assert grew("prompt_tokens_total") == reply.usage.prompt_tokens
    assert grew("generation_tokens_total") == 6
    assert grew("time_to_first_token_seconds_count") == 1
    assert grew("inter_token_latency_seconds_count") == 5
    assert grew("e2e_request_latency_seconds_count") == 1
    assert grew("prefix_cache_queries_total") >= reply.usage.prompt_tokens - 1
    assert after["vllm:prefix_cache_hits_total"] >= 0
    assert after["vllm:kv_cache_usage_perc"] == 0 and after["vllm:num_requests_running"] == 0


@pytest.mark.slow
def test_the_default_model_through_its_own_chat_template(default_loaded):
    """SmolLM2's real template and BPE tokenizer: usage still equals the token counts."""
    from engine import LLMEngine

    # float32 storage, as make_engine's: the first engine over the shared model packs it,
    # and "auto" (bfloat16 for this checkpoint) would leave it unusable for the others.
    config = EngineConfig(device="cpu", dtype="float32", cpu_weight_dtype="float32")
    engine = AsyncEngine(engine=LLMEngine(config, loaded=default_loaded))
    prompt_ids = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                      tokenize=True, return_dict=False)
    try:
        with start_server(engine) as smol:
            cli = openai.OpenAI(base_url=f"{smol.url}/v1", api_key="unused", max_retries=0)
            reply = cli.chat.completions.create(model=engine.model_name, messages=MESSAGES,
                                                max_tokens=8, **greedy())
    finally:
        engine.shutdown()
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 8 and reply.choices[0].message.content


# ---------------------------------------------------------------- the command line


def test_pagedesk_serve_runs_headless(random_llama, tmp_path):
    """`pagedesk serve` runs where Qt cannot be imported, serves, and stops on Ctrl-C."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # None in sys.modules makes any import of these fail: the server must not need them.
    no_qt = ("import sys; sys.modules.update(PySide6=None, qasync=None, ui=None); "
             "from app.__main__ import main; main(sys.argv[1:])")
    env = {**os.environ, "PAGEDESK_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-c", no_qt, "serve", "--model", str(random_llama), "--port",
                             str(port), "--device", "cpu", "--log-level", "warning"], env=env)
    try:
        assert wait_until(lambda: _healthy(port) or proc.poll() is not None, timeout=90)
        cli = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert cli.completions.create(model="llama", prompt="hi", max_tokens=3).usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
