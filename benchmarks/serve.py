"""Online serving benchmark, like `vllm bench serve`: concurrent streaming clients against
the OpenAI-compatible server, reporting throughput, TTFT and inter-token latency.

Each client sends seeded random-word prompts through the official `openai` client with
streaming on and EOS ignored (so every request produces exactly --output-len tokens), and
times the chunks as they arrive. Token counts come from the server's usage block.

    .venv/bin/python benchmarks/serve.py                        # SmolLM2 in-process, 64 prompts, 16 clients
    .venv/bin/python benchmarks/serve.py --model DIR --num-prompts 32 --concurrency 8
    .venv/bin/python benchmarks/serve.py --base-url http://127.0.0.1:8000   # a running `pagedesk serve`

It only talks to loopback addresses, sends a bounded number of requests, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# `python benchmarks/serve.py` puts benchmarks/ first on sys.path, not the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai  # noqa: E402

MAX_PROMPTS = 10_000
WORDS = ("the cache holds blocks of keys and values for every token a request has seen so far "
         "while the scheduler batches prefill and decode steps under one token budget and "
         "frees memory when a sequence finishes or is preempted by a newer one").split()


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds from sending to the first generated text
    latency: float = 0.0  # seconds from sending to the last chunk
    itl: list[float] = field(default_factory=list)  # gaps between chunks carrying text
    error: str = ""


def make_prompts(num: int, input_len: int, seed: int) -> list[str]:
    """`num` distinct prompts of about `input_len` words (so distinct prefixes: the
    benchmark measures serving, not the prefix cache)."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(input_len)) for i in range(num)]


async def one_request(client: openai.AsyncOpenAI, args: argparse.Namespace, model: str,
                      prompt: str) -> RequestResult:
    common = dict(model=model, max_tokens=args.output_len, temperature=args.temperature, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    start = time.perf_counter()
    result, last = RequestResult(ok=False), None
    try:
        if args.endpoint == "chat":
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                result.prompt_tokens = chunk.usage.prompt_tokens
                result.output_tokens = chunk.usage.completion_tokens
            if not _has_text(chunk):
                continue
            if last is None:
                result.ttft = now - start
            else:
                result.itl.append(now - last)
            last = now
        result.latency = time.perf_counter() - start
        result.ok = result.output_tokens > 0
    except openai.OpenAIError as exc:
        result.error = repr(exc)
    return result


def _has_text(chunk) -> bool:
    for choice in chunk.choices:
        text = choice.delta.content if hasattr(choice, "delta") else choice.text
        if text:
            return True
    return False


async def run_clients(base_url: str, args: argparse.Namespace) -> tuple[list[RequestResult], float]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=args.api_key or "unused",
                                  max_retries=0, timeout=args.request_timeout) as client:
        model = args.served_model or (await client.models.list()).data[0].id
        await one_request(client, args, model, "warm up")  # first-call costs stay out of the timing
        prompts = make_prompts(args.num_prompts, args.input_len, args.seed)
        limit = asyncio.Semaphore(args.concurrency)

        async def limited(prompt: str) -> RequestResult:
            async with limit:
                return await one_request(client, args, model, prompt)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        return results, time.perf_counter() - start


def summarize(results: list[RequestResult], duration: float) -> dict[str, float]:
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    ttft = [r.ttft * 1000 for r in done]
    itl = [gap * 1000 for r in done for gap in r.itl]
    tpot = [(r.latency - r.ttft) * 1000 / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    summary = {
        "successful_requests": len(done), "failed_requests": len(results) - len(done),
        "duration_s": duration, "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(done) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
    }
    for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl)):
        summary.update(_stats(name, values))
    return summary


def _stats(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {f"mean_{name}": 0.0, f"median_{name}": 0.0, f"p99_{name}": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {f"mean_{name}": statistics.fmean(values), f"median_{name}": statistics.median(values),
            f"p99_{name}": p99}


def print_summary(s: dict[str, float], label: str) -> None:
    rows = [
        ("Successful requests:", s["successful_requests"], "d"),
        ("Failed requests:", s["failed_requests"], "d"),
        ("Benchmark duration (s):", s["duration_s"], ".2f"),
        ("Total input tokens:", s["total_input_tokens"], "d"),
        ("Total generated tokens:", s["total_output_tokens"], "d"),
        ("Request throughput (req/s):", s["request_throughput"], ".2f"),
        ("Output token throughput (tok/s):", s["output_throughput"], ".2f"),
        ("Total token throughput (tok/s):", s["total_token_throughput"], ".2f"),
    ]
    print(f"{' Serving Benchmark Result ':=^50}")
    print(label)
    for title, value, fmt in rows:
        print(f"{title:<40}{value:<10{fmt}}")
    sections = (("ttft_ms", "Time to First Token"),
                ("tpot_ms", "Time per Output Token (excl. 1st token)"), ("itl_ms", "Inter-token Latency"))
    for key, title in sections:
        print(f"{title:-^50}")
        short = key.split("_")[0].upper()
        for stat, name in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            print(f"{name + ' ' + short + ' (ms):':<40}{s[stat + '_' + key]:<10.2f}")
    print("=" * 50)


def start_local_server(args: argparse.Namespace):
    """An engine and a server in this process, on 127.0.0.1 and a free port."""
    from engine import AsyncEngine, EngineConfig
    from engine.server import start_server

    engine = AsyncEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype,
                                      max_num_seqs=args.max_num_seqs))
    return engine, start_server(engine, host="127.0.0.1", port=0)


def check_base_url(url: str) -> str:
    from engine.server import is_loopback  # the server's own rule for what is local

    host = urlparse(url).hostname or ""
    if not is_loopback(host):
        raise SystemExit(f"--base-url must be a loopback address (127.0.0.1, localhost, ::1), got {url!r}")
    return url.rstrip("/").removesuffix("/v1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="a running server (loopback only); default: start one")
    p.add_argument("--model", default=None, help="in-process: the model to load (default: bundled SmolLM2)")
    p.add_argument("--served-model", default=None, help="the `model` field to send (default: the server's first)")
    p.add_argument("--api-key", default=os.environ.get("PAGEDESK_API_KEY"))
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16, help="clients with a request in flight")
    p.add_argument("--input-len", type=int, default=64, help="words per prompt (about 1-2 tokens each)")
    p.add_argument("--output-len", type=int, default=64, help="tokens generated per request")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    if not 1 <= args.num_prompts <= MAX_PROMPTS:
        p.error(f"--num-prompts must be in [1, {MAX_PROMPTS}]")
    if args.concurrency < 1 or args.output_len < 1 or args.input_len < 1:
        p.error("--concurrency, --input-len and --output-len must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    engine = handle = None
    if args.base_url:
        base_url = check_base_url(args.base_url)
    else:
        engine, handle = start_local_server(args)
        base_url = handle.url
    try:
        results, duration = asyncio.run(run_clients(base_url, args))
    finally:
        if handle is not None:
            handle.stop()
            engine.shutdown()
    summary = summarize(results, duration)
    label = (f"{args.endpoint}, {args.num_prompts} prompts x ~{args.input_len} words -> "
             f"{args.output_len} tokens, concurrency {args.concurrency}, {base_url}")
    print_summary(summary, label)
    failures = [r.error for r in results if not r.ok]
    if failures:
        print(f"first failure: {failures[0]}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
