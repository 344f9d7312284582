"""Offline throughput: pagedesk against vLLM itself and Hugging Face transformers, on one
seeded workload.

One fixed workload (prompt lengths spread over 16-384 tokens, output lengths over 16-160,
greedy, EOS ignored so every backend produces exactly the same number of tokens) runs through:

1. transformers `generate()` with static batches (left padding, in arrival order). A static
   batch runs until its longest request is done; only each request's own `max_tokens` are
   counted as useful output — that is what a static-batching server delivers.
2. transformers' own continuous batching (`continuous_batching_context_manager` +
   per-request `max_new_tokens`), where it runs; "n/a (reason)" where it does not.
3. pagedesk's `LLM.generate` (public API only).
4. vLLM itself ("vllm-cpu": `vllm.LLM.generate`, its CPU build, at its own defaults), from its
   own venv `.venv-vllm` (build it with `bash scripts/vllm_peer.sh`) through
   benchmarks/peer_vllm.py. Without that venv the run says "vLLM peer: not built" and goes
   on without it; with --gpu it is skipped (the peer is vLLM's CPU build).

Every backend runs in a FRESH PROCESS for every round: it loads the model, warms up untimed
on two tiny requests, then runs the workload timed (vLLM also compiles its model on each
start, ~90 s here, before its warm-up). `--rounds N` interleaves the rounds (round 1: every
backend once, round 2: every backend again, ...) so a burst of load from other processes
hits all of them alike; the table reports each backend's MEDIAN output tokens/s over the
rounds, its range, and the ratios to the best transformers static batch size and to vLLM.
Greedy tokens of every pair of backends are compared (reported, never fatal). With --gpu the
model has random weights and runs in bf16: its logits are nearly flat, so greedy parity
there says little.

    .venv/bin/python benchmarks/throughput.py                  # 32 requests, fp32, every backend
    .venv/bin/python benchmarks/throughput.py --num-requests 16 --rounds 3
    .venv/bin/python benchmarks/throughput.py --backends pagedesk,vllm --dtype bfloat16
    .venv/bin/python benchmarks/throughput.py --quick          # 8 requests, 1 round: a smoke test
    .venv/bin/python benchmarks/throughput.py --gpu            # random Llama-3.2-1B, bf16, CUDA
    .venv/bin/python benchmarks/throughput.py --json out.json --hf-batch-size 8,16 --rounds 2
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `python benchmarks/throughput.py` puts benchmarks/ first on sys.path, not the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on a network

from benchmarks.workload import (  # noqa: E402
    BenchRequest,
    from_json,
    make_workload,
    to_json,
    total_output_tokens,
)

# The static baseline should be transformers at its best. On the 2-core CPU (32 requests,
# SmolLM2, fp32, a busy machine) batch 8 beat 16: 12.1 vs 10.8 tok/s; bigger batches pad
# more, and two cores are already busy at 8. On a GPU a 1B model is memory-bound far beyond
# 64 rows, so bigger batches pay; one size keeps `--gpu` inside benchmarks/gpu_check.sh's time limit
# (try `--hf-batch-size 32,64,128` when there is time).
DEFAULT_HF_BATCH_SIZE_CPU = "8"
DEFAULT_HF_BATCH_SIZE_GPU = "64"
DEFAULT_NUM_REQUESTS_GPU = 256

ALL_BACKENDS = ("pagedesk", "vllm", "static", "continuous")  # running order in a round
VLLM_BACKEND = "vllm-cpu"
VLLM_VENV = Path(os.environ.get("PAGEDESK_VLLM_VENV") or REPO_ROOT / ".venv-vllm")  # the peer
VLLM_WORKER = REPO_ROOT / "benchmarks" / "peer_vllm.py"
VLLM_MAX_MODEL_LEN = 2048
NOT_BUILT = "vLLM peer: not built (run bash scripts/vllm_peer.sh)"

# Llama-3.2-1B's shape, written out: the GPU machines have no checkpoints and no network.
LLAMA_32_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
    rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
)


@dataclass
class Result:
    """One backend's timed run (one round). `token_ids` is per request, in workload order."""

    backend: str
    output_tokens: int = 0
    seconds: float = 0.0
    token_ids: list[list[int]] | None = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any], backend: str) -> Result:
        notes = dict(d.get("notes") or {})
        for key in ("startup_seconds", "warmup_seconds", "vllm_version"):
            if d.get(key) is not None:
                notes[key] = d[key]
        return cls(backend, int(d.get("output_tokens") or 0), float(d.get("seconds") or 0.0),
                   d.get("token_ids"), d.get("error"), notes)  # fmt: skip


