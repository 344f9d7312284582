"""The vLLM peer's worker: runs one benchmark job through vLLM itself, in its own venv.

    .venv-vllm/bin/python benchmarks/peer_vllm.py JOB.json RESULT.json

benchmarks/throughput.py and benchmarks/latency.py write the job, start this script in a
fresh process (one per round) and read the result; build the venv with
`bash scripts/vllm_peer.sh`. This file imports nothing from the project: the job is plain
JSON, so the peer venv needs none of pagedesk's packages and pagedesk's none of vLLM's.

Job: {"model": Hugging Face folder, "dtype": "float32" | "bfloat16", "mode": "throughput" |
"latency", "requests": [{"prompt_token_ids": [...], "max_tokens": n}, ...], "warmup": [same
shape, run untimed first], "max_model_len": 2048 (optional), "seed": 0 (optional)}. Every
request is greedy with EOS ignored, so it yields exactly max_tokens tokens.

- throughput: one `LLM.generate` over all requests (vLLM's own continuous batching), timed.
- latency: the requests one at a time (batch 1) through `LLMEngine.add_request` and its
  `step()` loop; the time each new token reaches the caller is recorded, so per request:
  TTFT (from add_request to the first token) and the inter-token latencies.

Result: {"backend": "vllm-cpu", "vllm_version", "mode", "seconds" (the timed part),
"output_tokens", "token_ids" (per request, in job order), "startup_seconds" (engine start,
torch.compile included), "warmup_seconds", "per_request" (latency mode: "ttft_s", "itl_s"),
"notes", "error"}. On failure the result still gets written, with "error" set.

vLLM compiles its model with torch.compile on every start on this CPU (~90 s, outside the
timed part). Its CPU defaults are kept (block size 128, 4096 batched tokens per step, 256
sequences) except max_model_len. Environment set here unless already set:
VLLM_CPU_OMP_THREADS_BIND=0-(cores-1) (vLLM's `auto` gives its worker one core fewer),
VLLM_CPU_KVCACHE_SPACE=1 (GiB).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BACKEND = "vllm-cpu"


def set_environment() -> None:
    """Before vllm is imported: it reads these at import / engine start."""
    cores = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never wait on a network
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sampling_params(max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def engine_kwargs(job: dict[str, Any]) -> dict[str, Any]:
    return dict(model=job["model"], dtype=job.get("dtype", "float32"),
                max_model_len=int(job.get("max_model_len", 2048)), seed=int(job.get("seed", 0)))


# ---------------------------------------------------------------------------- throughput
def run_throughput(job: dict[str, Any], result: dict[str, Any]) -> None:
    from vllm import LLM

    def generate(requests: list[dict[str, Any]]) -> list[list[int]]:
        prompts = [{"prompt_token_ids": list(r["prompt_token_ids"])} for r in requests]
        params = [sampling_params(int(r["max_tokens"])) for r in requests]
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    start = time.perf_counter()
    llm = LLM(**engine_kwargs(job))
    result["startup_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    generate(job.get("warmup") or [])
    result["warmup_seconds"] = round(time.perf_counter() - start, 1)

    start, cpu = time.perf_counter(), time.process_time()
    tokens = generate(job["requests"])
    result["seconds"] = time.perf_counter() - start
    result["token_ids"] = tokens
    result["output_tokens"] = sum(len(t) for t in tokens)
    result["notes"].update(cpu_seconds_main_process=round(time.process_time() - cpu, 1),
                           load_avg_1m=round(os.getloadavg()[0], 2))


# ---------------------------------------------------------------------------- latency
def stream_one(engine: Any, request_id: str,
               request: dict[str, Any]) -> tuple[list[int], list[float], float]:
    """One request alone through the step loop: (its tokens, the perf_counter time each new
    token was seen, the time just before add_request)."""
    arrival = time.perf_counter()
    engine.add_request(request_id, {"prompt_token_ids": list(request["prompt_token_ids"])},
                       sampling_params(int(request["max_tokens"])))
    seen: list[int] = []
    stamps: list[float] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id != request_id:
                continue
            now = time.perf_counter()
            ids = list(out.outputs[0].token_ids)  # cumulative (vLLM's default output kind)
            if len(ids) > len(seen):
                stamps.extend([now] * (len(ids) - len(seen)))  # >1 new at once: same time
                seen = ids
    return seen, stamps, arrival


def run_latency(job: dict[str, Any], result: dict[str, Any]) -> None:
    from vllm import EngineArgs, LLMEngine

    start = time.perf_counter()
    engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs(job)))
    result["startup_seconds"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    for i, request in enumerate(job.get("warmup") or []):
        stream_one(engine, f"warmup-{i}", request)
    result["warmup_seconds"] = round(time.perf_counter() - start, 1)

    tokens, per_request = [], []
    start = time.perf_counter()
    for i, request in enumerate(job["requests"]):
        ids, stamps, arrival = stream_one(engine, f"req-{i}", request)
        tokens.append(ids)
        per_request.append({
            "ttft_s": stamps[0] - arrival if stamps else None,
            "itl_s": [b - a for a, b in zip(stamps, stamps[1:])],
            "tokens_at_once_max": max_repeat(stamps),
        })
    result["seconds"] = time.perf_counter() - start
    result["token_ids"] = tokens
    result["output_tokens"] = sum(len(t) for t in tokens)
    result["per_request"] = per_request
    result["notes"]["load_avg_1m"] = round(os.getloadavg()[0], 2)


def max_repeat(stamps: list[float]) -> int:
    """The most tokens that arrived in one step output (1 = strictly one token per step)."""
    best = run = 0
    last = None
    for s in stamps:
        run = run + 1 if s == last else 1
        best, last = max(best, run), s
    return best


# ---------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    out_path = Path(argv[1])
    set_environment()
    result: dict[str, Any] = {"backend": BACKEND, "mode": job.get("mode", "throughput"),
                              "error": None, "notes": {}}
    try:
        import vllm

        result["vllm_version"] = vllm.__version__
        result["notes"].update(
            dtype=job.get("dtype", "float32"),
            omp_threads_bind=os.environ["VLLM_CPU_OMP_THREADS_BIND"],
            kvcache_space_gib=os.environ["VLLM_CPU_KVCACHE_SPACE"],
        )
        if result["mode"] == "latency":
            run_latency(job, result)
        else:
            run_throughput(job, result)
    except Exception as exc:  # reported in the result: the caller prints "n/a (why)"
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    out_path.write_text(json.dumps(result))
    # A normal exit: vLLM's atexit hooks shut its engine-core process down. The caller runs
    # this script in its own process group and ends whatever is left of that group after.
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
