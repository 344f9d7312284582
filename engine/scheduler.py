"""Continuous batching under a token budget, as vLLM V1 schedules a step.

There is no prefill phase and no decode phase: every request has a number of computed
tokens to bring up to its length. Running requests go first (oldest first), then waiting
ones; a prompt larger than the budget left is cut into chunks (chunked prefill); when
blocks run out, the newest running request is preempted and recomputed later.

The scheduler owns request state: schedule() admits, preempts and sizes each step, and
update_from_output() applies the step's result (computed tokens, full blocks into the
prefix cache, sampled tokens, token-based stops, freeing). So scheduler and KV cache
manager are one unit that runs, and is tested, without a model. Stop strings need text,
which the engine's output side has: it calls finish() for those.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus
from engine.sampler import SamplerOutput


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    admitted: bool = False  # taken from the waiting queue in this step

    @property
    def start(self) -> int:
        """Position of the first token this step computes."""
        return self.request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """A step that reaches the request's last token yields logits to sample from."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_prefix_hit_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


@dataclass(slots=True)
class SchedulerUpdate:
    """What update_from_output changed, for the engine's outputs and stats."""

    sampled: list[Request] = field(default_factory=list)  # got a new token, in batch order
    finished: list[Request] = field(default_factory=list)  # ended by a token-based stop


class Scheduler:
    def __init__(
        self,
        kv_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
    ):
        self.kv = kv_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions_total = 0

    # ---------------------------------------------------------------- queue
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(
        self, request: Request, status: RequestStatus, stop_reason: int | str | None = None
    ) -> None:
        """Take a request out of the queues and give its blocks back. `stop_reason`: the
        stop string (or token) that ended it, when the caller found one."""
        request.status = status
        if stop_reason is not None:
            request.stop_reason = stop_reason
        request.finished_time = time.monotonic()
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request, reason="abort" if status is RequestStatus.FINISHED_ABORTED else "finish")

    # ---------------------------------------------------------------- one step
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                out.scheduled.append(ScheduledRequest(request, n))
                budget -= n
                i += 1
                continue
            break  # the request itself was preempted: nothing after it is left either
        return budget

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Recompute later: free its blocks and put it at the front of the queue."""
        self.running.remove(request)
        self.kv.free(request, reason="preempt")
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)
        out.preempted.append(request)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if request.waits_for_leader:
                break  # admitted next step, when the leader's prompt blocks can be shared
            # A request still owed prompt logprobs computes its whole prompt (vLLM's rule).
            reads_cache = not request.computes_prompt_logprobs
            hits = self.kv.find_cached_prefix(request) if reads_cache else []
            num_cached = len(hits) * self.kv.block_size
            n = min(request.num_tokens - num_cached, budget)
            if not self.kv.allocate_slots(request, n, hits):
                break  # no head-of-line skipping: wait for blocks to come back
            self.waiting.popleft()
            if reads_cache:
                self.kv.record_prefix_lookup(request.num_tokens, num_cached)
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, n, admitted=True))
            out.num_prefix_hit_tokens += num_cached
            budget -= n

    # ---------------------------------------------------------------- after the step
    def update_from_output(
        self, scheduler_output: SchedulerOutput, sampled: SamplerOutput
    ) -> SchedulerUpdate:
        """Apply one step's result: every scheduled request's computed tokens move on and
        its newly full blocks enter the prefix cache; each request that reached its last
        token gets its sampled token (row i of `sampled` is the i-th such request, in batch
        order) and logprobs; those that hit EOS, a stop token, max_tokens or the context
        end finish and free their blocks."""
        # Which requests sample is read before the counts move (it depends on them).
        sampling = [s.request for s in scheduler_output.scheduled if s.samples]
        if len(sampled.token_ids) != len(sampling):
            raise ValueError(f"{len(sampled.token_ids)} sampled tokens for "
                             f"{len(sampling)} sampling requests")  # fmt: skip
        for item in scheduler_output.scheduled:
            item.request.num_computed_tokens += item.num_new_tokens
            self.kv.cache_full_blocks(item.request)
        update = SchedulerUpdate(sampled=sampling)
        for row, request in enumerate(sampling):
            _append_sampled(request, sampled, row)
            status = request.check_stop()
            if status is not None:
                self.finish(request, status)
                update.finished.append(request)
        return update


def _append_sampled(request: Request, sampled: SamplerOutput, row: int) -> None:
    request.append_output_token(sampled.token_ids[row])
    if request.logprobs is not None:
        request.logprobs.append(sampled.logprobs[row])
        request.cumulative_logprob += sampled.chosen_logprobs[row]