@dataclass
class Setup:
    """Where the weights are and how to run them: shared by every backend."""

    folder: Path
    device: str  # "cpu" | "cuda"
    dtype_name: str  # "float32" | "bfloat16" | "float16"
    engine_model: str | None  # what pagedesk's LLM(model=...) gets: None = its bundled default


# ---------------------------------------------------------------------------- helpers
def sync(device: Any) -> None:
    """Wait for queued GPU work, so a timer stops when the work is really done."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine_notes(cpu_start: float) -> dict[str, float]:
    """This process's CPU seconds since `cpu_start` and the machine's 1-minute load. Our own
    threads give a load of ~torch.get_num_threads(); a higher load, or CPU seconds far below
    wall seconds x threads, means other processes took the cores and the timing suffered."""
    return {"cpu_seconds": round(time.process_time() - cpu_start, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def accepted_kwargs(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of kwargs that `fn` accepts: transformers' continuous-batching API differs
    between 5.17 (GPU machines) and 5.2x (here)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def vocab_size_of(folder: Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).vocab_size


def special_token_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    return ids


def warmup_requests(vocab_size: int, special: set[int]) -> list[BenchRequest]:
    """Two tiny requests with their own seed: they share no prefix with the workload, so the
    warm-up cannot pre-fill a prefix cache for the timed run."""
    return make_workload(2, vocab_size, special, seed=12345, prompt_lens=(8, 24),
                         output_lens=(4, 8))


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ---------------------------------------------------------------------------- the model
def default_model_folder() -> Path:
    """The safetensors folder pagedesk converts its bundled GGUF into (converted on first use),
    so transformers and vLLM read exactly the weights the engine reads."""
    from engine import hf_folder_of

    return hf_folder_of(None)


def write_random_llama_1b(folder: Path, dtype_name: str, device: str) -> None:
    """A random-weight model of Llama-3.2-1B's shape plus a word-level tokenizer of the same
    vocabulary size, written as a Hugging Face folder every backend reads."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_numbered_tokenizer(LLAMA_32_1B["vocab_size"])
    config = LlamaConfig(
        **LLAMA_32_1B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.2B weights on the GPU takes a moment, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype_name))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def make_numbered_tokenizer(vocab_size: int) -> Any:
    """Token i is the word "t{i}"; ids 0-2 are <s>, </s>, <pad>. Enough to decode any id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<pad>",
    )


def make_setup(args: argparse.Namespace, tmp: Path, workers: WorkerPool) -> Setup:
    if args.gpu:
        if args.model:
            return Setup(Path(args.model), "cuda", args.dtype, args.model)
        folder = tmp / "random-llama-3.2-1b"
        # In a worker: this process never touches the GPU, so every backend gets all of it.
        done = workers.run("random model", project_worker_cmd("make-model"),
                           {"model": str(folder), "device": "cuda", "dtype": args.dtype})
        if done.get("error"):
            raise SystemExit(f"could not write the random model: {done['error']}")
        return Setup(folder, "cuda", args.dtype, str(folder))
    if args.model:
        return Setup(Path(args.model), "cpu", args.dtype, args.model)
    return Setup(default_model_folder(), "cpu", args.dtype, None)


def load_hf_model(job: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch_dtype(job["dtype"]))
    model = model.to(job["device"]).eval()
    # Never stop at EOS and never suppress it: every request yields exactly its token count.
    model.generation_config.eos_token_id = None
    return model


# ---------------------------------------------------------------------------- worker processes
class WorkerPool:
    """Runs one job per fresh process: job and result are JSON files in `folder`; the
    worker's output goes to a log there (its tail is printed when it fails)."""

    def __init__(self, folder: Path, timeout: float, verbose: bool = False):
        self.folder, self.timeout, self.verbose = folder, timeout, verbose
        self.count = 0

    def run(self, label: str, cmd: list[str], job: dict[str, Any],
            env: dict[str, str] | None = None) -> dict[str, Any]:
        self.count += 1
        stem = self.folder / f"{self.count:03d}-{''.join(c if c.isalnum() else '_' for c in label)}"
        job_path, result_path, log_path = (stem.with_suffix(s) for s in (".job.json",
                                                                          ".result.json", ".log"))
        job_path.write_text(json.dumps(job))
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*cmd, str(job_path), str(result_path)], cwd=REPO_ROOT,
                stdout=None if self.verbose else log, stderr=None if self.verbose else log,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
            finally:
                kill_group(proc.pid, signal.SIGTERM)  # what the worker left running (vLLM's core)
        wall = time.perf_counter() - started
        result: dict[str, Any] = {}
        if result_path.exists():
            try:
                result = json.loads(result_path.read_text())
            except json.JSONDecodeError as exc:
                result = {"error": f"unreadable result: {exc}"}
        if rc is None:
            result["error"] = f"timed out after {self.timeout:.0f} s"
        elif not result:
            result["error"] = f"worker exited with status {rc} and no result"
        result.setdefault("notes", {})["process_wall_s"] = round(wall, 1)
        if result.get("error") and not self.verbose:
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            print(f"  [{label}] failed; the last lines of {log_path}:", file=sys.stderr)
            for line in tail:
                print(f"    {line}", file=sys.stderr)
        return result


