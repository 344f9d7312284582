"""Prometheus metrics for /metrics under vLLM's names, labels and buckets, so that vLLM's
Grafana dashboards and tools read a pagedesk server as they are. What only pagedesk has is
named `pagedesk:`.

Engine state (running / waiting requests, KV cache usage, prefix cache and preemption
counters) is read when /metrics is scraped, so it is never stale; request metrics (token
totals, time to first token, inter-token latency, the phases of each request) are
recorded as requests stream. Each app has its own registry, so several servers (tests,
the GUI) can live in one process.

vLLM labels every series with `model_name` and `engine` (the engine core's index); this
server has one engine, "0". Request histograms count one observation per engine request
(one per prompt; its n samples together), where vLLM counts each sample.
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

from engine.outputs import RequestMetrics, RequestOutput

VLLM = "vllm:"
PAGEDESK = "pagedesk:"
LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"
FINISHED_REASONS = ("stop", "length", "abort")  # pre-created at 0, as vLLM does
# vLLM's buckets (vllm/v1/metrics/buckets.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


def token_buckets(max_model_len: int) -> tuple[int, ...]:
    """vLLM's 1-2-5 series up to the context length: 1, 2, 5, 10, 20, 50, ..."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return tuple(buckets)
            buckets.append(mantissa * scale)
        scale *= 10


class _EngineCollector(Collector):
    """Reads `AsyncEngine.metrics()` at scrape time: one immutable record the engine thread
    swaps after each step, so a scrape never sees half of a step."""

    def __init__(self, async_engine: Any, model_name: str):
        self.async_engine = async_engine
        self.labels = [model_name, ENGINE_INDEX]

    def collect(self) -> Iterator[Metric]:
        m = self.async_engine.metrics()
        yield self._family(GaugeMetricFamily, VLLM + "num_requests_running",
                           "Number of requests in model execution batches.", m.num_running)
        yield self._family(GaugeMetricFamily, VLLM + "num_requests_waiting",
                           "Number of requests waiting to be processed.", m.num_waiting)
        yield self._family(GaugeMetricFamily, VLLM + "kv_cache_usage_perc",
                           "KV-cache usage. 1 means 100 percent usage.", m.kv_usage)
        yield self._family(CounterMetricFamily, VLLM + "prefix_cache_queries",
                           "Prefix cache queries, in terms of number of queried tokens.",
                           m.prefix_queries)
        yield self._family(CounterMetricFamily, VLLM + "prefix_cache_hits",
                           "Prefix cache hits, in terms of number of cached tokens.", m.prefix_hits)
        yield self._family(CounterMetricFamily, VLLM + "num_preemptions",
                           "Cumulative number of preemption from the engine.", m.num_preemptions)
        yield self._family(CounterMetricFamily, PAGEDESK + "engine_steps",
                           "Engine steps run (forward passes).", m.num_steps)

    def _family(self, kind: type, name: str, doc: str, value: float) -> Metric:
        family = kind(name, doc, labels=list(LABELS))
        family.add_metric(self.labels, value)
        return family


