"""Tensor parallelism on the CPU: tok/s at TP=1 against TP=2 (gloo, 2 processes).

The bundled SmolLM2-135M (or --model), float32, greedy, EOS ignored: one request alone
(batch 1) and --batch requests at once, --output-tokens each (default 64). For each TP size
it builds the engine (start-up timed: TP=2 spawns and loads a worker), warms up untimed on
a short request, then times the whole generation and reports generated tokens per second,
and the mean step time. Each size runs in this process one after the other; the worker of
TP=2 runs on the same cores as rank 0.

    .venv/bin/python benchmarks/tensor_parallel.py
    .venv/bin/python benchmarks/tensor_parallel.py --sizes 1 2 --batch 8 --output-tokens 32

On a 2-core machine TP=2 is not expected to be faster: both ranks share the cores that
TP=1 had to itself, and each layer adds two all-reduces over gloo (loopback TCP). It is a
correctness path for models too large for one GPU, where each rank has its own device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0], where benchmarks/kernels.py would shadow the
# kernels package (the spawned worker inherits this path too): the repo root instead.
REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "benchmarks":
    sys.path[0] = str(REPO_ROOT)

from engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def measure(tp: int, model: str | None, batch: int, output_tokens: int) -> dict:
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=model, device="cpu", dtype="float32",
                                    tensor_parallel_size=tp, kv_cache_bytes=256 << 20))  # fmt: skip
    startup = time.perf_counter() - started
    try:
        _generate(engine, 1, 4)  # warm-up, untimed
        return {"tp": tp, "startup_s": startup,
                "batch1": _generate(engine, 1, output_tokens),
                f"batch{batch}": _generate(engine, batch, output_tokens)}  # fmt: skip
    finally:
        engine.release()


def _generate(engine: LLMEngine, batch: int, output_tokens: int) -> dict:
    params = SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", f"{PROMPT} ({i})", params)
    steps, started = 0, time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    seconds = time.perf_counter() - started
    return {"tok_s": batch * output_tokens / seconds, "step_ms": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--output-tokens", type=int, default=64)
    args = parser.parse_args()
    rows = [measure(tp, args.model, args.batch, args.output_tokens) for tp in args.sizes]
    key = f"batch{args.batch}"
    print(f"{'TP':>3} {'start-up s':>10} {'batch 1 tok/s':>14} {'step ms':>8} "
          f"{f'batch {args.batch} tok/s':>15} {'step ms':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['tp']:>3} {r['startup_s']:>10.1f} {r['batch1']['tok_s']:>14.1f} "
              f"{r['batch1']['step_ms']:>8.1f} {r[key]['tok_s']:>15.1f} {r[key]['step_ms']:>8.1f}")


if __name__ == "__main__":  # the workers are spawned: they re-import this file
    main()