def kill_group(pid: int, sig: int) -> None:
    """End the worker's process group (it is its own session leader): only what it started."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def project_worker_cmd(backend: str, script: Path | None = None) -> list[str]:
    """This script (or `script`), in this Python, as the worker for `backend`."""
    return [sys.executable, str(script or Path(__file__).resolve()), "--worker", backend]


def vllm_peer_python() -> tuple[Path | None, str]:
    """(the peer venv's python, "vllm X.Y.Z") when .venv-vllm exists and imports vllm, else
    (None, the line to print)."""
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        return None, NOT_BUILT
    try:
        probe = subprocess.run(
            [str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
            text=True, timeout=300, cwd="/",  # not the repo root: never shadow a package
        )
    except subprocess.TimeoutExpired:
        return None, "vLLM peer: `import vllm` in .venv-vllm timed out; skipped"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1][:160]
        return None, (f"vLLM peer: .venv-vllm exists but `import vllm` fails ({last}); "
                      "rebuild it with bash scripts/vllm_peer.sh")
    version = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "?"
    return python, f"vllm {version}"


# ---------------------------------------------------------------------------- worker side
def worker_main(backend: str, job_path: Path, result_path: Path) -> int:
    """Entry point of a worker process: one backend, one timed run, one result file."""
    import torch

    job = json.loads(job_path.read_text())
    if job.get("device", "cpu") == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        if backend == "make-model":
            write_random_llama_1b(Path(job["model"]), job["dtype"], job["device"])
            result = Result(backend)
        else:
            run = {"static": hf_static_worker, "continuous": hf_continuous_worker,
                   "pagedesk": pagedesk_worker}[backend]
            result = run(job)
            result.notes["torch_threads"] = torch.get_num_threads()
    except Exception as exc:
        traceback.print_exc()
        result = Result(backend, error=short_error(exc))
    payload = asdict(result)
    result_path.write_text(json.dumps(payload))
    return 0 if result.error is None else 1


def timed_run(name: str, device: str, warmup: Any, work: Any) -> Result:
    """Warm up (untimed), then time `work`, which returns each request's output tokens."""
    start = time.perf_counter()
    warmup()
    sync(device)
    warm_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    tokens = work()
    sync(device)
    result = Result(name, seconds=time.perf_counter() - start, token_ids=tokens)
    result.output_tokens = sum(len(t) for t in tokens)
    result.notes.update(machine_notes(cpu))
    result.notes["warmup_seconds"] = round(warm_s, 1)
    return result


# -- backend: transformers static batches
def hf_static_batch(model: Any, batch: list[BenchRequest], pad_id: int) -> list[list[int]]:
    """One left-padded `generate()` call, run to the batch's longest request; each request
    keeps only its own first max_tokens tokens."""
    import torch

    width = max(len(r.prompt) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, r in enumerate(batch):
        ids[row, width - len(r.prompt):] = torch.tensor(r.prompt)
        mask[row, width - len(r.prompt):] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
            max_new_tokens=max(r.max_tokens for r in batch), do_sample=False, pad_token_id=pad_id,
        )
    generated = out[:, width:].tolist()
    return [generated[row][: r.max_tokens] for row, r in enumerate(batch)]


def hf_static_worker(job: dict[str, Any]) -> Result:
    requests, warmup = from_json(job["requests"]), from_json(job["warmup"])
    batch_size = int(job["hf_batch_size"])
    model = load_hf_model(job)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    result = timed_run(
        f"transformers static (batch {batch_size})", job["device"],
        lambda: hf_static_batch(model, warmup, pad_id),
        lambda: [t for b in batches for t in hf_static_batch(model, b, pad_id)],
    )
    # What the batches really generated, padding rows included: static batching's waste.
    result.notes["generated_incl_padding"] = sum(
        len(b) * max(r.max_tokens for r in b) for b in batches
    )
    return result


# -- backend: transformers continuous batching
def hf_cb_config(requests: list[BenchRequest], max_batch_tokens: int) -> Any:
    """Size transformers' paged cache for this workload. Left to itself it sizes the cache
    from "free device memory", which on a CPU means most of the machine's RAM."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:  # an older transformers: its defaults will have to do
        return None
    fields = inspect.signature(ContinuousBatchingConfig).parameters
    page = next((fields[n].default for n in ("page_size", "block_size") if n in fields), 256)
    blocks = sum(math.ceil((len(r.prompt) + r.max_tokens) / page) + 1 for r in requests)
    return ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=max_batch_tokens)


def hf_cb_generate(manager: Any, requests: list[BenchRequest], tag: str) -> list[list[int]]:
    """Submit every request with its own max_new_tokens and wait for all of them."""
    ids = [
        manager.add_request(r.prompt, request_id=f"{tag}{i}", max_new_tokens=r.max_tokens,
                            eos_token_id=-1)
        for i, r in enumerate(requests)
    ]
    done: dict[str, list[int]] = {}
    while len(done) < len(ids):
        out = manager.get_result(timeout=1)
        if out is None:
            if not manager.is_running():
                raise RuntimeError("the continuous-batching thread stopped")
            continue
        if out.error:
            raise RuntimeError(f"request {out.request_id} failed: {out.error}")
        if out.is_finished():
            done[out.request_id] = list(out.generated_tokens)
    return [done[rid] for rid in ids]


def hf_cb_manager(model: Any, requests: list[BenchRequest], max_batch_tokens: int) -> Any:
    from transformers import GenerationConfig

    gen = GenerationConfig(
        do_sample=False, max_new_tokens=max(r.max_tokens for r in requests),
        eos_token_id=-1, pad_token_id=model.config.pad_token_id or 0,
    )
    opts: dict[str, Any] = dict(generation_config=gen, manual_eviction=False, timeout=30)
    cb_config = hf_cb_config(requests, max_batch_tokens)
    if cb_config is not None:
        opts["continuous_batching_config"] = cb_config
    factory = model.continuous_batching_context_manager
    return factory(**accepted_kwargs(factory, opts))


def hf_continuous_worker(job: dict[str, Any]) -> Result:
    requests, warmup = from_json(job["requests"]), from_json(job["warmup"])
    model = load_hf_model(job)
    with hf_cb_manager(model, requests + warmup, int(job["max_batch_tokens"])) as manager:
        result = timed_run("transformers continuous batching", job["device"],
                           lambda: hf_cb_generate(manager, warmup, "w"),
                           lambda: hf_cb_generate(manager, requests, "r"))
    result.notes["attn_implementation"] = model.config._attn_implementation  # transformers'
    return result


# -- backend: pagedesk (public API: engine.LLM, engine.SamplingParams, LLM.engine's stats)
def kv_bytes_per_token(folder: str, dtype_name: str) -> int:
    """K and V of one token in every layer, from the checkpoint's config.json."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    itemsize = 4 if dtype_name == "float32" else 2
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize


def pagedesk_worker(job: dict[str, Any]) -> Result:
    from engine import LLM, SamplingParams

    requests, warmup = from_json(job["requests"]), from_json(job["warmup"])
    kwargs: dict[str, Any] = dict(
        dtype=job["dtype"], device=job["device"], block_size=16,
        cpu_weight_dtype=job.get("cpu_weight_dtype", "auto"),
        max_num_seqs=int(job["max_num_seqs"]), max_num_batched_tokens=int(job["max_batch_tokens"]),
    )
    if job["device"] == "cpu":
        # Room for every request at once (plus slack for partly filled blocks): the comparison
        # is about batching, not about preemption under a tight cache.
        tokens = sum(len(r.prompt) + r.max_tokens + 16 for r in requests + warmup)
        kwargs["kv_cache_bytes"] = int(tokens * 1.1) * kv_bytes_per_token(job["model"],
                                                                          job["dtype"])
    llm = LLM(model=job["engine_model"], **kwargs)
    outs: list[Any] = []
    first_step = [0]

    def generate(reqs: list[BenchRequest]) -> list[Any]:
        params = [SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True)
                  for r in reqs]
        return llm.generate([r.prompt for r in reqs], params, use_tqdm=False)

    def warm() -> None:
        generate(warmup)
        first_step[0] = llm.engine.num_steps  # from here on, the steps are the timed run's

    def work() -> list[list[int]]:
        outs[:] = generate(requests)
        return [list(o.outputs[0].token_ids) for o in outs]

    result = timed_run("pagedesk", job["device"], warm, work)
    result.notes["prefix_cache_hit_tokens"] = sum(o.num_cached_tokens for o in outs)
    result.notes["cpu_weight_dtype"] = str(llm.engine.runner.cpu_weight_dtype)
    stats = [s for s in llm.engine.stats_history if s.step >= first_step[0]]
    result.notes.update(pagedesk_step_notes(stats, llm.engine.num_steps - first_step[0]))
    return result


