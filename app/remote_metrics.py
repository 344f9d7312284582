"""A remote's Prometheus /metrics, read under vLLM's names and polled about once a second.

The text is fetched in the app's asyncio loop (non-blocking) and parsed by prometheus_client's
own text parser in a worker thread, so neither the network nor the parse holds the UI thread.
Series with several label sets (vLLM labels by model and engine) are summed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from app.remote_backend import RemoteEndpoint, RemoteError
from ui.remote_types import RemoteMetrics


POLL_INTERVAL_S = 1.0
# RemoteMetrics field -> the sample name in the exposition text
SAMPLES = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv_usage": "vllm:kv_cache_usage_perc",
    "prefix_hits": "vllm:prefix_cache_hits_total",
    "prefix_queries": "vllm:prefix_cache_queries_total",
    "generation_tokens": "vllm:generation_tokens_total",
}


def parse_metrics(url: str, text: str) -> RemoteMetrics:
    """The vLLM gauges and counters found in `text` (absent ones stay None)."""
    wanted = {sample: name for name, sample in SAMPLES.items()}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = wanted.get(sample.name)
            if name is not None:
                sums[name] = sums.get(name, 0.0) + float(sample.value)
    return RemoteMetrics(url=url, **sums)


def with_rate(new: RemoteMetrics, old: RemoteMetrics | None, dt: float) -> RemoteMetrics:
    """`new` with generation tok/s from the counter's growth since `old`, `dt` seconds ago."""
    if old is None or dt <= 0 or new.generation_tokens is None or old.generation_tokens is None:
        return new
    grown = max(0.0, new.generation_tokens - old.generation_tokens)  # a restart resets it
    return replace(new, generation_tps=grown / dt)


class MetricsPoller:
    """Polls one endpoint's /metrics every `interval` s and hands each RemoteMetrics to
    `on_metrics` (in the loop's thread); stops when cancelled or when the server has none."""

    def __init__(self, endpoint: RemoteEndpoint, on_metrics: Callable[[RemoteMetrics], None],
                 interval: float = POLL_INTERVAL_S):  # fmt: skip
        self.endpoint = endpoint
        self.on_metrics = on_metrics
        self.interval = interval
        self.latest: RemoteMetrics | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        last_time = None
        while True:
            fresh = await self._scrape()
            now = time.monotonic()
            if fresh.error is None:
                dt = now - last_time if last_time is not None else 0.0
                fresh = with_rate(fresh, self.latest if self.latest and not self.latest.error
                                  else None, dt)  # fmt: skip
                last_time = now
            else:
                last_time = None  # the next rate starts afresh
            self.latest = fresh
            self.on_metrics(fresh)
            await asyncio.sleep(self.interval)

    async def _scrape(self) -> RemoteMetrics:
        url = self.endpoint.base_url
        try:
            text = await self.endpoint.fetch_metrics_text()
        except RemoteError as exc:
            return RemoteMetrics(url, error=f"metrics unavailable: {exc}")
        except Exception as exc:  # whatever else fails, the next poll tries again
            return RemoteMetrics(url, error=f"metrics unavailable: {type(exc).__name__}: {exc}")
        if text is None:
            return RemoteMetrics(url, error="this server exposes no Prometheus /metrics")
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, parse_metrics, url, text)
        except ValueError as exc:  # not Prometheus text
            return RemoteMetrics(url, error=f"its /metrics is not Prometheus text ({exc})")
