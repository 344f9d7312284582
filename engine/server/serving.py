"""/v1/chat/completions and /v1/completions: requests in, JSON or SSE out.

A request is checked (model, sampling fields, prompt length) before it reaches the engine.
A streamed response waits for the engine's first output before it sends its headers, so
an error the engine finds in a request is still an HTTP 4xx, not a broken stream. A client
that goes away cancels its work: its engine requests are aborted and their blocks freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from engine.async_engine import EngineDeadError
from engine.server.errors import APIError, error_body, model_not_found
from engine.server.generation import Delta, Generation
from engine.server.logprobs import LogprobFormatter
from engine.server.metrics import ServerMetrics
from engine.server.params import chat_sampling_params, completion_sampling_params
from engine.server.prompts import Prompt, chat_prompt, check_length, completion_prompts
from engine.server.protocol import (
    AssistantMessage, ChatCompletionChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatCompletionStreamChoice, CompletionChoice, CompletionRequest,
    CompletionResponse, CompletionResponseChoice, DeltaMessage, ModelCard, ModelList, UsageInfo,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DONE = "data: [DONE]\n\n"


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class OpenAIServing:
    """The OpenAI endpoints over one AsyncEngine."""

    def __init__(self, engine: Any, served_model_names: list[str], metrics: ServerMetrics):
        self.engine = engine
        self.model_names = served_model_names
        self.metrics = metrics
        self.logprobs = LogprobFormatter(engine.tokenizer)

    # ---------------------------------------------------------------- models
    def models(self) -> ModelList:
        return ModelList(data=[self._card(name) for name in self.model_names])

    def model(self, model_id: str) -> ModelCard:
        """One served model (OpenAI's retrieve); a 404 for any other name."""
        if model_id not in self.model_names:
            raise model_not_found(model_id)
        return self._card(model_id)

    def _card(self, name: str) -> ModelCard:
        return ModelCard(id=name, root=self.engine.model_name, max_model_len=self.engine.max_model_len)

    def _check_model(self, model: str | None) -> str:
        if model is not None and model not in self.model_names:
            raise model_not_found(model)
        return model or self.model_names[0]

    # ---------------------------------------------------------------- chat
    async def chat(self, request: ChatCompletionRequest, raw: Request) -> Response:
        model = self._check_model(request.model)
        params = chat_sampling_params(request, self.engine.max_model_len)
        # In a thread: rendering and tokenising a long prompt takes seconds per megabyte,
        # which on the event loop would stall every other client (the Rust tokenizer
        # releases the GIL while it works).
        prompt = await asyncio.to_thread(chat_prompt, self.engine.tokenizer, request)
        check_length(prompt, params.max_tokens, self.engine.max_model_len, "messages")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        gen = Generation(self.engine, [prompt], params, rid, self.metrics)
        top_n = (request.top_logprobs or 0) if request.logprobs else None
        ctx = _Context(rid, model, request.include_usage, top_n,
                       continuous_usage=request.continuous_usage)
        if request.stream:
            return await self._stream(raw, gen, lambda deltas: self._chat_events(gen, ctx, deltas))
        await _run(raw, gen.run_to_end())
        return _json(self._chat_response(gen, ctx))

    def _chat_response(self, gen: Generation, ctx: _Context) -> ChatCompletionResponse:
        choices = []
        for index in range(gen.num_choices):
            c = gen.final(index)
            choices.append(ChatCompletionChoice(
                index=index, message=AssistantMessage(content=c.text),
                logprobs=self._chat_logprobs(c.token_ids, c.logprobs, ctx),
                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
            ))
        return ChatCompletionResponse(id=ctx.id, created=ctx.created, model=ctx.model,
                                      choices=choices, usage=gen.usage(),
                                      prompt_logprobs=self._prompt_logprobs(gen, 0))

    async def _chat_events(
        self, gen: Generation, ctx: _Context, stream: AsyncIterator[list[Delta]]
    ) -> AsyncIterator[str]:
        # One choice per chunk, as OpenAI and vLLM send them: a client reading choices[0]
        # of each chunk sees every choice. The first chunk of each choice names the role.
        for i in range(gen.num_choices):
            role = ChatCompletionStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
            yield _sse(ctx.chat_chunk([role], usage=ctx.running_usage(gen)))
        async for deltas in stream:
            for d in deltas:
                yield _sse(ctx.chat_chunk([self._chat_stream_choice(d, ctx)],
                                          usage=ctx.running_usage(gen)))
        if ctx.include_usage:
            yield _sse(ctx.chat_chunk([], usage=gen.usage()))

    def _chat_logprobs(self, token_ids: list[int], logprobs: Any, ctx: _Context):
        if ctx.logprobs is None:
            return None
        return self.logprobs.chat(token_ids, logprobs, ctx.logprobs)

    def _chat_stream_choice(self, d: Delta, ctx: _Context) -> ChatCompletionStreamChoice:
        return ChatCompletionStreamChoice(
            index=d.index, delta=DeltaMessage(content=d.text if d.text or not d.finish_reason else None),
            logprobs=self._chat_logprobs(d.token_ids, d.logprobs, ctx),
            finish_reason=d.finish_reason, stop_reason=d.stop_reason,
        )

    # ---------------------------------------------------------------- completions
    async def completions(self, request: CompletionRequest, raw: Request) -> Response:
        model = self._check_model(request.model)
        params = completion_sampling_params(request, self.engine.max_model_len)
        prompts = await asyncio.to_thread(completion_prompts, self.engine.tokenizer, request)
        for prompt in prompts:
            check_length(prompt, params.max_tokens, self.engine.max_model_len, "prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        gen = Generation(self.engine, prompts, params, rid, self.metrics)
        ctx = _Context(rid, model, request.include_usage, request.logprobs, request.echo,
                       continuous_usage=request.continuous_usage)
        if request.stream:
            return await self._stream(
                raw, gen, lambda deltas: self._completion_events(gen, ctx, deltas))
        await _run(raw, gen.run_to_end())
        return _json(self._completion_response(gen, ctx))

    def _echo(self, gen: Generation, index: int) -> str:
        prompt: Prompt = gen.prompts[index // gen.n]
        if prompt.text is None:
            prompt.text = self.engine.tokenizer.decode(prompt.token_ids)
        return prompt.text

    def _with_prompt(self, gen: Generation, index: int, text: str, token_ids: list[int],
                     logprobs: list | None) -> tuple[str, list[int], list | None]:  # fmt: skip
        """Choice `index`'s text, tokens and logprobs after its echoed prompt (vLLM's echo:
        the prompt's logprobs first, the first prompt token's None)."""
        prompt_ids = gen.prompts[index // gen.n].token_ids
        if logprobs is not None:
            prompt_logprobs = gen.prompt_logprobs(index)[0] or [None] * len(prompt_ids)
            logprobs = [*prompt_logprobs, *logprobs]
        return self._echo(gen, index) + text, [*prompt_ids, *token_ids], logprobs

    def _prompt_logprobs(self, gen: Generation, index: int):
        """vLLM's `prompt_logprobs` of choice `index`'s prompt (None if not asked for)."""
        return self.logprobs.prompt_logprobs(gen.prompts[index // gen.n].token_ids,
                                             *gen.prompt_logprobs(index))  # fmt: skip

    def _completion_response(self, gen: Generation, ctx: _Context) -> CompletionResponse:
        choices = []
        for index in range(gen.num_choices):
            c = gen.final(index)
            text, token_ids, logprobs = c.text, c.token_ids, c.logprobs
            if ctx.echo:
                text, token_ids, logprobs = self._with_prompt(gen, index, text, token_ids, logprobs)
            choices.append(CompletionResponseChoice(
                index=index, text=text,
                logprobs=(self.logprobs.completion(token_ids, logprobs)
                          if ctx.logprobs is not None else None),
                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                prompt_logprobs=self._prompt_logprobs(gen, index),
            ))
        return CompletionResponse(id=ctx.id, created=ctx.created, model=ctx.model,
                                  choices=choices, usage=gen.usage())

    async def _completion_events(
        self, gen: Generation, ctx: _Context, stream: AsyncIterator[list[Delta]]
    ) -> AsyncIterator[str]:
        # One choice per chunk, as OpenAI and vLLM send them. An echo comes with the
        # choice's first text, as in vLLM (the prompt's logprobs come with that output).
        echoed: set[int] = set()
        offsets = [0] * gen.num_choices  # text offsets of each choice's logprobs
        async for deltas in stream:
            for d in deltas:
                text, token_ids, entries = d.text, d.token_ids, d.logprobs
                if ctx.echo and d.index not in echoed:
                    echoed.add(d.index)
                    text, token_ids, entries = self._with_prompt(gen, d.index, text, token_ids, entries)
                logprobs = None
                if ctx.logprobs is not None:
                    logprobs = self.logprobs.completion(token_ids, entries, offsets[d.index])
                    if logprobs is not None and logprobs.tokens:
                        offsets[d.index] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                choice = CompletionChoice(index=d.index, text=text, logprobs=logprobs,
                                          finish_reason=d.finish_reason, stop_reason=d.stop_reason)
                yield _sse(ctx.completion_chunk([choice], usage=ctx.running_usage(gen)))
        if ctx.include_usage:
            yield _sse(ctx.completion_chunk([], usage=gen.usage()))

    # ---------------------------------------------------------------- streaming
    async def _stream(
        self, raw: Request, gen: Generation,
        make_events: Callable[[AsyncIterator[list[Delta]]], AsyncIterator[str]],
    ) -> Response:
        """Wait for the engine's first output before the headers go out, so that an
        error the engine finds in the request is still a 4xx; then stream the rest."""
        stream = gen.stream()
        try:
            first = await _run(raw, _peek(stream))
        except BaseException:
            await stream.aclose()
            raise
        events = make_events(_prepend(first, stream))
        return StreamingResponse(_sse_body(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


class _Context:
    """What every chunk of one response shares."""

    def __init__(
        self, rid: str, model: str, include_usage: bool, logprobs: int | None, echo: bool = False,
        *, continuous_usage: bool = False,
    ):
        self.id = rid
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage  # usage in every chunk (vLLM's stream option)
        self.logprobs = logprobs  # top-N alternatives per token; None: no logprobs
        self.echo = echo

    def running_usage(self, gen: Generation) -> UsageInfo | None:
        """The usage so far, for a stream asked for continuous usage stats (as vLLM)."""
        return gen.usage() if self.continuous_usage else None

    def chat_chunk(self, choices: list[ChatCompletionStreamChoice], usage=None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                   choices=choices, usage=usage)

    def completion_chunk(self, choices: list[CompletionChoice], usage=None) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.model,
                                  choices=choices, usage=usage)


def _sse(chunk: ChatCompletionChunk | CompletionResponse) -> str:
    # Without stream_options.include_usage, OpenAI's chunks carry no usage field.
    exclude = {"usage"} if chunk.usage is None else None
    return f"data: {chunk.model_dump_json(exclude=exclude)}\n\n"


def _json(body: Any) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


async def _peek(stream: AsyncIterator[T]) -> T | None:
    return await anext(stream, None)


async def _prepend(first: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    async with aclosing(rest):
        if first is not None:
            yield first
            async for item in rest:
                yield item


async def _sse_body(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The SSE body: the events, then [DONE]. An engine failure mid-stream becomes an
    OpenAI error event (the status line is already sent)."""
    try:
        async with aclosing(events):
            async for event in events:
                yield event
    except (APIError, ValueError, EngineDeadError) as exc:
        yield f"data: {json.dumps(_error_for(exc).body())}\n\n"
    except Exception as exc:  # never leave a client with a stream that just stops
        log.exception("stream failed")
        yield f"data: {json.dumps(error_body(f'internal error: {exc!r}', 'server_error'))}\n\n"
    yield DONE


def _error_for(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(str(exc), status=503, type="server_error", code="engine_dead")
    return APIError.from_value_error(exc)  # type: ignore[arg-type]


async def _run(raw: Request, work: Awaitable[T]) -> T:
    """Await engine work for a request; the engine's ValueErrors become 400s."""
    try:
        return await _unless_disconnected(raw, work)
    except ValueError as exc:
        raise APIError.from_value_error(exc) from exc


async def _unless_disconnected(raw: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so aborting its engine requests) if the client
    disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(raw.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            # Let it unwind before going on: the caller may close what it was iterating
            # (aclose() on a generator still running in the task is a RuntimeError).
            await asyncio.wait({task})
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
