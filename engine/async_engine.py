"""AsyncEngine: a background thread drives LLMEngine.step(); asyncio code streams results.

    engine = AsyncEngine(EngineConfig())
    async for out in engine.generate("Hello", SamplingParams(max_tokens=32)):
        print(out.outputs[0].delta_text, end="")

The engine thread owns the LLMEngine: requests, aborts and shutdown reach it through a
command queue, and outputs go back to each consumer's asyncio.Queue through
`loop.call_soon_threadsafe`. It sleeps on an Event when there is no work (no busy loop).
A bad request fails alone (its stream raises); an exception in a step kills the engine,
and every waiting stream raises EngineDeadError instead of hanging.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.config import EngineConfig
from engine.kv_snapshot import KVSnapshot
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.stats import StepStats

log = logging.getLogger(__name__)

Prompt = str | list[int] | list[dict[str, Any]]
StatsListener = Callable[[StepStats, KVSnapshot], None]


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an error; no request can be served any more."""


@dataclass(slots=True)
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    stream: _Stream


@dataclass(slots=True)
class _Abort:
    request_id: str


class _Stream:
    """One request's channel from the engine thread to its asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.sent: dict[int, tuple[int, int]] = {}  # completion index -> (chars, tokens) sent

    def put(self, item: RequestOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the consumer's loop is closed: nobody is listening any more


class AsyncEngine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        engine: LLMEngine | None = None,
        stats_interval: float = 0.05,
    ):
        """Build (or adopt) an LLMEngine and start its thread. Loading happens here, in
        the caller's thread: construct it in a worker thread if the caller must not block."""
        self.engine = engine or LLMEngine(config)
        self.stats_interval = stats_interval  # at most 1 / interval stats events per second
        self._commands: queue.SimpleQueue[_Add | _Abort] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._streams: dict[str, _Stream] = {}
        self._listeners: list[StatsListener] = []
        self._last_stats_sent = 0.0
        self._ids = itertools.count()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pagedesk-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- facts
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def is_dead(self) -> bool:
        return self.error is not None

    # ---------------------------------------------------------------- requests
    def tokenize_prompt(self, prompt: Prompt) -> str | list[int]:
        """Chat messages go through the tokenizer's chat template; others pass through."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            return list(self.tokenizer.apply_chat_template(
                prompt, tokenize=True, add_generation_prompt=True, return_dict=False
            ))
        return prompt

    async def generate(
        self,
        prompt: Prompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request: each item carries the new text/tokens since the last one in
        `outputs[i].delta_text` / `delta_token_ids`; the last has `finished=True`.
        Cancelling the consuming task aborts the request at the next step."""
        self._check_alive()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        params = sampling_params or SamplingParams()
        self._send(_Add(request_id, self.tokenize_prompt(prompt), params, stream))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield self._with_deltas(item, stream)
        finally:
            if not finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)

    @staticmethod
    def _with_deltas(out: RequestOutput, stream: _Stream) -> RequestOutput:
        completions = []
        for c in out.outputs:
            chars, tokens = stream.sent.get(c.index, (0, 0))
            completions.append(replace(
                c, delta_text=c.text[chars:], delta_token_ids=c.token_ids[tokens:]
            ))
            stream.sent[c.index] = (len(c.text), len(c.token_ids))
        return replace(out, outputs=completions)

    def abort(self, request_id: str) -> None:
        """Abort at the next step; its blocks are freed then."""
        if self._thread.is_alive():
            self._send(_Abort(request_id))

    def add_stats_listener(self, listener: StatsListener) -> None:
        """Call `listener(stats, snapshot)` from the engine thread after steps, at most
        once per `stats_interval` (and once when the engine goes idle). It must be quick
        and thread-safe (a Qt queued signal, a loop.call_soon_threadsafe)."""
        self._listeners.append(listener)

    def _send(self, command: _Add | _Abort) -> None:
        self._commands.put(command)
        self._wake.set()

    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine stopped on an error: {self.error!r}") from self.error
        if self._stopping or not self._thread.is_alive():
            raise EngineDeadError("the engine has been shut down")

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._publish_stats(force=True)
                    self._wake.wait()
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
                self._publish_stats()
        except BaseException as exc:  # the engine itself failed: tell everyone
            log.exception("engine thread died")
            self.error = exc
            dead = EngineDeadError(f"the engine stopped on an error: {exc!r}")
            dead.__cause__ = exc
            for stream in list(self._streams.values()):
                stream.put(dead)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Abort):
                self.engine.abort_request(command.request_id)
                continue
            try:
                self.engine.add_request(command.request_id, command.prompt, command.params)
            except Exception as exc:  # a bad request fails alone
                command.stream.put(exc)

    def _publish_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        stats = self.engine.last_step_stats
        if not self._listeners or stats is None:
            return
        if not force and now - self._last_stats_sent < self.stats_interval:
            return
        if force and self._last_stats_sent >= stats.finished_time:
            return  # nothing new since the last event
        self._last_stats_sent = now
        snapshot = self.engine.kv_snapshot()
        for listener in list(self._listeners):
            try:
                listener(stats, snapshot)
            except Exception:
                log.exception("stats listener failed")

    # ---------------------------------------------------------------- the end
    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread, fail what is still waiting, free model and cache memory."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        closed = EngineDeadError("the engine has been shut down")
        for stream in list(self._streams.values()):
            stream.put(closed)
        device = self.engine.device
        self.engine.release()  # facts (tokenizer, model name) stay readable afterwards
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
