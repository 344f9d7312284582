"""Per-step statistics for the GUI's throughput panel and for the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def tokens_per_second(self) -> float:
        total = self.prefill_tokens + self.decode_tokens
        return total / self.step_seconds if self.step_seconds > 0 else 0.0
