"""Prometheus metrics for /metrics, named as vLLM's with a `pagedesk:` prefix.

Engine state (running / waiting requests, KV cache usage, prefix cache counters) is read
when /metrics is scraped, so it is never stale; request metrics (token totals, time to
first token, inter-token latency, end-to-end latency) are recorded as requests stream.
Each app has its own registry, so several servers (tests, the GUI) can live in a process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.outputs import RequestOutput

PREFIX = "pagedesk:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)


class _EngineCollector(Collector):
    """Reads `AsyncEngine.metrics()` at scrape time: one immutable record the engine thread
    swaps after each step, so a scrape never sees half of a step."""

    def __init__(self, async_engine: Any, model_name: str):
        self.async_engine = async_engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        m = self.async_engine.metrics()
        yield self._gauge("num_requests_running", "Requests in the running batch.",
                          m.num_running)
        yield self._gauge("num_requests_waiting", "Requests waiting to be scheduled.",
                          m.num_waiting)
        yield self._gauge("kv_cache_usage_perc", "Share of KV cache blocks held by requests "
                          "(0-1).", m.kv_usage)
        yield self._counter("prefix_cache_queries", "Prompt tokens looked up in the prefix "
                            "cache.", m.prefix_queries)
        yield self._counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                            m.prefix_hits)

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family


class ServerMetrics:
    """The registry behind one server's /metrics."""

    def __init__(self, async_engine: Any, model_name: str):
        disable_created_metrics()  # no `_created` series next to every counter (as vLLM)
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(async_engine, model_name))
        labels = ["model_name"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=self.registry).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, registry=self.registry,
                             buckets=buckets).labels(model_name)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of served requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated for served "
                                         "requests.")
        self.ttft = histogram("time_to_first_token_seconds", "Time from a request's arrival "
                              "to its first generated token.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between two successive "
                             "outputs of a request.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from a request's arrival "
                             "to its end.", E2E_BUCKETS)
        self._success = Counter(PREFIX + "request_success", "Finished requests, by why they "
                                "finished.", [*labels, "finished_reason"], registry=self.registry)
        self._model_name = model_name

    def finished(self, reason: str) -> None:
        self._success.labels(self._model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self) -> RequestTracker:
        return RequestTracker(self)


class RequestTracker:
    """Records one engine request's metrics as its outputs are consumed."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.created = time.monotonic()
        self.accepted = False
        self.last_token_time: float | None = None
        self.done = False
        self._ended: set[int] = set()  # completions whose finish was counted

    def observe(self, out: RequestOutput, new_tokens: int) -> None:
        """Called for every output of the request, with the number of tokens it added."""
        now = time.monotonic()
        if not self.accepted:  # the engine took the prompt: count it once
            self.accepted = True
            self.metrics.prompt_tokens.inc(len(out.prompt_token_ids))
        if new_tokens:
            self.metrics.generation_tokens.inc(new_tokens)
            self._observe_latency(out, now)
        self._count_finishes(out)
        if out.finished:
            self._finish(out, now)

    def _observe_latency(self, out: RequestOutput, now: float) -> None:
        if self.last_token_time is None:
            first = out.metrics.time_to_first_token
            self.metrics.ttft.observe(first if first is not None else now - self.created)
        else:
            self.metrics.itl.observe(now - self.last_token_time)
        self.last_token_time = now

    def _finish(self, out: RequestOutput, now: float) -> None:
        self.done = True
        end = out.metrics.finished_time or now
        self.metrics.e2e.observe(max(end - out.metrics.arrival_time, 0.0))

    def _count_finishes(self, out: RequestOutput) -> None:
        """Each completion's finish once: a DELTA stream reports a sample that ends before
        its siblings in an earlier output than the request's last."""
        for completion in out.outputs:
            if (completion.finished or out.finished) and completion.index not in self._ended:
                self._ended.add(completion.index)
                self.metrics.finished(completion.finish_reason or "abort")

    def close(self) -> None:
        """The consumer stopped: a request that did not finish was aborted."""
        if self.accepted and not self.done:
            self.done = True
            self.metrics.finished("abort")
