"""LLMEngine: add requests, call step(), read outputs — the loop every front end drives.

One step is: schedule -> prepare inputs -> run model -> sample -> detokenize -> outputs.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

import torch

from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.kv_cache_manager import KVCacheManager
from engine.kv_snapshot import KVSnapshot
from engine.model_loader import LoadedModel, load_model
from engine.model_runner import ModelRunner
from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine.request import Request, RequestStatus
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.stats import StepStats
import kernels

log = logging.getLogger(__name__)

STATS_HISTORY = 1024


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, loaded: LoadedModel | None = None):
        self.config = config = config or EngineConfig()
        self.device = config.resolve_device()
        self.dtype = config.resolve_dtype(self.device)
        self.attention_backend = kernels.resolve_backend(config.attention_backend, self.device)
        self.loaded = loaded or load_model(config.model, dtype=self.dtype, device=self.device)
        self.tokenizer = self.loaded.tokenizer
        self.model_name = self.loaded.name
        model_len = min(self.loaded.max_model_len, config.max_model_len or 1 << 62)
        self.runner = ModelRunner(
            self.loaded.model, self.loaded.hf_config, config, self.device, self.dtype,
            model_len, self.attention_backend,
        )
        self.num_kv_blocks = self.runner.num_blocks
        # One request may never need more than the whole cache: cap its context there.
        self.max_model_len = min(model_len, self.num_kv_blocks * config.block_size)
        self.kv_manager = KVCacheManager(
            self.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.kv_manager, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.sampler = Sampler(self.device, config.seed)
        self.requests: dict[str, Request] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.stats_history: deque[StepStats] = deque(maxlen=STATS_HISTORY)
        self._step_count = 0
        self._log_capacity()

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
    ) -> Request:
        """Queue a request. Bad input raises ValueError here, before it touches the batch."""
        params = sampling_params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        self._check_prompt(token_ids)
        request = Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            sampling_params=params,
            arrival_time=arrival_time if arrival_time is not None else time.monotonic(),
            prompt=text,
            eos_token_id=self.eos_token_id,
            max_total_tokens=self.max_model_len,
        )
        if params.seed is not None:
            request.generator = torch.Generator(device=self.device)
            request.generator.manual_seed(params.seed)
        self.requests[request_id] = request
        self.detokenizers[request_id] = IncrementalDetokenizer(self.tokenizer, token_ids)
        self.scheduler.add(request)
        return request

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

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        """Stop requests now and give their blocks back; unknown ids are ignored."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for rid in ids:
            request = self.requests.get(rid)
            if request is not None and not request.is_finished:
                self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def get_num_unfinished_requests(self) -> int:
        return len(self.scheduler.waiting) + len(self.scheduler.running)

    # ---------------------------------------------------------------- one step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; return an output for every request it advanced or ended."""
        finished_before = self._collect_aborted()
        start = time.monotonic()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return finished_before
        tables = [list(self.kv_manager.block_table(s.request.request_id)) for s in sched.scheduled]
        logits = self.runner.execute(sched, tables)
        sampling = [s.request for s in sched.scheduled if s.samples]
        tokens = self.sampler(
            logits, [r.sampling_params for r in sampling], [r.generator for r in sampling]
        )
        outputs = self._update(sched, dict(zip((r.request_id for r in sampling), tokens)))
        self._record_stats(sched, start)
        return finished_before + outputs

    def _collect_aborted(self) -> list[RequestOutput]:
        """Aborted requests report once, then are forgotten."""
        done = [r for r in self.requests.values() if r.status is RequestStatus.FINISHED_ABORTED]
        outputs = [self._make_output(r) for r in done]
        for r in done:
            self._forget(r)
        return outputs

    def _update(self, sched: SchedulerOutput, sampled: dict[str, int]) -> list[RequestOutput]:
        now = time.monotonic()
        outputs = []
        for item in sched.scheduled:
            request = item.request
            request.num_computed_tokens += item.num_new_tokens
            self.kv_manager.cache_full_blocks(request)
            token = sampled.get(request.request_id)
            if token is None:
                continue  # a prompt chunk: nothing to sample yet
            request.append_output_token(token)
            if request.first_token_time is None:
                request.first_token_time = now
            self.detokenizers[request.request_id].add_tokens([token])
            status = request.check_stop()
            if status is not None:
                self.scheduler.finish(request, status)
            outputs.append(self._make_output(request))
            if status is not None:
                self._forget(request)
        return outputs

    def _forget(self, request: Request) -> None:
        self.requests.pop(request.request_id, None)
        self.detokenizers.pop(request.request_id, None)

    def _make_output(self, request: Request) -> RequestOutput:
        finished = request.is_finished
        detok = self.detokenizers[request.request_id]
        completion = CompletionOutput(
            index=0,
            text=detok.output_text,
            token_ids=list(request.output_token_ids),
            finish_reason=request.status.value if finished else None,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=[completion],
            finished=finished,
            metrics=RequestMetrics(
                arrival_time=request.arrival_time,
                first_scheduled_time=request.first_scheduled_time,
                first_token_time=request.first_token_time,
                finished_time=request.finished_time,
            ),
            num_cached_tokens=max(request.num_cached_tokens, 0),
        )

    def _record_stats(self, sched: SchedulerOutput, start: float) -> None:
        end = time.monotonic()
        decode = sum(
            s.num_new_tokens for s in sched.scheduled
            if s.num_new_tokens == 1 and s.request.num_output_tokens > 1 and s.samples
        )
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
            )
        )
        self._step_count += 1

    def release(self) -> None:
        """Drop the model and the cache tensors (after this the engine cannot step)."""
        for request in list(self.requests.values()):
            if not request.is_finished:
                self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)
        self.requests.clear()
        self.runner.kv_caches = []
        self.runner.model = None
        self.loaded = None

    # ---------------------------------------------------------------- pictures
    @property
    def last_step_stats(self) -> StepStats | None:
        return self.stats_history[-1] if self.stats_history else None

    def kv_snapshot(self) -> KVSnapshot:
        return self.kv_manager.snapshot()