def pagedesk_step_notes(stats: list[Any], steps: int) -> dict[str, Any]:
    """Where pagedesk's time went, from its own per-step stats (LLMEngine.stats_history)."""
    if not stats:
        return {"steps": steps}
    prefill = [s for s in stats if s.prefill_tokens]
    decode = [s for s in stats if not s.prefill_tokens]
    notes = {
        "steps": steps,
        "attention_backend": stats[-1].attention_backend,
        "max_batch_size": max(s.batch_size for s in stats),
        "preemptions": sum(s.num_preemptions for s in stats),
        "prefill_steps_s": round(sum(s.step_seconds for s in prefill), 1),
        "decode_steps_s": round(sum(s.step_seconds for s in decode), 1),
    }
    if decode:
        median = statistics.median(s.step_seconds for s in decode)
        notes["median_decode_step_ms"] = round(1000 * median, 1)
    return notes


# ---------------------------------------------------------------------------- orchestration
@dataclass
class Spec:
    """One column of the table: its name, how to start its worker, what its job adds."""

    name: str
    cmd: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def make_specs(args: argparse.Namespace, chosen: list[str]) -> list[Spec]:
    specs: list[Spec] = []
    for key in ALL_BACKENDS:
        if key not in chosen:
            continue
        if key == "pagedesk":
            specs.append(Spec("pagedesk", project_worker_cmd("pagedesk")))
        elif key == "static":
            specs += [Spec(f"transformers static (batch {int(size)})", project_worker_cmd("static"),
                           {"hf_batch_size": int(size)})
                      for size in args.hf_batch_size.split(",")]  # fmt: skip
        elif key == "continuous":
            specs.append(Spec("transformers continuous batching", project_worker_cmd("continuous")))
        elif key == "vllm":
            if args.gpu:
                print("vLLM peer: skipped with --gpu (the peer is vLLM's CPU build)")
                continue
            python, line = vllm_peer_python()
            print(line if python is None else f"vLLM peer: {line} from {VLLM_VENV}")
            args.vllm_missing = line if python is None else None
            if python is not None:
                specs.append(Spec(VLLM_BACKEND, [str(python), str(VLLM_WORKER)],
                                  {"mode": "throughput", "max_model_len": VLLM_MAX_MODEL_LEN}))
    return specs