class ServerMetrics:
    """The registry behind one server's /metrics."""

    def __init__(self, async_engine: Any, model_name: str):
        disable_created_metrics()  # no `_created` series next to every counter (as vLLM)
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(async_engine, model_name))
        self._labels = (model_name, ENGINE_INDEX)
        tokens = token_buckets(async_engine.max_model_len)
        self.prompt_tokens = self._counter("prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_cached = self._counter(
            "prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        self.generation_tokens = self._counter("generation_tokens",
                                               "Number of generation tokens processed.")
        self.request_prompt_tokens = self._histogram(
            "request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.request_generation_tokens = self._histogram(
            "request_generation_tokens", "Number of generation tokens processed.", tokens)
        self.request_params_n = self._histogram(
            "request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.request_params_max_tokens = self._histogram(
            "request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokens)
        self.ttft = self._histogram("time_to_first_token_seconds",
                                    "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = self._histogram("inter_token_latency_seconds",
                                   "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.time_per_output_token = self._histogram(
            "request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.phases = {  # RequestMetrics' intervals, by vLLM's histogram names
            phase: self._histogram(f"{name}_seconds", doc, REQUEST_LATENCY_BUCKETS)
            for phase, name, doc in (
                ("e2e", "e2e_request_latency", "Histogram of e2e request latency in seconds."),
                ("queue", "request_queue_time", "Histogram of time spent in WAITING phase "
                 "for request."),
                ("inference", "request_inference_time", "Histogram of time spent in RUNNING "
                 "phase for request."),
                ("prefill", "request_prefill_time", "Histogram of time spent in PREFILL phase "
                 "for request."),
                ("decode", "request_decode_time", "Histogram of time spent in DECODE phase "
                 "for request."),
            )
        }
        self.request_num_preemptions = self._histogram(
            "request_num_preemptions", "Histogram of the number of times a request was "
            "preempted.", PREEMPTION_BUCKETS)
        self._success = Counter(VLLM + "request_success", "Count of successfully processed "
                                "requests.", [*LABELS, "finished_reason"], registry=self.registry)
        for reason in FINISHED_REASONS:
            self._success.labels(*self._labels, reason)

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(VLLM + name, doc, LABELS, registry=self.registry).labels(*self._labels)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(VLLM + name, doc, LABELS, registry=self.registry,
                         buckets=buckets).labels(*self._labels)

    def finished(self, reason: str) -> None:
        self._success.labels(*self._labels, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self, params: Any = None) -> RequestTracker:
        """A tracker for one engine request; `params` (its SamplingParams) for the
        request_params_* histograms."""
        return RequestTracker(self, params)


class RequestTracker:
    """Records one engine request's metrics as its outputs are consumed."""

    def __init__(self, metrics: ServerMetrics, params: Any = None):
        self.metrics = metrics
        self.params = params
        self.created = time.monotonic()
        self.accepted = False
        self.last_token_time: float | None = None
        self.num_generated = 0
        self.done = False
        self._ended: set[int] = set()  # completions whose finish was counted

    def observe(self, out: RequestOutput, new_tokens: int) -> None:
        """Called for every output of the request, with the number of tokens it added."""
        now = time.monotonic()
        if not self.accepted:  # the engine took the prompt: count it once
            self._accept(out)
        if new_tokens:
            self.num_generated += new_tokens
            self.metrics.generation_tokens.inc(new_tokens)
            self._observe_latency(out, now)
        self._count_finishes(out)
        if out.finished:
            self._finish(out, now)

    def _accept(self, out: RequestOutput) -> None:
        m = self.metrics
        self.accepted = True
        m.prompt_tokens.inc(len(out.prompt_token_ids))
        m.prompt_tokens_cached.inc(out.num_cached_tokens)
        m.request_prompt_tokens.observe(len(out.prompt_token_ids))
        n, max_tokens = getattr(self.params, "n", None), getattr(self.params, "max_tokens", None)
        if n is not None:
            m.request_params_n.observe(n)
        if max_tokens:
            m.request_params_max_tokens.observe(max_tokens)

    def _observe_latency(self, out: RequestOutput, now: float) -> None:
        """TTFT once, then an inter-token latency per engine step, from the engine's own
        token times (not when this consumer happened to wake). An output that stands for
        several steps (the consumer fell behind and the stream merged them) counts each
        step, sharing the time between them evenly, as vLLM counts per engine iteration."""
        t = out.metrics
        steps = max((len(c.delta_token_ids) for c in out.outputs), default=0) or 1
        latest = t.last_token_time if t.last_token_time is not None else now
        if self.last_token_time is None:
            first = t.time_to_first_token
            self.metrics.ttft.observe(first if first is not None else now - self.created)
            self.last_token_time = t.first_token_time if t.first_token_time is not None else now
            steps -= 1
        if steps > 0:
            gap = max(latest - self.last_token_time, 0.0) / steps
            for _ in range(steps):
                self.metrics.itl.observe(gap)
        self.last_token_time = latest

    def _finish(self, out: RequestOutput, now: float) -> None:
        self.done = True
        m = self.metrics
        phases = request_phases(out.metrics, now)
        for phase, seconds in phases.items():
            m.phases[phase].observe(seconds)
        m.request_generation_tokens.observe(self.num_generated)
        m.request_num_preemptions.observe(out.metrics.num_preemptions)
        # vLLM's: the first token belongs to the prefill
        later = self.num_generated - 1
        m.time_per_output_token.observe(phases["decode"] / later if later > 0 else 0.0)

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


def request_phases(t: RequestMetrics, now: float) -> dict[str, float]:
    """vLLM's intervals of a finished request (seconds): e2e = arrival to end; queue =
    arrival to first scheduled; prefill = first scheduled to first token; decode = first
    to last token; inference = first scheduled to last token. A time the request never
    reached (no token: aborted while waiting) counts as the phase before it ending."""
    end = t.finished_time or now
    scheduled = t.first_scheduled_time if t.first_scheduled_time is not None else end
    first = t.first_token_time if t.first_token_time is not None else end
    last = t.last_token_time if t.last_token_time is not None else first
    return {
        "e2e": max(end - t.arrival_time, 0.0),
        "queue": max(scheduled - t.arrival_time, 0.0),
        "prefill": max(first - scheduled, 0.0),
        "decode": max(last - first, 0.0),
        "inference": max(last - scheduled, 0.0),
    }
