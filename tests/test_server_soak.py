"""A short soak (benchmarks/soak.py is the long one): waves of 32 concurrent streams on the
random-weight model, a seeded third of whose clients hang up mid-stream. Afterwards every
KV cache block is free, each hung-up request was aborted (and no other), and the server
answers as it did before."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine_helpers import aborted_ids

STREAMS = 32
WAVES = 4
HANG_UP_SHARE = 1 / 3


@pytest.fixture(scope="module")
def model(served_engine):
    return served_engine.model_name


def greedy_reply(url: str, model: str) -> str:
    body = {"model": model, "prompt": "after the soak", "max_tokens": 12, "temperature": 0,
            "ignore_eos": True}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]


async def one_stream(client: openai.AsyncOpenAI, model: str, rng: random.Random) -> dict:
    """One seeded streaming request; a hang-up leaves after 1-5 chunks of a long reply."""
    hang_up_after = rng.randint(1, 5) if rng.random() < HANG_UP_SHARE else None
    max_tokens = rng.randint(200, 400) if hang_up_after else rng.randint(8, 48)
    words = " ".join(rng.choice(["kv", "block", "page", "cache", "token"]) for _ in range(rng.randint(1, 30)))
    common = dict(model=model, max_tokens=max_tokens, temperature=1.0, seed=rng.randrange(2**31),
                  stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    if rng.random() < 0.5:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": words}], **common)
    else:
        stream = await client.completions.create(prompt=words, **common)
    seen = {"id": None, "hung_up": hang_up_after is not None, "chunks": 0, "usage": None,
            "finish": None, "max_tokens": max_tokens}
    # aclosing: a loop left early closes the client's chunk iterator here, not in
    # whichever thread the garbage collector happens to run in.
    async with stream, aclosing(aiter(stream)) as chunks:
        async for chunk in chunks:
            seen["id"] = chunk.id
            seen["usage"] = chunk.usage or seen["usage"]
            for choice in chunk.choices:
                seen["finish"] = choice.finish_reason or seen["finish"]
            seen["chunks"] += 1
            if hang_up_after is not None and seen["chunks"] >= hang_up_after:
                break  # leaving `async with` drops the connection mid-stream
    return seen


async def wave(url: str, model: str, rng: random.Random) -> list[dict]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                  timeout=60) as client:
        seeds = [random.Random(rng.randrange(2**32)) for _ in range(STREAMS)]
        return await asyncio.gather(*(one_stream(client, model, r) for r in seeds))


def idle(engine) -> bool:
    core = engine.engine
    return core.kv_manager.usage == 0 and not core.has_unfinished_requests()


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def scrape(url: str) -> dict[tuple[str, str], float]:
    """/metrics as (name, finished_reason label or "") -> value."""
    text = httpx.get(f"{url}/metrics").text
    return {(s.name, s.labels.get("finished_reason", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_streams_with_hang_ups_leave_every_block_free(api_server, served_engine, model):
    before = greedy_reply(api_server.url, model)
    metrics_before = scrape(api_server.url)
    rng, results = random.Random(12), []
    started = time.monotonic()
    for _ in range(WAVES):
        aborts_before = set(aborted_ids(served_engine.engine.kv_manager))
        results += (batch := asyncio.run(wave(api_server.url, model, rng)))
        assert wait_until(lambda: idle(served_engine)), served_engine.engine.kv_manager.usage
        aborted = set(aborted_ids(served_engine.engine.kv_manager)) - aborts_before
        assert aborted == {f"{r['id']}-0" for r in batch if r["hung_up"]}  # those, and no other
    hung_up = [r for r in results if r["hung_up"]]
    assert 0 < len(hung_up) < len(results) == WAVES * STREAMS
    for r in results:  # ignore_eos: each stream that was read to its end ran to max_tokens
        if not r["hung_up"]:
            assert r["finish"] == "length" and r["usage"].completion_tokens == r["max_tokens"], r

    metrics = scrape(api_server.url)
    abort_key = ("vllm:request_success_total", "abort")
    assert metrics[abort_key] - metrics_before.get(abort_key, 0) == len(hung_up)
    assert metrics[("vllm:kv_cache_usage_perc", "")] == 0
    assert metrics[("vllm:num_requests_running", "")] == metrics[("vllm:num_requests_waiting", "")] == 0
    assert greedy_reply(api_server.url, model) == before
    assert time.monotonic() - started < 60


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_hang_up_before_the_first_token_is_no_server_error(api_server, served_engine, model):
    """The stream's first output is awaited before the headers go out: a client leaving
    then must have its request aborted quietly, not leave an exception in the server log."""
    errors = _Errors()
    logging.getLogger("uvicorn.error").addHandler(errors)
    served_engine.pause(wait=True)  # no output until resumed: the client leaves first
    try:
        body = {"model": model, "prompt": "never answered", "max_tokens": 50, "stream": True}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{api_server.url}/v1/completions", json=body, timeout=0.5)
        time.sleep(0.5)  # the server notices the disconnect
    finally:
        served_engine.resume()
        logging.getLogger("uvicorn.error").removeHandler(errors)
    assert wait_until(lambda: idle(served_engine))
    assert [r.getMessage() for r in errors.records] == []
    assert greedy_reply(api_server.url, model)  # still serving