def base_job(setup: Setup, requests: list[BenchRequest], warmup: list[BenchRequest],
             args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": str(setup.folder), "engine_model": setup.engine_model, "device": setup.device,
        "dtype": setup.dtype_name, "requests": to_json(requests), "warmup": to_json(warmup),
        "max_batch_tokens": args.max_batch_tokens, "max_num_seqs": args.max_num_seqs,
        "seed": args.seed, "cpu_weight_dtype": args.cpu_weight_dtype,
    }


def run_rounds(specs: list[Spec], job: dict[str, Any], rounds: int,
               workers: WorkerPool) -> dict[str, list[Result]]:
    """Every backend once per round, each in a fresh process, rounds interleaved."""
    runs: dict[str, list[Result]] = {s.name: [] for s in specs}
    for k in range(rounds):
        print(f"round {k + 1}/{rounds}", flush=True)
        for spec in specs:
            raw = workers.run(f"{spec.name} r{k + 1}", spec.cmd, {**job, **spec.extra}, spec.env)
            result = Result.from_dict(raw, spec.name)
            runs[spec.name].append(result)
            print_progress(result)
    return runs


def print_progress(r: Result) -> None:
    what = f"n/a ({r.error})" if r.error else f"{r.tok_per_s:.1f} tok/s in {r.seconds:.1f} s"
    print(f"  {r.backend}: {what}  {r.notes}", flush=True)


