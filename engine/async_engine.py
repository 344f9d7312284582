"""AsyncEngine: a background thread drives LLMEngine.step(); asyncio code streams results.

    engine = AsyncEngine(EngineConfig())
    async for out in engine.generate("Hello", SamplingParams(max_tokens=32)):
        print(out.outputs[0].delta_text, end="")

Each item is of the request's SamplingParams.output_kind: CUMULATIVE (the default: the
whole reply so far, with what is new in delta_text / delta_token_ids), DELTA (only what is
new, which a long stream should use) or FINAL_ONLY (one item, at the end).

The engine thread owns the LLMEngine: requests, aborts and shutdown reach it through a
command queue, and outputs go back through each request's one-item stream, woken with
`loop.call_soon_threadsafe`; outputs the consumer has not taken yet are merged into one.
The thread sleeps on an Event when there is no work (no busy loop).
A bad request fails alone (its stream raises); an exception in a step kills the engine,
and every waiting stream raises EngineDeadError instead of hanging.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import EngineConfig
from engine.kv_snapshot import KVSnapshot
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput, merge_outputs
from engine.sampling_params import RequestOutputKind, SamplingParams
from engine.stats import StepStats

log = logging.getLogger(__name__)

Prompt = str | list[int] | list[dict[str, Any]]
# listener(records, snapshot): every step record since the last call, in order, and a KV
# snapshot when one was asked for (request_snapshot), else None.
StatsListener = Callable[[list[StepStats], KVSnapshot | None], None]


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


@dataclass(slots=True)
class _Call:
    """Run fn(engine) on the engine thread, between steps (the cache is not thread-safe)."""

    fn: Callable[[LLMEngine], Any]
    future: concurrent.futures.Future


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What does not change while an engine lives: `AsyncEngine.info()`."""

    model_name: str
    model_path: str  # "native Llama", "generic (transformers X)"
    device: torch.device
    dtype: torch.dtype
    attention_backend: str
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    vocab_size: int  # the model's: token ids run from 0 to vocab_size - 1
    tensor_parallel_size: int = 1  # ranks the model is sharded over; the KV blocks are per rank
    cpu_weight_storage: str = ""  # "bfloat16" / "float32" of packed CPU linears; "" if none


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """The live numbers after the latest step: `AsyncEngine.metrics()`. Made by the engine
    thread, read whole by any other (a /metrics scrape, the status bar)."""

    num_steps: int = 0
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # share of blocks held by requests (0-1)
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache so far
    prefix_hits: int = 0  # of which were found
    num_preemptions: int = 0  # requests preempted (to be recomputed) so far


