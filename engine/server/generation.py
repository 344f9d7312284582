"""One API request's run through the engine: one engine request per prompt, merged,
turned into per-choice deltas, with usage and metrics kept on the way.

The engine is asked for DELTA outputs, streamed or not: each step hands over only what is
new (a long reply is never copied per step), and a non-streamed response joins the
pieces once at the end. Streamed or not, every step's output comes through: the latency
metrics count on it.

Choice `prompt_index * n + i` is completion `i` of prompt `prompt_index` (OpenAI's order).
Engine request ids are `<response id>-<prompt index>`, so an abort in the KV cache's event
log can be traced back to the response a client saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import RequestOutputKind, SamplingParams
from engine.server.metrics import ServerMetrics
from engine.server.prompts import Prompt
from engine.server.protocol import PromptTokensDetails, UsageInfo

T = TypeVar("T")


@dataclass(slots=True)
class Delta:
    """What is new in one choice since the previous delta of that choice."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass(slots=True)
class _Choice:
    """One choice's pieces so far, joined once into its final output."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, d: Delta) -> None:
        self.texts.append(d.text)
        self.token_ids.extend(d.token_ids)
        if d.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(d.logprobs)
        self.finish_reason, self.stop_reason = d.finish_reason, d.stop_reason

    def output(self, index: int) -> CompletionOutput:
        return CompletionOutput(index=index, text="".join(self.texts), token_ids=self.token_ids,
                                finish_reason=self.finish_reason, stop_reason=self.stop_reason,
                                logprobs=self.logprobs)  # fmt: skip


class Generation:
    """Streams the deltas of all choices of one API request."""

    def __init__(
        self, engine: Any, prompts: list[Prompt], params: SamplingParams, request_id: str,
        metrics: ServerMetrics,
    ):
        self.engine = engine
        self.prompts = prompts
        self.params = replace(params, output_kind=RequestOutputKind.DELTA)
        self.request_id = request_id
        self.n = getattr(params, "n", 1)
        self.trackers = [metrics.track(self.params) for _ in prompts]
        self._choices: dict[int, _Choice] = {}  # choice index -> what it said so far
        self._done: set[int] = set()  # finished choices, reported once
        # Per prompt: its prefix-cache hit, and its prompt logprobs and ranks if asked for
        # (the engine's first DELTA output of the prompt carries them).
        self._cached_tokens: dict[int, int] = {}
        self._prompt_logprobs: dict[int, tuple[list, list]] = {}

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    def final(self, index: int) -> CompletionOutput:
        """Choice `index` whole (after run_to_end)."""
        return self._choices[index].output(index)

    def prompt_logprobs(self, choice: int) -> tuple[list | None, list | None]:
        """The prompt logprobs and ranks of choice `choice`'s prompt: (None, None) until
        they came (or if not asked for)."""
        return self._prompt_logprobs.get(choice // self.n, (None, None))

    def usage(self) -> UsageInfo:
        prompt = sum(len(p.token_ids) for p in self.prompts)
        completion = sum(len(c.token_ids) for c in self._choices.values())
        cached = PromptTokensDetails(cached_tokens=sum(self._cached_tokens.values()))
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                         total_tokens=prompt + completion, prompt_tokens_details=cached)

    async def stream(self) -> AsyncIterator[list[Delta]]:
        """Yield a non-empty list of deltas per engine output; the engine's errors
        (ValueError for a bad request, EngineDeadError) come out of here."""
        streams = [self._engine_stream(i, p) for i, p in enumerate(self.prompts)]
        try:
            async with aclosing(merge(streams)) as merged:
                async for prompt_index, out in merged:
                    self._note_prompt(prompt_index, out)
                    deltas = self._deltas(prompt_index, out)
                    self.trackers[prompt_index].observe(out, sum(len(d.token_ids) for d in deltas))
                    if deltas:
                        yield deltas
        finally:
            for tracker in self.trackers:
                tracker.close()

    async def run_to_end(self) -> None:
        """Consume everything (non-streaming responses read `final(i)` afterwards)."""
        async with aclosing(self.stream()) as deltas:
            async for _ in deltas:
                pass

    async def _engine_stream(self, index: int, prompt: Prompt) -> AsyncIterator[RequestOutput]:
        # aclosing: a client that goes away closes this generator, and closing the
        # engine's stream aborts the request and frees its blocks at the next step.
        rid = f"{self.request_id}-{index}"
        async with aclosing(self.engine.generate(prompt.token_ids, self.params, request_id=rid)) as outs:
            async for out in outs:
                yield out

    def _note_prompt(self, prompt_index: int, out: RequestOutput) -> None:
        self._cached_tokens[prompt_index] = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            self._prompt_logprobs[prompt_index] = (out.prompt_logprobs, out.prompt_logprob_ranks)

    def _deltas(self, prompt_index: int, out: RequestOutput) -> list[Delta]:
        """The engine's DELTA output as per-choice deltas (each completion in it is new)."""
        deltas = []
        for c in out.outputs:
            index = prompt_index * self.n + c.index
            if index in self._done or not (c.token_ids or c.text or c.finished):
                continue
            d = Delta(index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason)
            self._choices.setdefault(index, _Choice()).add(d)
            deltas.append(d)
            if c.finished:
                self._done.add(index)
        return deltas


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave async iterators as their items arrive: yields (stream index, item).
    The first error of any stream is raised; closing this closes them all."""
    if len(streams) == 1:  # the common case needs no tasks
        async with aclosing(streams[0]) as stream:
            async for item in stream:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((index, item))
            await queue.put((index, end))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