@dataclass
class Summary:
    """One backend over all its rounds."""

    backend: str
    ok: list[Result]
    errors: list[str]

    @property
    def median_tok_s(self) -> float:
        return statistics.median(r.tok_per_s for r in self.ok) if self.ok else 0.0

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.ok) if self.ok else 0.0

    @property
    def tokens(self) -> list[list[int]] | None:
        return self.ok[0].token_ids if self.ok else None

    def as_dict(self, static: Summary | None, vllm: Summary | None) -> dict[str, Any]:
        return {
            "backend": self.backend, "rounds_ok": len(self.ok), "errors": self.errors,
            "output_tokens": self.ok[0].output_tokens if self.ok else None,
            "median_seconds": self.median_seconds if self.ok else None,
            "median_tok_per_s": self.median_tok_s if self.ok else None,
            "tok_per_s_all": [round(r.tok_per_s, 2) for r in self.ok],
            "ratio_vs_static": ratio(self, static), "ratio_vs_vllm": ratio(self, vllm),
        }


def ratio(a: Summary, b: Summary | None) -> float | None:
    if b is None or not a.ok or not b.ok or b.median_tok_s <= 0:
        return None
    return a.median_tok_s / b.median_tok_s


def summarize(runs: dict[str, list[Result]]) -> list[Summary]:
    return [Summary(name, [r for r in rs if not r.error], [r.error for r in rs if r.error])
            for name, rs in runs.items()]


# ---------------------------------------------------------------------------- checks
def check_lengths(s: Summary, requests: list[BenchRequest]) -> None:
    """Every request must yield exactly max_tokens: otherwise the tok/s are not comparable."""
    for k, result in enumerate(s.ok):
        pairs = enumerate(zip(result.token_ids or [], requests))
        wrong = [i for i, (t, r) in pairs if len(t) != r.max_tokens]
        if wrong or len(result.token_ids or []) != len(requests):
            print(f"WARNING: {s.backend} round {k + 1}: {len(wrong)} requests with a wrong "
                  f"output length: {wrong[:8]}")
        result.notes["wrong_lengths"] = len(wrong)
    first = s.tokens
    unstable = sum(r.token_ids != first for r in s.ok[1:])
    if unstable:
        print(f"WARNING: {s.backend}: greedy tokens differ between rounds in {unstable} rounds")


def compare_tokens(a: Summary, b: Summary) -> dict[str, Any]:
    """How many requests two backends answered identically, and where the others diverge."""
    mismatches = []
    for i, (x, y) in enumerate(zip(a.tokens, b.tokens)):
        if x != y:
            first = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            mismatches.append({"request": i, "first_diff": first, "len": len(x)})
    return {"a": a.backend, "b": b.backend, "matching": len(a.tokens) - len(mismatches),
            "total": len(a.tokens), "mismatches": mismatches}


def report_parity(summaries: list[Summary]) -> list[dict[str, Any]]:
    ok = [s for s in summaries if s.tokens is not None]
    reports = [compare_tokens(x, y) for i, x in enumerate(ok) for y in ok[i + 1 :]]
    for rep in reports:
        print(f"greedy parity: {rep['a']} vs {rep['b']}: {rep['matching']}/{rep['total']} "
              "requests identical")
        for m in rep["mismatches"][:8]:
            print(f"    request {m['request']}: first differing token at {m['first_diff']} "
                  f"of {m['len']}")
        if len(rep["mismatches"]) > 8:
            print(f"    ... and {len(rep['mismatches']) - 8} more")
    return reports


