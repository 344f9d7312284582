"""A remote OpenAI-compatible endpoint (a vLLM cluster, another pagedesk): list its models,
stream a chat reply, count a prompt's tokens, read its Prometheus metrics.

Qt-free and asyncio-native (httpx.AsyncClient in the app's qasync loop). Every failure a
person can meet comes out as RemoteError with a sentence that names it: the host cannot be
reached, TLS failed, the key was refused (401), the model is gone (404), the stream dropped.
Closing the stream (cancelling the task that reads it) closes the HTTP connection, and a
vLLM or pagedesk server aborts the request when its client goes.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # between two chunks of a stream: a big cluster's queue can be long
# ChatSettings' fields an OpenAI-compatible server understands, by their request names
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "top_k", "min_p",
                   "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
                   "ignore_eos", "stop")  # fmt: skip


class RemoteError(RuntimeError):
    """A remote endpoint failed; the message says how, in words a person can act on."""


@dataclass(frozen=True, slots=True)
class RemoteModel:
    id: str
    max_model_len: int | None = None  # vLLM and pagedesk give it; OpenAI does not


@dataclass(slots=True)
class ReplyProgress:
    """A streaming reply as it stands: the text so far and its numbers."""

    text: str = ""
    tokens: int = 0  # content chunks so far; the final usage chunk makes it exact
    prompt_tokens: int | None = None
    started: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_reason: str | None = None

    def stats(self) -> dict[str, Any]:
        """The same numbers a local reply has: tokens, time to first token, tokens/s."""
        stats: dict[str, Any] = {"tokens": self.tokens}
        if self.first_token_time is not None:
            stats["time_to_first_token"] = round(self.first_token_time - self.started, 4)
            end = self.last_token_time or self.first_token_time
            if self.tokens > 1 and end > self.first_token_time:
                stats["tokens_per_second"] = round((self.tokens - 1) /
                                                   (end - self.first_token_time), 2)
        return stats


def normalize_url(url: str) -> str:
    """The base URL without a trailing slash or /v1 (both are accepted from a person)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not url.startswith(("http://", "https://")):
        raise RemoteError(f"the URL must start with http:// or https://, got {url or '(empty)'}")
    return url


