"""Per-step records: the numbers for the throughput panel and the benchmarks, and the
batch composition for the learner's timeline (which request did what in this step)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StepKind(str, enum.Enum):
    """What a scheduled request computed in one step."""

    PREFILL = "prefill"  # its whole (rest of the) prompt in this one step
    CHUNKED_PREFILL = "chunked_prefill"  # one chunk of a prompt that spans several steps
    DECODE = "decode"  # the K/V of its last sampled token, to sample the next one
    RECOMPUTE = "recompute"  # prompt + earlier outputs again, after a preemption


@dataclass(frozen=True, slots=True)
class ScheduledEntry:
    """One request in one step's batch."""

    request_id: str  # the scheduler's id (a sample of an n > 1 request ends in "#i")
    parent_id: str  # the id the caller gave add_request / generate
    num_new_tokens: int
    kind: StepKind
    num_computed_before: int  # tokens already in the cache before this step
    sampled: bool  # the step reached its last token and sampled a new one


@dataclass(frozen=True, slots=True)
class StepStats:
    step: int
    prefill_tokens: int  # prompt (or recomputed) tokens computed this step
    decode_tokens: int  # tokens of requests generating their next token
    batch_size: int  # requests in this step's forward pass
    step_seconds: float
    num_running: int
    num_waiting: int
    num_preemptions: int  # requests preempted this step
    prefix_cache_hit_tokens: int  # prompt tokens found in the prefix cache this step
    kv_usage: float  # share of blocks held by requests after the step
    finished_time: float  # time.monotonic() at the end of the step
    attention_backend: str = "torch"  # which kernels ran: "torch" or "triton"
    # The batch, for the timeline: every scheduled request, in batch order.
    scheduled: tuple[ScheduledEntry, ...] = ()
    preempted: tuple[str, ...] = ()  # request ids preempted this step (recomputed later)
    finished: tuple[str, ...] = ()  # request ids that finished (or were aborted) this step
    waiting: tuple[str, ...] = ()  # request ids still waiting after the step
    # Latencies of this step's tokens, for the TTFT / inter-token charts (seconds).
    time_to_first_token: tuple[float, ...] = ()  # requests whose first token came this step
    inter_token_latency: tuple[float, ...] = ()  # the others that sampled: since their last token

    @property
    def tokens_per_second(self) -> float:
        total = self.prefill_tokens + self.decode_tokens
        return total / self.step_seconds if self.step_seconds > 0 else 0.0

    @property
    def start_time(self) -> float:
        return self.finished_time - self.step_seconds