# ---------------------------------------------------------------------------- report
def table(summaries: list[Summary], static: Summary | None, vllm: Summary | None) -> str:
    rows = ["| backend | output tokens | median seconds | median output tok/s | range tok/s "
            "| ratio vs static | ratio vs vLLM |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        if not s.ok:
            rows.append(f"| {s.backend} | n/a ({s.errors[-1] if s.errors else '?'}) | | | | | |")
            continue
        speeds = [r.tok_per_s for r in s.ok]
        spread = f"{min(speeds):.1f}-{max(speeds):.1f}" if len(speeds) > 1 else "-"
        failed = f" ({len(s.errors)} failed)" if s.errors else ""
        cells = [f"{x:.2f}x" if x is not None else "-" for x in (ratio(s, static), ratio(s, vllm))]
        rows.append(f"| {s.backend}{failed} | {s.ok[0].output_tokens} | {s.median_seconds:.1f} | "
                    f"{s.median_tok_s:.1f} | {spread} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def summary_lines(summaries: list[Summary], static: Summary | None,
                  vllm: Summary | None) -> str:
    """The lines printed just above the table: how loaded the machine was, and the goals."""
    lines = []
    for s in summaries:
        if s.ok:
            loads = ", ".join(str(r.notes.get("load_avg_1m", "-")) for r in s.ok)
            lines.append(f"{s.backend}: 1-min load during its rounds {loads}")
    pagedesk = next((s for s in summaries if s.backend == "pagedesk" and s.ok), None)
    if pagedesk and static and static.ok:
        r = ratio(pagedesk, static)
        verdict = "meets" if r >= 1.5 else "is BELOW"
        lines.append(f"pagedesk = {r:.2f}x {static.backend}: {verdict} the 1.5x goal "
                     "(long-term: 3x, and ahead of transformers' continuous batching)")
    if pagedesk and vllm and vllm.ok:
        lines.append(f"pagedesk = {ratio(pagedesk, vllm):.2f}x {vllm.backend} "
                     "(median output tok/s of each)")
    return "\n".join(lines)


def write_json(path: Path, args: argparse.Namespace, setup: Setup, requests: list[BenchRequest],
               runs: dict[str, list[Result]], summaries: list[Summary], static: Summary | None,
               vllm: Summary | None, parity: list[dict]) -> None:
    def run_dict(r: Result) -> dict[str, Any]:
        out = {k: v for k, v in asdict(r).items() if k != "token_ids"}
        out["tok_per_s"] = r.tok_per_s
        return out

    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_folder": str(setup.folder),
        "device": setup.device,
        "dtype": setup.dtype_name,
        "num_requests": len(requests),
        "prompt_tokens": sum(len(r.prompt) for r in requests),
        "output_tokens": total_output_tokens(requests),
        "baseline": static.backend if static else None,
        "vllm": vllm.backend if vllm else None,
        "results": [s.as_dict(static, vllm) for s in summaries],  # medians over the rounds
        "all_runs": {name: [run_dict(r) for r in rs] for name, rs in runs.items()},
        "parity": parity,
    }
    path.write_text(json.dumps(payload, indent=2))


