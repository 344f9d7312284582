"""LLMEngine: add requests, call step(), read outputs — the loop every front end drives.

One step is: schedule -> prepare inputs -> run model -> sample -> detokenize -> outputs.
The engine only orchestrates: the scheduler owns request state (and advances it from the
step's result), the output processor owns text, stop strings and what each caller is sent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import torch

from engine.bad_words import tokenize_bad_words
from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager
from engine.kv_snapshot import KVSnapshot
from engine.checkpoint_precision import matrix_precision
from engine.model_loader import LoadedModel, check_tensor_parallel_model, load_model, resolve_model
from engine.model_runner import ModelRunner
from engine.models import model_path_of
from engine.models.layers import packed_storage, sliding_window_of
from engine.output_processor import OutputProcessor
from engine.outputs import RequestOutput
from engine.prompt_logprobs import add_prompt_logprobs
from engine.request import Request, RequestStatus
from engine.sampler import Sampler
from engine.sampling_params import SEED_MIN, SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput, SchedulerUpdate
from engine.structured_outputs import GrammarCompiler, advance_grammars
from engine.stats import ScheduledEntry, StepKind, StepStats
import kernels

log = logging.getLogger(__name__)

STATS_HISTORY = 1024


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, loaded: LoadedModel | None = None):
        self.config = config = config or EngineConfig()
        self.device = config.resolve_device()
        self.dtype = config.resolve_dtype(self.device)
        self.attention_backend = kernels.resolve_backend(config.attention_backend, self.device)
        self.tp_executor = None  # the workers' driver when tensor_parallel_size > 1
        if config.tensor_parallel_size > 1:
            self.loaded = self._load_tensor_parallel(loaded)
        else:
            self.loaded = loaded or load_model(config.model, dtype=self.dtype, device=self.device)
        self.tokenizer = self.loaded.tokenizer
        self.model_name = self.loaded.name
        model_len = min(self.loaded.max_model_len, config.max_model_len or 1 << 62)
        try:
            self.runner = ModelRunner(
                self.loaded.model, self.loaded.hf_config, config, self.device, self.dtype,
                model_len, self.attention_backend, self.tp_executor,
                cpu_weight_dtype=self._cpu_weight_dtype(self.loaded.source_path, self.loaded.model),
            )
        except BaseException:
            if self.tp_executor is not None:
                self.tp_executor.shutdown()
            raise
        self.num_kv_blocks = self.runner.num_blocks
        hf_config = self.loaded.hf_config
        self.model_path = model_path_of(hf_config)  # native family or generic transformers
        self.layer_windows = tuple(
            sliding_window_of(hf_config, i) for i in range(hf_config.num_hidden_layers)
        )
        # One request may never need more than the whole cache: cap its context there.
        self.max_model_len = min(model_len, self.num_kv_blocks * config.block_size)
        self.kv_manager = KVCacheManager(
            self.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.kv_manager, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.sampler = Sampler(self.device, config.seed)
        self.requests: dict[str, Request] = {}  # by the scheduler's (child) request id
        self.groups: dict[str, list[Request]] = {}  # user request id -> its n samples
        self._aborted: set[str] = set()  # aborted groups not yet reported
        self.output_processor = OutputProcessor(self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer, hf_config.vocab_size,
                                        (self.eos_token_id, *self.loaded.extra_eos_token_ids))
        self.stats_history: deque[StepStats] = deque(maxlen=STATS_HISTORY)
        self._step_count = 0
        self._ended: list[str] = []  # requests finished or aborted since the last record
        self._latencies: tuple[list[float], list[float]] = ([], [])  # this step's TTFT, ITL
        self._log_capacity()

    def _cpu_weight_dtype(self, source, model=None) -> torch.dtype:
        """How the CPU's packed linears keep their weights (EngineConfig.cpu_weight_dtype);
        float32 off the CPU, where nothing is packed. "auto" on a model another engine has
        packed already (`loaded=`) keeps that storage."""
        if self.device.type != "cpu":
            return torch.float32
        already = packed_storage(model) if model is not None else None
        if self.config.cpu_weight_dtype == "auto" and already is not None:
            return already
        precision = matrix_precision(source) if self.config.cpu_weight_dtype == "auto" else None
        return self.config.resolve_cpu_weight_dtype(precision)

    def _load_tensor_parallel(self, loaded: LoadedModel | None) -> LoadedModel:
        """Start the workers, then load rank 0's shard while they load theirs; the model
        the runner drives is rank 0's TensorParallelModel (engine/distributed/)."""
        from engine.distributed.executor import TensorParallelExecutor, TensorParallelModel
        from engine.distributed.parallel_state import building_for

        if loaded is not None:
            raise ValueError(
                "tensor_parallel_size > 1 loads each rank's shard itself: pass the model "
                "in EngineConfig.model, not a model already loaded whole"
            )
        check_tensor_parallel_model(self.config.model, self.config.tensor_parallel_size)
        stored = self._cpu_weight_dtype(resolve_model(self.config.model)[1])
        executor = TensorParallelExecutor.start(self.config, self.device, self.dtype, stored)
        try:
            with building_for(executor.group):
                result = load_model(self.config.model, dtype=self.dtype, device=self.device)
            executor.wait_ready()
        except BaseException:
            executor.shutdown(wait_s=0.0)
            raise
        self.tp_executor = executor
        result.model = TensorParallelModel(result.model, executor)
        return result

    @property
    def tensor_parallel_size(self) -> int:
        return self.config.tensor_parallel_size

    @property
    def cpu_weight_storage(self) -> str:
        """"bfloat16" or "float32": what the packed CPU linears keep their weights in (the
        storage cpu_weight_dtype chose); "" where none is packed (a GPU, packing off or not
        available here: the weights then stay plain in the model's dtype)."""
        if self.device.type != "cpu":
            return ""
        stored = packed_storage(self.runner.model)  # rank 0's, under tensor parallelism
        return str(stored).removeprefix("torch.") if stored is not None else ""

    def rank_parameter_bytes(self) -> list[int]:
        """Bytes of model parameters held by each rank (one entry at TP=1)."""
        model = self.runner.model
        if self.tp_executor is not None:
            return model.parameter_bytes()
        return [sum(p.numel() * p.element_size() for p in model.parameters())]

    def _log_capacity(self) -> None:
        tokens = self.num_kv_blocks * self.config.block_size
        log.info(
            "KV cache: %d blocks = %d tokens (%.1f MiB), max concurrency %.1fx at full "
            "context of %d tokens; attention backend: %s",
            self.num_kv_blocks, tokens, self.runner.cache_bytes / 2**20,
            tokens / self.max_model_len, self.max_model_len, self.attention_backend,
        )

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    # ---------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        arrival_time: float | None = None,
    ) -> list[Request]:
        """Queue a request (n > 1: n sibling samples sharing the prompt's blocks).
        Bad input raises ValueError here, before it touches the batch."""
        params = sampling_params or SamplingParams()
        if request_id in self.groups:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        self._check_prompt(token_ids)
        bad_words = self._check_vocab_fields(params)
        spec = params.structured_outputs
        grammar = None if spec is None else self.grammars.compile(spec)
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        children: list[Request] = []
        for i in range(params.n):
            child = self._make_child(request_id, i, text, token_ids, params, arrival)
            child.leader = children[0] if children else None
            child.bad_words_token_ids = bad_words
            if grammar is not None:
                child.grammar = self.grammars.matcher(grammar)  # one per sample
            children.append(child)
        self.groups[request_id] = children
        for child in children:
            self.requests[child.request_id] = child
            self.output_processor.add(child)
            self.scheduler.add(child)
        return children

    def _make_child(self, parent_id, index, text, token_ids, params, arrival) -> Request:
        n = params.n
        child = Request(
            request_id=parent_id if n == 1 else f"{parent_id}#{index}",
            prompt_token_ids=token_ids,
            sampling_params=replace(params, n=1, seed=_child_seed(params.seed, index)),
            arrival_time=arrival,
            prompt=text,
            eos_token_id=self.eos_token_id,
            extra_eos_token_ids=self.loaded.extra_eos_token_ids,
            max_total_tokens=self.max_model_len,
            parent_id=parent_id,
            index=index,
        )
        if child.sampling_params.seed is not None:
            child.generator = torch.Generator(device=self.device)
            child.generator.manual_seed(child.sampling_params.seed)
        return child

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return prompt, list(self.tokenizer.encode(prompt))
        token_ids = list(prompt)
        if any(not isinstance(t, int) for t in token_ids):
            raise ValueError("prompt token ids must be integers")
        return None, token_ids

    def _check_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("prompt is empty (0 tokens)")
        vocab = self.loaded.hf_config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is too long: {len(token_ids)} tokens, but this engine's context is "
                f"{self.max_model_len} tokens (prompt plus at least one generated token)"
            )

    def _check_vocab_fields(self, params: SamplingParams) -> list[list[int]]:
        """Token ids the params name index the logits' columns: each must be in the
        vocabulary. Returns bad_words as token-id sequences (tokenized once, here)."""
        vocab = self.loaded.hf_config.vocab_size
        named = (("logit_bias", params.logit_bias or {}), ("stop_token_ids", params.stop_token_ids),
                 ("allowed_token_ids", params.allowed_token_ids or []))
        for name, ids in named:
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"{name} must hold token ids in [0, {vocab}) (the vocabulary "
                                 f"size is {vocab}), got {bad[:5]}")
        return tokenize_bad_words(self.tokenizer, params.bad_words or [], vocab)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        """Stop requests now and give their blocks back; unknown ids are ignored. The next
        step() reports each aborted request once, with finish_reason "abort"."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for rid in ids:
            children = self.groups.get(rid)
            if children is None:
                continue
            for child in children:
                if not child.is_finished:
                    self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)
                    self._ended.append(child.request_id)
            self._aborted.add(rid)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._aborted)

    def get_num_unfinished_requests(self) -> int:
        return len(self.scheduler.waiting) + len(self.scheduler.running)

    # ---------------------------------------------------------------- one step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; return an output for every request it advanced or ended."""
        reported = self._report_aborted()
        start = time.monotonic()
        self.kv_manager.current_step = self._step_count
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return reported
        batch = tuple(_entry(s) for s in sched.scheduled)  # before the counts move on
        # The live block lists: the runner copies only the blocks added since the last step.
        logits, prompt_logprobs = self.runner.execute(sched, self.kv_manager.block_tables)
        add_prompt_logprobs(prompt_logprobs, self.requests)
        sampling = [s.request for s in sched.scheduled if s.samples]
        sampled = self.sampler(logits, sampling)
        update = self.scheduler.update_from_output(sched, sampled)
        for request in advance_grammars(update.sampled):  # its grammar is done
            self.scheduler.finish(request, RequestStatus.FINISHED_STOPPED)
        touched = self._process(update)
        self._record_stats(sched, batch, start)
        return reported + self._outputs(touched)

    def _report_aborted(self) -> list[RequestOutput]:
        outputs = self._outputs([pid for pid in self._aborted if pid in self.groups])
        self._aborted.clear()
        return outputs

    def _process(self, update: SchedulerUpdate) -> list[str]:
        """Latencies and text of the requests that sampled; those whose text reached a
        stop string are finished here. Returns the parent ids with something new, in
        batch order."""
        now = time.monotonic()
        for request in update.sampled:
            self._note_latency(request, now)
        for request, stop in self.output_processor.detokenize(update.sampled):
            self.scheduler.finish(request, RequestStatus.FINISHED_STOPPED, stop)
        self._ended += [r.request_id for r in update.sampled if r.is_finished]
        return list(dict.fromkeys(r.parent_id for r in update.sampled))

    def _note_latency(self, request: Request, now: float) -> None:
        """Time to first token, or the gap since the request's previous token."""
        ttft, itl = self._latencies
        if request.first_token_time is None:
            request.first_token_time = now
            ttft.append(now - request.arrival_time)
        elif request.last_token_time is not None:
            itl.append(now - request.last_token_time)
        request.last_token_time = now

    def _outputs(self, parent_ids: Iterable[str]) -> list[RequestOutput]:
        """One RequestOutput per user request that its output kind reports now; a finished
        group is forgotten once reported."""
        outputs = []
        for pid in parent_ids:
            children = self.groups[pid]
            out = self.output_processor.make_output(pid, children)
            if out is not None:
                outputs.append(out)
            if all(c.is_finished for c in children):
                del self.groups[pid]
                for c in children:
                    self.requests.pop(c.request_id, None)
        return outputs

    def _record_stats(self, sched: SchedulerOutput, batch: tuple[ScheduledEntry, ...],
                      start: float) -> None:  # fmt: skip
        end = time.monotonic()
        decode = sum(e.num_new_tokens for e in batch if e.kind is StepKind.DECODE)
        (ttft, itl), self._latencies = self._latencies, ([], [])
        ended, self._ended = self._ended, []
        self.stats_history.append(
            StepStats(
                step=self._step_count,
                prefill_tokens=sched.num_tokens - decode,
                decode_tokens=decode,
                batch_size=len(sched.scheduled),
                step_seconds=end - start,
                num_running=len(self.scheduler.running),
                num_waiting=len(self.scheduler.waiting),
                num_preemptions=len(sched.preempted),
                prefix_cache_hit_tokens=sched.num_prefix_hit_tokens,
                kv_usage=self.kv_manager.usage,
                finished_time=end,
                attention_backend=self.attention_backend,
                scheduled=batch,
                preempted=tuple(r.request_id for r in sched.preempted),
                finished=tuple(ended),
                waiting=tuple(r.request_id for r in self.scheduler.waiting),
                time_to_first_token=tuple(ttft),
                inter_token_latency=tuple(itl),
            )
        )
        self._step_count += 1

    def release(self) -> None:
        """Drop the model and the cache tensors (after this the engine cannot step)."""
        self.abort_request(list(self.groups))
        self.requests.clear()
        self.groups.clear()
        self.output_processor = OutputProcessor(self.tokenizer)
        self.runner.release()
        self.loaded = None

    # ---------------------------------------------------------------- pictures
    @property
    def last_step_stats(self) -> StepStats | None:
        return self.stats_history[-1] if self.stats_history else None

    @property
    def num_steps(self) -> int:
        return self._step_count

    def kv_snapshot(self) -> KVSnapshot:
        snapshot = self.kv_manager.snapshot(
            self.runner.shape.bytes_per_token, self.max_model_len, self.layer_windows
        )
        if self.tensor_parallel_size > 1:
            snapshot = replace(snapshot, tensor_parallel_size=self.tensor_parallel_size)
        return snapshot

    def reset_prefix_cache(self) -> int:
        """Forget the cached prefixes of finished requests; returns the blocks cleared."""
        return self.kv_manager.reset_prefix_cache()


def _child_seed(seed: int | None, index: int) -> int | None:
    """Sample `index` of a seeded request draws from seed + index (vLLM's rule), wrapped
    into the 64-bit range a seed must keep."""
    if seed is None:
        return None
    return (seed + index - SEED_MIN) % 2**64 + SEED_MIN


def _entry(item) -> ScheduledEntry:
    request = item.request
    return ScheduledEntry(request.request_id, request.parent_id, item.num_new_tokens,
                          step_kind(item), request.num_computed_tokens, item.samples)  # fmt: skip


def step_kind(item) -> StepKind:
    """What a scheduled request computes in this step (read before the step runs)."""
    request = item.request
    gap = request.num_tokens - request.num_computed_tokens
    if request.num_output_tokens > 0 and gap == 1 and not item.admitted:
        return StepKind.DECODE
    if request.num_preemptions > 0:
        return StepKind.RECOMPUTE
    if item.admitted and item.samples:
        return StepKind.PREFILL
    return StepKind.CHUNKED_PREFILL

