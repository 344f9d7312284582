"""Request size limits: a body over the server's cap is a 413 (declared or chunked), and a
long prompt is tokenised off the event loop, so /health keeps answering meanwhile."""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx
import pytest

from engine.server import start_server
from engine.server.cli import DEFAULT_MAX_BODY_MIB, MiB, add_serve_arguments
from engine.server.limits import DEFAULT_MAX_BODY_BYTES

LIMIT = 512 * 1024
HEALTH_BUDGET_S = 0.1


@pytest.fixture(scope="module")
def server(served_engine):
    with start_server(served_engine, port=0, max_body_bytes=LIMIT) as handle:
        yield handle


@pytest.fixture(scope="module")
def model(served_engine):
    return served_engine.model_name


def chat_body(model: str, size: int) -> bytes:
    """A chat request's JSON body of exactly `size` bytes (its message padded to fit)."""
    empty = json.dumps({"model": model, "max_tokens": 1,
                        "messages": [{"role": "user", "content": ""}]}).encode()
    body = json.dumps({"model": model, "max_tokens": 1,
                       "messages": [{"role": "user", "content": "a" * (size - len(empty))}]}).encode()
    assert len(body) == size
    return body


def post(url: str, body: bytes, chunked: bool = False) -> httpx.Response:
    """POST a JSON body, with its Content-Length or (chunked) as a stream of 64 KiB pieces."""
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    return httpx.post(f"{url}/v1/chat/completions", content=content, timeout=120,
                      headers={"Content-Type": "application/json"})


def assert_too_large(response: httpx.Response) -> dict:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert f"limit of {LIMIT} bytes" in error["message"]
    return error


class HealthPoller:
    """Polls /health from a thread over one keep-alive connection, keeping every answer's
    (status, seconds); `during(fn)` runs fn with the poller going."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                status = client.get("/health").status_code
                self.answers.append((status, time.perf_counter() - started))
                time.sleep(0.01)

    def during(self, fn):
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            return fn()
        finally:
            self._stop.set()
            thread.join(15)


# ---------------------------------------------------------------- the cap


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_a_413_and_one_at_it_is_parsed(server, model, chunked):
    over = assert_too_large(post(server.url, chat_body(model, LIMIT + 1), chunked))
    # Only a declared length is known before reading; a chunked body is cut off mid-way.
    assert (f"({LIMIT + 1} bytes)" in over["message"]) == (not chunked)
    at_limit = post(server.url, chat_body(model, LIMIT), chunked)
    assert at_limit.status_code == 400  # parsed, tokenised, and too long for the context
    assert at_limit.json()["error"]["code"] == "context_length_exceeded"


def test_the_server_goes_on_serving_on_the_same_connection(server, model):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        refused = client.post("/v1/completions", content=b"{" + b" " * LIMIT + b"}",
                              headers={"Content-Type": "application/json"})
        assert_too_large(refused)
        answer = client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1


def test_streamed_responses_pass_through_the_limit(server, model):
    body = {"model": model, "prompt": "stream me", "max_tokens": 6, "stream": True,
            "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
    assert len(texts) == 6  # one token per chunk


# ---------------------------------------------------------------- the event loop stays free


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_health_answers_quickly_while_a_huge_body_is_refused(server, model, chunked):
    poller = HealthPoller(server.url)
    huge = chat_body(model, 5_000_000)

    def refuse_twice():
        for _ in range(2):
            assert_too_large(post(server.url, huge, chunked))

    poller.during(refuse_twice)
    assert poller.answers and all(status == 200 for status, _ in poller.answers)
    assert max(seconds for _, seconds in poller.answers) < HEALTH_BUDGET_S, poller.answers


def test_health_answers_quickly_while_a_long_prompt_is_tokenised(server, model, served_engine):
    body = chat_body(model, LIMIT - 1024)
    messages = json.loads(body)["messages"]
    started = time.perf_counter()
    served_engine.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                return_dict=False)
    tokenize_s = time.perf_counter() - started
    # The check means something only if tokenising on the loop would have broken it.
    assert tokenize_s > 1.5 * HEALTH_BUDGET_S, tokenize_s
    poller = HealthPoller(server.url)
    answer = poller.during(lambda: post(server.url, body))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"
    assert len(poller.answers) >= 3 and all(status == 200 for status, _ in poller.answers)
    assert max(seconds for _, seconds in poller.answers) < HEALTH_BUDGET_S, poller.answers


# ---------------------------------------------------------------- configuration


def test_serve_takes_the_limit_in_mib():
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert DEFAULT_MAX_BODY_MIB * MiB == DEFAULT_MAX_BODY_BYTES  # the CLI's copy of the default
    assert parser.parse_args([]).max_request_body_mb == DEFAULT_MAX_BODY_MIB
    assert parser.parse_args(["--max-request-body-mb", "16"]).max_request_body_mb == 16
    for bad in ("0", "-1", "nan", "inf", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--max-request-body-mb", bad])
