"""Soak benchmark: many concurrent streaming clients for a few minutes against `pagedesk
serve`, then checks that nothing was left behind.

The server runs in a subprocess (the bundled SmolLM2 unless --model), so its memory is
measured alone. Each of --clients clients sends streaming requests back to back until
--seconds have passed: seeded random-word prompts, half chat and half completions, 16-64
new tokens each, through the official `openai` client; with --disconnect-fraction, that
share of them hangs up mid-stream. Reported: requests completed, errors, p50/p99 time to
first token and inter-token latency, the server's RSS after a warm-up round and at the
end (growth must stay under --max-rss-growth), and, from /metrics once the clients are
done, that no request is left running or waiting and every KV cache block is free.

    .venv/bin/python benchmarks/soak.py                      # 64 clients, 180 s, SmolLM2
    .venv/bin/python benchmarks/soak.py --seconds 60 --clients 32 --disconnect-fraction 0.2

It binds to 127.0.0.1 only, stops by itself, and exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the cache holds blocks of keys and values for every token a request has seen so far "
         "while the scheduler batches prefill and decode steps under one token budget").split()


@dataclass
class Result:
    ok: bool = False
    hung_up: bool = False  # the client left on purpose
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    error: str = ""


# ---------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "engine.server", "--host", "127.0.0.1", "--port", str(port),
               "--max-num-seqs", str(args.clients), "--log-level", "warning"]
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (Linux: /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RSSSampler:
    """Samples a process's RSS every `interval` seconds in a thread: (seconds, bytes)."""

    def __init__(self, pid: int, interval: float):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic() - start, rss_bytes(self.pid)))

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if "le" not in s.labels}


