"""Plain values the remote-endpoint widgets show (no Qt, no app)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RemoteMetrics:
    """One scrape of a remote's Prometheus /metrics, under vLLM's names."""

    url: str
    running: float | None = None  # vllm:num_requests_running
    waiting: float | None = None  # vllm:num_requests_waiting
    kv_usage: float | None = None  # vllm:kv_cache_usage_perc (1 = 100 %)
    prefix_hits: float | None = None  # vllm:prefix_cache_hits (tokens, cumulative)
    prefix_queries: float | None = None  # vllm:prefix_cache_queries (tokens, cumulative)
    generation_tokens: float | None = None  # vllm:generation_tokens (cumulative)
    generation_tps: float | None = None  # its rate between the last two scrapes
    error: str | None = None  # why there are no numbers (unreachable, no /metrics)

    @property
    def prefix_hit_rate(self) -> float | None:
        if not self.prefix_queries or self.prefix_hits is None:
            return None
        return self.prefix_hits / self.prefix_queries

    def describe(self) -> str:
        """One line: what the remote is doing now."""
        if self.error:
            return self.error
        parts = []
        if self.running is not None:
            parts.append(f"running {self.running:.0f}")
        if self.waiting is not None:
            parts.append(f"waiting {self.waiting:.0f}")
        if self.kv_usage is not None:
            parts.append(f"KV cache {self.kv_usage:.1%}")
        if self.prefix_hit_rate is not None:
            parts.append(f"prefix hits {self.prefix_hit_rate:.1%}")
        if self.generation_tps is not None:
            parts.append(f"generation {self.generation_tps:.1f} tok/s")
        return " · ".join(parts) or "no vLLM metrics"