# ---------------------------------------------------------------------------- main
def parse_backends(text: str, p: argparse.ArgumentParser) -> list[str]:
    aliases = {"vllm-cpu": "vllm", "transformers": "static"}
    chosen = [aliases.get(b.strip(), b.strip()) for b in text.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(ALL_BACKENDS))
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {','.join(ALL_BACKENDS)}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a Hugging Face model folder (default: the bundled "
                   "SmolLM2-135M)")
    p.add_argument("--gpu", action="store_true", help="CUDA, random Llama-3.2-1B shape (no vLLM)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="for every backend (default float32; bfloat16 with --gpu)")
    p.add_argument("--cpu-weight-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="pagedesk's EngineConfig.cpu_weight_dtype (default auto: bfloat16 "
                   "storage for the bundled quantized model)")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help="which to run, comma-separated: pagedesk,vllm,static,continuous "
                   "(default: all; vllm only where .venv-vllm is built)")
    p.add_argument("--skip", default="", help="backends to leave out (same names)")
    p.add_argument("--num-requests", type=int, help="default 32 (CPU), 256 (--gpu)")
    p.add_argument("--quick", action="store_true", help="8 requests: a smoke test")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds, a fresh process per backend per round; the table "
                   "gives medians (default 1; use 3+ on a machine other processes are using)")
    p.add_argument("--repeat", type=int, help=argparse.SUPPRESS)  # the old name of --rounds
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-batch-size", help="static batch size(s), comma-separated; the fastest "
                   f"is the baseline (default {DEFAULT_HF_BATCH_SIZE_CPU} CPU, "
                   f"{DEFAULT_HF_BATCH_SIZE_GPU} GPU)")
    p.add_argument("--max-batch-tokens", type=int,
                   help="token budget per step, for pagedesk and transformers' continuous "
                   "batching (default 1024 CPU, 4096 GPU; vLLM keeps its own default)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="pagedesk's running-request cap")
    p.add_argument("--worker-timeout", type=float, default=1800,
                   help="seconds one worker process may take (vLLM's start compiles ~90 s)")
    p.add_argument("--verbose", action="store_true", help="show the workers' own output")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: this process is a worker
    args, rest = p.parse_known_args(argv)
    if args.worker:
        args.worker_files = rest
        return args
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rounds = args.rounds or args.repeat or 1
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    skip = set(parse_backends(args.skip, p))
    args.chosen = [b for b in parse_backends(args.backends, p) if b not in skip]
    if args.dtype is None:
        args.dtype = "bfloat16" if args.gpu else "float32"
    if args.num_requests is None:
        args.num_requests = 8 if args.quick else DEFAULT_NUM_REQUESTS_GPU if args.gpu else 32
    if args.max_batch_tokens is None:
        args.max_batch_tokens = 4096 if args.gpu else 1024
    if args.hf_batch_size is None:
        args.hf_batch_size = DEFAULT_HF_BATCH_SIZE_GPU if args.gpu else DEFAULT_HF_BATCH_SIZE_CPU
    return args


def make_requests(
    setup: Setup, args: argparse.Namespace
) -> tuple[list[BenchRequest], list[BenchRequest]]:
    """(the timed workload, the warm-up requests) for this model's vocabulary."""
    from transformers import AutoTokenizer

    vocab = vocab_size_of(setup.folder)
    special = special_token_ids(AutoTokenizer.from_pretrained(setup.folder))
    requests = make_workload(args.num_requests, vocab, special, seed=args.seed)
    threads = "" if setup.device == "cuda" else f", {os.cpu_count()} threads"
    print(f"workload: {len(requests)} requests, {sum(len(r.prompt) for r in requests)} prompt "
          f"tokens, {total_output_tokens(requests)} output tokens; model {setup.folder} "
          f"({setup.dtype_name}, {setup.device}{threads})", flush=True)
    return requests, warmup_requests(vocab, special)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        if len(args.worker_files) != 2:
            raise SystemExit("--worker BACKEND JOB.json RESULT.json")
        return worker_main(args.worker, *map(Path, args.worker_files))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pagedesk-bench-") as tmp:
        workers = WorkerPool(Path(tmp), args.worker_timeout, args.verbose)
        setup = make_setup(args, Path(tmp), workers)
        requests, warmup = make_requests(setup, args)
        specs = make_specs(args, args.chosen)
        if not specs:
            print("nothing to run" + (f": {args.vllm_missing}"
                                      if getattr(args, "vllm_missing", None) else ""))
            return 1
        runs = run_rounds(specs, base_job(setup, requests, warmup, args), args.rounds, workers)
    summaries = summarize(runs)
    for s in summaries:
        check_lengths(s, requests)
    statics = [s for s in summaries if s.backend.startswith("transformers static") and s.ok]
    static = max(statics, key=lambda s: s.median_tok_s) if statics else None
    vllm = next((s for s in summaries if s.backend == VLLM_BACKEND and s.ok), None)
    parity = report_parity(summaries)
    if args.json:
        write_json(args.json, args, setup, requests, runs, summaries, static, vllm, parity)
    vllm_version = vllm.ok[0].notes.get("vllm_version") if vllm else None
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; {args.rounds} round(s), "
          f"a fresh process per backend per round, medians; baseline = "
          f"{static.backend if static else 'none'}"
          + (f"; vLLM {vllm_version}" if vllm_version else ""))
    if "vllm" in args.chosen and vllm is None and not args.gpu:
        print(getattr(args, "vllm_missing", None) or "vLLM peer: every run failed (see above)")
    print(summary_lines(summaries, static, vllm) + "\n")
    print(table(summaries, static, vllm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