class _Stream:
    """One request's channel from the engine thread to its asyncio consumer. It holds at
    most one item: an output that arrives before the consumer took the previous one is
    merged into it (`merge_outputs`), as vLLM's RequestOutputCollector does. A consumer
    that keeps up sees every step; one that falls behind (a busy UI thread, four chats
    streaming) wakes once per look, not once per token, and so catches up instead of
    falling further behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delta: bool):
        self.loop = loop
        self.delta = delta  # DELTA outputs: merging concatenates them
        self._lock = threading.Lock()
        self._item: RequestOutput | BaseException | None = None
        # The consumer's wake-up: a future of `loop`'s own, not an asyncio.Event. An Event
        # binds to whatever loop runs at its next wait, and qasync steps tasks with none
        # running (the Qt pass that ends its run_until_complete): the Event then raised.
        self._waiter: asyncio.Future | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        """From the engine thread."""
        with self._lock:
            waiting = self._item
            if waiting is None or isinstance(item, BaseException):
                self._item = item  # an error ends the stream: it replaces what waits
            elif isinstance(waiting, RequestOutput):
                self._item = merge_outputs(waiting, item, self.delta)
            waiter = self._waiter
            if waiting is not None or waiter is None:
                return  # the consumer has been woken for it already, or will find it
        try:
            self.loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:
            pass  # the consumer's loop is closed: nobody is listening any more

    async def get(self) -> RequestOutput | BaseException:
        while True:
            with self._lock:
                item, self._item = self._item, None
                self._waiter = None if item is not None else self.loop.create_future()
                waiter = self._waiter
            if item is not None:
                return item
            await waiter


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():  # a cancelled consumer's future is done already
        waiter.set_result(None)


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
        self._commands: queue.SimpleQueue[_Add | _Abort | _Call] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._streams: dict[str, _Stream] = {}
        self._listeners: list[StatsListener] = []
        self._last_stats_sent = 0.0
        self._pending_records: list[StepStats] = []  # not yet handed to the listeners
        self._snapshot_wanted = False
        self._snapshot_version: tuple[int, int] | None = None  # what the last one showed
        # Learner controls: paused, single steps asked for, a delay between steps.
        self._paused = False
        self._between_steps = threading.Event()  # set while the thread is not in a step
        self._step_requests: queue.SimpleQueue[concurrent.futures.Future] = queue.SimpleQueue()
        self.step_delay = 0.0
        self._ids = itertools.count()
        self.error: BaseException | None = None
        # shutdown() and the thread's end agree, under this lock, on who frees the model.
        self._release_lock = threading.Lock()
        self._thread_done = False
        self._abandoned = False
        self._info = self._facts()
        self._metrics = self._measure()
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

    @property
    def is_paused(self) -> bool:
        return self._paused

    # ---------------------------------------------------------------- learner controls
    def pause(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Stop stepping after the current step; requests wait (and new ones queue up).
        wait=True returns only once the thread is between steps: no token comes after it."""
        self._paused = True
        self._between_steps.clear()
        self._wake.set()
        if wait and self._thread.is_alive():
            self._between_steps.wait(timeout)

    def resume(self) -> None:
        """Go on stepping; nothing queued while paused is lost."""
        self._paused = False
        self._wake.set()

    def step_once_async(self) -> concurrent.futures.Future:
        """Ask for exactly one scheduler step (paused or not). The future gives that step's
        StepStats, or None when there was nothing to schedule."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._check_alive()
        self._step_requests.put(future)
        self._wake.set()
        return future

    def step_once(self, timeout: float | None = 60.0) -> StepStats | None:
        """Exactly one scheduler step, returning its record (blocks until it ran)."""
        return self.step_once_async().result(timeout)

    def set_step_delay(self, seconds: float) -> None:
        """Slow motion: sleep this long after every step (0 = full speed)."""
        if seconds < 0:
            raise ValueError(f"step delay must be >= 0, got {seconds}")
        self.step_delay = float(seconds)
        self._wake.set()

    def request_snapshot(self) -> None:
        """Ask for one KV snapshot: the listeners get it with the next records (or at once
        when idle or paused). Nothing builds a snapshot that nobody asked for."""
        self._snapshot_wanted = True
        self._wake.set()

    def call_in_engine(self, fn: Callable[[LLMEngine], Any]) -> concurrent.futures.Future:
        """Run fn(llm_engine) on the engine thread between steps; the future has its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._check_alive()
        self._send(_Call(fn, future))
        return future

    def reset_prefix_cache(self) -> concurrent.futures.Future:
        """Forget every cached-free prefix block; the future gives how many were cleared."""
        return self.call_in_engine(lambda engine: engine.reset_prefix_cache())

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
        `outputs[i].delta_text` / `delta_token_ids` (several steps' worth when the consumer
        was slower than the engine), and `text` / `token_ids` as the
        params' output_kind says (whole so far, or, with DELTA, only the new part); the
        last has `finished=True`. Cancelling the consuming task aborts the request at the
        next step."""
        self._check_alive()
        spec = sampling_params.structured_outputs if sampling_params else None
        if spec is not None:  # compiled (and cached) off the engine's thread: it may take seconds
            await asyncio.to_thread(self.engine.grammars.compile, spec)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        params = sampling_params or SamplingParams()
        stream = _Stream(asyncio.get_running_loop(),
                         delta=params.output_kind is RequestOutputKind.DELTA)
        self._streams[request_id] = stream
        # Checked again once the stream is registered: a death (or shutdown) between the
        # first check and the registration broadcast to the streams it saw, not this one,
        # which would then wait forever. The thread sets `error` / `_stopping` before it
        # copies the streams, so one of the two always reaches us.
        try:
            self._check_alive()
        except EngineDeadError:
            self._streams.pop(request_id, None)
            raise
        self._send(_Add(request_id, self.tokenize_prompt(prompt), params, stream))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        """Abort at the next step; its blocks are freed then."""
        if self._thread.is_alive():
            self._send(_Abort(request_id))

    def add_stats_listener(self, listener: StatsListener) -> None:
        """Call `listener(records, snapshot)` from the engine thread: every step's record
        since the last call (none is lost to the rate limit), at most once per
        `stats_interval` while stepping and at once when idle, paused or single-stepped;
        `snapshot` is a KV snapshot if one was asked for, else None. It must be quick and
        thread-safe (a Qt queued signal, a loop.call_soon_threadsafe)."""
        self._listeners.append(listener)

    def _send(self, command: _Add | _Abort | _Call) -> None:
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
                single = self._next_step_request()
                if single is None and (self._paused or not self.engine.has_unfinished_requests()):
                    self._idle()
                    continue
                record = self._step()
                if single is not None:
                    single.set_result(record)
                self._publish(force=single is not None or self._paused)
                self._slow_motion()
        except BaseException as exc:  # the engine itself failed: tell everyone
            log.exception("engine thread died")
            self.error = exc
            dead = EngineDeadError(f"the engine stopped on an error: {exc!r}")
            dead.__cause__ = exc
            for stream in list(self._streams.values()):
                stream.put(dead)
            self._fail_step_requests(dead)
        finally:
            self._between_steps.set()
            with self._release_lock:
                self._thread_done = True
                abandoned = self._abandoned
            if abandoned:  # a shutdown that stopped waiting for us left this to do
                # Only drop the references: a gc.collect() here, off the GUI thread, could
                # finalise the app's Qt objects in the wrong thread.
                self.engine.release()

    def _idle(self) -> None:
        """Nothing to do (or paused): hand over what is pending, sleep until woken."""
        self._between_steps.set()
        self._publish(force=True)
        self._wake.wait()
        self._wake.clear()

    def info(self) -> EngineFacts:
        """The engine's fixed facts; readable from any thread, also after shutdown()."""
        return self._info

    def metrics(self) -> EngineMetrics:
        """The live numbers as of the latest step (one immutable record, swapped whole by the
        engine thread: never half of one step and half of the next)."""
        return self._metrics

    def _facts(self) -> EngineFacts:
        e = self.engine
        return EngineFacts(e.model_name, e.model_path.label, e.device, e.dtype,
                           str(e.attention_backend), e.num_kv_blocks, e.config.block_size,
                           e.max_model_len, e.loaded.hf_config.vocab_size,
                           e.tensor_parallel_size, e.cpu_weight_storage)  # fmt: skip

    def _measure(self) -> EngineMetrics:
        e, kv = self.engine, self.engine.kv_manager
        return EngineMetrics(e.num_steps, len(e.scheduler.running), len(e.scheduler.waiting),
                             kv.usage, kv.prefix_queries, kv.prefix_hits,
                             e.scheduler.num_preemptions_total)  # fmt: skip

    def _step(self) -> StepStats | None:
        """One engine step; its record, or None if nothing could be scheduled."""
        before = self.engine.num_steps
        for out in self.engine.step():
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
        self._metrics = self._measure()
        if self.engine.num_steps == before:
            return None
        record = self.engine.last_step_stats
        self._pending_records.append(record)
        return record

    def _next_step_request(self) -> concurrent.futures.Future | None:
        try:
            return self._step_requests.get_nowait()
        except queue.Empty:
            return None

    def _fail_step_requests(self, error: BaseException) -> None:
        while (future := self._next_step_request()) is not None:
            future.set_exception(error)

    def _slow_motion(self) -> None:
        """Sleep step_delay after a step; a pause, resume or shutdown cuts it short."""
        deadline = time.monotonic() + self.step_delay
        while not self._stopping and not self._paused and self.step_delay > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()

    def _drain_commands(self) -> None:
        drained = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                if drained:  # requests added or aborted: the waiting count changed
                    self._metrics = self._measure()
                return
            drained = True
            if isinstance(command, _Abort):
                self.engine.abort_request(command.request_id)
            elif isinstance(command, _Call):
                self._run_call(command)
            else:
                self._add(command)

    def _add(self, command: _Add) -> None:
        try:
            self.engine.add_request(command.request_id, command.prompt, command.params)
        except Exception as exc:  # a bad request fails alone
            command.stream.put(exc)

    def _run_call(self, call: _Call) -> None:
        try:
            call.future.set_result(call.fn(self.engine))
        except Exception as exc:
            call.future.set_exception(exc)

    def _publish(self, force: bool = False) -> None:
        """Hand the pending records (and a snapshot, if asked for) to the listeners: at most
        once per stats_interval unless forced."""
        if not self._listeners:
            self._pending_records.clear()
            return
        now = time.monotonic()
        if not force and now - self._last_stats_sent < self.stats_interval:
            return
        # A wanted snapshot waits until the cache changed: an idle engine asked again and
        # again (the GUI asks after each one it draws) must not answer with copies.
        version = (self.engine.num_steps, self.engine.kv_manager.num_events)
        snapshot_due = self._snapshot_wanted and version != self._snapshot_version
        if not self._pending_records and not snapshot_due:
            return
        self._last_stats_sent = now
        records, self._pending_records = self._pending_records, []
        snapshot = None
        if snapshot_due:
            self._snapshot_wanted = False
            self._snapshot_version = version
            snapshot = self.engine.kv_snapshot()
        for listener in list(self._listeners):
            try:
                listener(records, snapshot)
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
        self._fail_step_requests(closed)
        with self._release_lock:
            if not self._thread_done:
                # Still inside a step (or a call): freeing the model under it would crash
                # it. The thread drops it itself when that step returns.
                self._abandoned = True
                log.warning("engine step still running %.1f s after shutdown; the model is "
                            "freed when it ends", timeout)  # fmt: skip
                return
        self._release()

    def _release(self) -> None:
        """Free model and cache memory (the engine thread has ended)."""
        device = self.engine.device
        self.engine.release()  # facts (tokenizer, model name) stay readable afterwards
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