def request_body(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> dict:
    """The /v1/chat/completions body for a pane's sampling settings (top_k -1 and seed None
    mean "off" and are left out, so any OpenAI-compatible server accepts the body)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}  # fmt: skip
    for name in SAMPLING_FIELDS:
        value = sampling.get(name)
        if value is None or (name == "top_k" and value <= 0):
            continue
        body[name] = value
    return body


class RemoteEndpoint:
    """One server: base URL (without /v1) and API key (may be empty)."""

    def __init__(self, base_url: str, api_key: str = "", verify: bool | str = True):
        self.base_url = normalize_url(base_url)
        self.api_key = api_key
        self._client = httpx.AsyncClient(
            base_url=self.base_url, verify=verify, headers=self._headers(),
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))  # fmt: skip

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def set_api_key(self, api_key: str) -> None:
        """A new key for this URL (one key per URL, as in the keyring): every session on it
        uses it from its next request."""
        self.api_key = api_key
        self._client.headers = self._headers()

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---------------------------------------------------------------- models
    async def list_models(self) -> list[RemoteModel]:
        """GET /v1/models: the models served, with max_model_len where the server gives it."""
        data = await self._get_json("/v1/models")
        try:
            cards = data["data"]
            return [RemoteModel(str(c["id"]), _int_or_none(c.get("max_model_len")))
                    for c in cards]  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise RemoteError(f"{self.base_url}/v1/models did not answer with a model list "
                              f"(missing {exc})") from None

    async def count_prompt(self, model: str, messages: list[dict[str, str]]) -> int | None:
        """The prompt's tokens by the server's POST /tokenize (vLLM's and pagedesk's), or
        None where the server has no such route or it fails: the count is a nicety."""
        try:
            response = await self._client.post("/tokenize", json={
                "model": model, "messages": messages, "add_generation_prompt": True})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return int(response.json()["count"])
        except (KeyError, TypeError, ValueError):
            return None

    # ---------------------------------------------------------------- chat
    async def stream_chat(self, model: str, messages: list[dict[str, str]],
                          sampling: dict[str, Any]) -> AsyncIterator[ReplyProgress]:  # fmt: skip
        """Stream a reply; yields the same ReplyProgress, updated, after each content chunk
        and after the final usage chunk. Raises RemoteError on any failure."""
        body = request_body(model, messages, sampling)
        progress = ReplyProgress()
        try:
            async with self._client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise RemoteError(self._status_message(r, model))
                async for line in r.aiter_lines():
                    if self._apply(line, progress):
                        yield progress
        except httpx.HTTPError as exc:
            raise RemoteError(self._transport_message(exc, during_stream=progress.tokens > 0
                                                      or progress.text != "")) from exc
        if progress.finish_reason is None:
            raise RemoteError(f"the stream from {self.base_url} ended before the reply did "
                              "(the server closed it)")

    def _apply(self, line: str, progress: ReplyProgress) -> bool:
        """One SSE line into `progress`; True when something changed."""
        if not line.startswith("data:"):
            return False
        payload = line[5:].strip()
        if payload == "[DONE]":
            return False
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise RemoteError(f"{self.base_url} sent a stream chunk that is not JSON: "
                              f"{payload[:80]!r}") from None
        if "error" in chunk:  # vLLM reports an engine failure mid-stream this way
            err = chunk["error"]
            raise RemoteError(f"the server stopped the reply: "
                              f"{err.get('message', err) if isinstance(err, dict) else err}")
        return _apply_chunk(chunk, progress)

    # ---------------------------------------------------------------- metrics
    async def fetch_metrics_text(self) -> str | None:
        """GET /metrics (Prometheus text), or None when the server does not expose it;
        RemoteError when it cannot be reached."""
        try:
            response = await self._client.get("/metrics", timeout=5.0)
        except httpx.HTTPError as exc:
            raise RemoteError(self._transport_message(exc)) from exc
        return response.text if response.status_code == 200 else None

    # ---------------------------------------------------------------- errors
    async def _get_json(self, path: str) -> Any:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise RemoteError(self._transport_message(exc)) from exc
        if response.status_code != 200:
            raise RemoteError(self._status_message(response))
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"{self.base_url}{path} did not answer with JSON: is this an "
                              "OpenAI-compatible server?") from None

    def _status_message(self, response: httpx.Response, model: str | None = None) -> str:
        detail = _error_detail(response)
        code = response.status_code
        if code == 401 and not self.api_key:
            return (f"{self.base_url} wants an API key (401 Unauthorized) and none is stored "
                    "for it (without an OS keyring keys last one run): enter it again in "
                    f"New remote session. {detail}").strip()
        if code == 401:
            return (f"{self.base_url} refused the API key (401 Unauthorized): check the key "
                    f"for this server. {detail}").strip()
        if code == 404 and model is not None:
            return (f"model '{model}' is not served by {self.base_url} any more (404): "
                    f"pick another in a new remote session. {detail}").strip()
        return f"{self.base_url} answered {code} {response.reason_phrase}. {detail}".strip()

    def _transport_message(self, exc: httpx.HTTPError, during_stream: bool = False) -> str:
        if _is_tls_error(exc):
            return (f"TLS failed with {self.base_url}: {_root_cause(exc)} (check the "
                    "certificate, or the scheme: http:// or https://)")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return f"cannot reach {self.base_url}: {_root_cause(exc)}"
        if during_stream or isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return (f"the connection to {self.base_url} dropped mid-reply "
                    f"({type(exc).__name__}: {_root_cause(exc)}); the text so far is kept")
        if isinstance(exc, httpx.TimeoutException):
            return f"{self.base_url} did not answer in time ({type(exc).__name__})"
        return f"request to {self.base_url} failed: {type(exc).__name__}: {_root_cause(exc)}"


def _apply_chunk(chunk: dict, progress: ReplyProgress) -> bool:
    changed = False
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            now = time.monotonic()
            if progress.first_token_time is None:
                progress.first_token_time = now
            progress.last_token_time = now
            progress.text += content
            progress.tokens += 1
            changed = True
        if choice.get("finish_reason"):
            progress.finish_reason = choice["finish_reason"]
            changed = True
    usage = chunk.get("usage")
    if usage:
        progress.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        completion = _int_or_none(usage.get("completion_tokens"))
        if completion is not None:
            progress.tokens = completion
        changed = True
    return changed


def _error_detail(response: httpx.Response) -> str:
    """The server's own error message (OpenAI's {"error": {"message"}} or FastAPI's)."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(data)[:200]


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in type(seen).__name__:
            return True
        if "[SSL" in str(seen) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