def wait_idle(url: str, timeout: float) -> dict[str, float]:
    """/metrics once no request is running or waiting (aborts land at the next step)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0:
            return m
        if time.monotonic() > deadline:
            return m
        time.sleep(0.2)


# ---------------------------------------------------------------- the clients
async def one_request(client: openai.AsyncOpenAI, model: str, rng: random.Random,
                      hang_up_after: int | None) -> Result:
    prompt = f"{rng.randrange(10**9)}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 48)))
    common = dict(model=model, max_tokens=rng.randint(16, 64), temperature=0.8,
                  seed=rng.randrange(2**31), stream=True, stream_options={"include_usage": True})
    result, last, chunks, usage = Result(), None, 0, None
    start = time.perf_counter()
    try:
        if rng.random() < 0.5:
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        # aclosing: a loop left early closes the client's chunk iterator here, not in
        # whichever thread the garbage collector happens to run in.
        async with stream, aclosing(aiter(stream)) as arriving:
            async for chunk in arriving:
                usage = chunk.usage or usage
                if not _text_of(chunk):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last, chunks = now, chunks + 1
                if hang_up_after is not None and chunks >= hang_up_after:
                    result.hung_up = True
                    break  # leaving the `async with` closes the connection mid-stream
        # A stream that ends without its usage chunk was cut off (an error event raises).
        result.ok = result.hung_up or usage is not None
        if not result.ok:
            result.error = "a stream that ended without its usage chunk"
    except openai.OpenAIError as exc:
        result.error = repr(exc)
    return result


def _text_of(chunk) -> str:
    return "".join((c.delta.content or "") if hasattr(c, "delta") else c.text for c in chunk.choices)


async def client_loop(client: openai.AsyncOpenAI, model: str, seed: int, until: float,
                      disconnect_fraction: float) -> list[Result]:
    rng = random.Random(seed)
    results = []
    while not results or time.monotonic() < until:  # one request at least
        hang_up = rng.randint(1, 8) if rng.random() < disconnect_fraction else None
        results.append(await one_request(client, model, rng, hang_up))
    return results


async def run_clients(url: str, args: argparse.Namespace, seconds: float, seed: int) -> list[Result]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                  timeout=args.request_timeout,
                                  http_client=openai.DefaultAsyncHttpxClient(
                                      limits=httpx.Limits(max_connections=args.clients))) as client:
        model = (await client.models.list()).data[0].id
        until = time.monotonic() + seconds
        per_client = await asyncio.gather(*(
            client_loop(client, model, seed * 1000 + i, until, args.disconnect_fraction)
            for i in range(args.clients)))
    return [r for results in per_client for r in results]


# ---------------------------------------------------------------- the report
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def summarize(results: list[Result], rss: tuple[int, int], end: dict[str, float],
              seconds: float) -> dict[str, float]:
    done = [r for r in results if r.ok and not r.hung_up]
    ttft = [r.ttft * 1000 for r in results if r.ttft is not None]
    itl = [gap * 1000 for r in results for gap in r.itl]
    return {
        "seconds": seconds, "requests_completed": len(done),
        "requests_hung_up": sum(r.hung_up for r in results),
        "errors": sum(not r.ok for r in results),
        "p50_ttft_ms": statistics.median(ttft) if ttft else float("nan"),
        "p99_ttft_ms": percentile(ttft, 0.99),
        "p50_itl_ms": statistics.median(itl) if itl else float("nan"),
        "p99_itl_ms": percentile(itl, 0.99),
        "rss_start_mib": rss[0] / 2**20, "rss_end_mib": rss[1] / 2**20,
        "rss_growth_pct": 100 * (rss[1] - rss[0]) / rss[0],
        "end_running": end["vllm:num_requests_running"], "end_waiting": end["vllm:num_requests_waiting"],
        "end_kv_cache_usage_perc": end["vllm:kv_cache_usage_perc"],
    }


def failed_checks(s: dict[str, float], max_rss_growth: float) -> list[str]:
    checks = {
        "no errors": s["errors"] == 0,
        f"RSS growth under {max_rss_growth:g}%": s["rss_growth_pct"] < max_rss_growth,
        "no request left running or waiting": s["end_running"] == s["end_waiting"] == 0,
        "every KV cache block free": s["end_kv_cache_usage_perc"] == 0,
    }
    return [name for name, passed in checks.items() if not passed]


def print_report(s: dict[str, float], failures: list[str], label: str) -> None:
    print(f"{' Soak Benchmark Result ':=^60}\n{label}")
    for key, value in s.items():
        print(f"{key + ':':<32}{value:.2f}" if isinstance(value, float) else f"{key + ':':<32}{value}")
    print("checks: " + ("all passed" if not failures else "FAILED: " + ", ".join(failures)))
    print("=" * 60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the model to serve (default: bundled SmolLM2)")
    p.add_argument("--clients", type=int, default=64, help="concurrent streaming clients")
    p.add_argument("--seconds", type=float, default=180.0, help="how long the clients keep sending")
    p.add_argument("--warmup-seconds", type=float, default=30.0,
                   help="the same load before the measured part (RSS growth counts from after it)")
    p.add_argument("--disconnect-fraction", type=float, default=0.0,
                   help="share of requests whose client hangs up mid-stream")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="percent, warm-up to end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 1024 or not 0 < args.seconds <= 3600:
        p.error("--clients must be in [1, 1024] and --seconds in (0, 3600]")
    if not 0 <= args.disconnect_fraction <= 1:
        p.error("--disconnect-fraction must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        wait_healthy(url, server, args.startup_timeout)
        # A warm-up of the same load first: the first batches of each shape grow the
        # allocators' pools and the engine fills its bounded step history, which is not a
        # leak. RSS growth is measured from after it.
        asyncio.run(run_clients(url, args, seconds=args.warmup_seconds, seed=args.seed + 1))
        wait_idle(url, timeout=60)
        rss_start = rss_bytes(server.pid)
        started = time.monotonic()
        with RSSSampler(server.pid, interval=max(args.seconds / 12, 1.0)) as sampler:
            results = asyncio.run(run_clients(url, args, seconds=args.seconds, seed=args.seed))
        seconds = time.monotonic() - started
        end = wait_idle(url, timeout=60)
        rss_end = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    summary = summarize(results, (rss_start, rss_end), end, seconds)
    failures = failed_checks(summary, args.max_rss_growth)
    label = (f"{args.clients} streaming clients for {args.seconds:g} s, disconnect fraction "
             f"{args.disconnect_fraction:g}, model {args.model or 'bundled SmolLM2'}, {url}")
    print_report(summary, failures, label)
    print("server RSS during the run (s: MiB): " + ", ".join(
        f"{t:.0f}: {b / 2**20:.0f}" for t, b in sampler.samples))
    errors = [r.error for r in results if not r.ok]
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **summary}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
