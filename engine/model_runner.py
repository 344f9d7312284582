"""Turns a scheduled step into one forward pass over the paged KV cache.

It owns the model and the cache tensors: it sizes the cache, flattens the batch into
`input_ids, positions, slot_mapping, cu_query_lens, seq_lens, block_tables`, runs the
model and returns the logits of the last token of each request that samples this step,
and the prompt logprobs of the requests that asked for them (engine/prompt_logprobs.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from engine.attention import AttentionMetadata
from engine.block_table import BlockTable
from engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from engine.cuda_graphs import DecodeGraphs, graphs_supported
from engine.memory_profile import profile_sampler
from engine.prompt_logprobs import PromptLogprobs, compute_prompt_logprobs, select_prompt_rows
from engine.scheduler import SchedulerOutput
from engine.models.layers import pack_cpu_linears
from kernels import cpu_decode_attention
from kernels.reference import AttentionPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        # K and V, every layer, every KV head.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize


def cache_shape_of(
    hf_config, dtype: torch.dtype, tensor_parallel_size: int = 1, rank: int = 0
) -> CacheShape:
    """The cache of one rank: with tensor parallelism, only the KV heads it holds (rank 0
    holds the most: it sizes the cache, in blocks, for all)."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    if tensor_parallel_size > 1:
        from engine.models.parallel_layers import head_shard

        kv_heads = head_shard(heads, kv_heads, rank, tensor_parallel_size).num_kv_heads
    return CacheShape(hf_config.num_hidden_layers, kv_heads, head_dim, dtype)


def allocate_kv_cache(
    shape: CacheShape, num_blocks: int, block_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(k_cache, v_cache) per layer, each [num_blocks, block_size, kv_heads, head_dim]."""
    dims = (num_blocks, block_size, shape.num_kv_heads, shape.head_dim)
    # Zeroed: attention may read (and then mask) slots nothing was written to.
    return [
        (
            torch.zeros(dims, dtype=shape.dtype, device=device),
            torch.zeros(dims, dtype=shape.dtype, device=device),
        )
        for _ in range(shape.num_layers)
    ]


class RunnerOutput(NamedTuple):
    logits: torch.Tensor  # float32 [num_sampling_requests, vocab], in batch order
    prompt_logprobs: dict[str, PromptLogprobs]  # by request id: those computed this step


class PinnedStaging:
    """Pinned host buffers reused step after step, one per call slot of a step (a buffer
    is overwritten only by the next step, after the previous step's sampler has waited for
    the device, so a non-blocking copy out of it has finished by then)."""

    def __init__(self):
        self._buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._slot = 0

    def begin_step(self) -> None:
        self._slot = 0

    def send(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        key = (self._slot, tensor.dtype)
        self._slot += 1
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < tensor.numel():
            buf = self._buffers[key] = torch.empty(
                max(tensor.numel(), 4096), dtype=tensor.dtype, pin_memory=True
            )
        staged = buf[: tensor.numel()].view(tensor.shape)
        staged.copy_(tensor)
        return staged.to(device, non_blocking=True)


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        hf_config,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        max_model_len: int,
        attention_backend: str,
        tp_executor=None,
        *,
        cpu_weight_dtype: torch.dtype = torch.float32,
    ):
        """tp_executor: with tensor_parallel_size > 1, the workers' driver
        (engine/distributed/executor.py); `model` is then rank 0's TensorParallelModel and
        every rank's cache holds its own KV heads, of the same number of blocks.
        cpu_weight_dtype: what the packed CPU linears keep their weights in."""
        self.model = model
        self.tp_executor = tp_executor
        packing = config.pack_cpu_weights and device.type == "cpu"
        self.cpu_weight_dtype = cpu_weight_dtype if packing else torch.float32
        if packing:
            stored = cpu_weight_dtype
            log.info("%d CPU linear weights packed (kept in %s)", pack_cpu_linears(model, stored), stored)
            if getattr(model, "pack_tied_head", None) and model.pack_tied_head(stored):
                log.info("a packed copy of the tied LM head kept beside the embedding")
        self.config = config
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.attention_backend = attention_backend
        # Decodes read the paged cache in place on the CPU (kernels/cpu_decode_attention.py).
        on_cpu_torch = device.type == "cpu" and attention_backend == "torch"
        self.decode_kernel = cpu_decode_attention.load() if on_cpu_torch else None
        self.shape = cache_shape_of(hf_config, dtype, config.tensor_parallel_size)
        self.vocab_size = hf_config.vocab_size
        self.num_blocks = self._decide_num_blocks(max_model_len)
        self.kv_caches = self._allocate_cache(self.num_blocks)
        if tp_executor is not None:
            tp_executor.allocate_cache(self.num_blocks)
        self.block_table = BlockTable(
            config.max_num_seqs, -(-max_model_len // self.block_size),
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self._staging = PinnedStaging()
        self.graphs = self._capture_decode_graphs(max_model_len)

    def _capture_decode_graphs(self, max_model_len: int) -> DecodeGraphs | None:
        """CUDA graphs of decode steps (see engine/cuda_graphs.py), unless they cannot run
        here or enforce_eager turns them off."""
        cfg = self.config
        why_not = "enforce_eager" if cfg.enforce_eager else graphs_supported(
            self.device, self.attention_backend
        )
        if why_not is None and self.tp_executor is not None:
            why_not = "tensor_parallel_size > 1 (a replay cannot include the workers' steps)"
        if why_not is not None:
            log.info("CUDA graphs off: %s", why_not)
            return None
        graphs = DecodeGraphs(
            self.model, self.kv_caches, cfg.max_num_seqs, self.block_table.max_blocks_per_seq,
            self.device, self.attention_backend, max_model_len=max_model_len,
        )  # fmt: skip
        graphs.capture()  # logs the sizes captured and the seconds it took
        return graphs

    # ---------------------------------------------------------------- sizing
    def _decide_num_blocks(self, max_model_len: int) -> int:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            return cfg.num_kv_blocks
        block_bytes = self.shape.bytes_per_token * self.block_size
        if self.device.type == "cuda":
            budget = self._profile_cuda_budget(max_model_len)
        else:
            budget = cfg.kv_cache_bytes or DEFAULT_CPU_KV_CACHE_BYTES
        num_blocks = budget // block_bytes
        # Never reserve more than the model can use: a 135M model must not take 70 GB.
        useful = cfg.max_num_seqs * -(-max_model_len // self.block_size)
        num_blocks = min(num_blocks, useful)
        if num_blocks < 1:
            raise RuntimeError(
                f"The KV cache budget ({budget / 2**20:.1f} MiB) holds not one block of "
                f"{self.block_size} tokens ({block_bytes / 2**20:.2f} MiB): give it more memory "
                "(kv_cache_bytes on CPU, gpu_memory_fraction on CUDA) or use a smaller model."
            )
        return int(num_blocks)

    def _profile_cuda_budget(self, max_model_len: int) -> int:
        """Run the biggest step once, read the peak, and leave the rest to the cache."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        # Positions must stay inside the model's RoPE table.
        n = min(self.config.max_num_batched_tokens, max_model_len)
        dummy_cache = self._allocate_cache(-(-n // self.block_size))
        input_ids = torch.zeros(n, dtype=torch.long, device=self.device)
        positions = torch.arange(n, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=self.device),
            cu_query_lens=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            block_tables=torch.arange(-(-n // self.block_size), dtype=torch.int32, device=self.device)[None],
            backend=self.attention_backend,
            max_query_len=n,
            max_seq_len=n,
        )
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, dummy_cache, meta)
            # The sampler's peak too (logits of every row, sorting): on a large vocabulary
            # it is what would otherwise overrun the KV budget.
            profile_sampler(self.model, hidden, self.config.max_num_seqs,
                            context_len=min(max_model_len, 4096))  # fmt: skip
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        cache_bytes = sum(k.numel() * k.element_size() * 2 for k, _ in dummy_cache)
        del dummy_cache, hidden
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        # Memory other processes hold on the card is not ours to take.
        free, _ = torch.cuda.mem_get_info(self.device)
        others = total - free - torch.cuda.memory_reserved(self.device)
        return int(self.config.gpu_memory_fraction * total - (peak - cache_bytes) - max(others, 0))

    def _allocate_cache(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return allocate_kv_cache(self.shape, num_blocks, self.block_size, self.device)

    @property
    def cache_bytes(self) -> int:
        return self.num_blocks * self.block_size * self.shape.bytes_per_token

    # ---------------------------------------------------------------- a step
    def prepare_inputs(
        self, sched: SchedulerOutput, block_tables: Mapping[str, list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """Flatten the batch; returns input_ids, positions, metadata and the row of each
        sampling request's last token. `block_tables`: each request's live block list (the
        cache manager's), of which only what is new since the last step is copied.

        Positions and slots are computed with numpy over the whole batch, not per token."""
        items = sched.scheduled
        bs = self.block_size
        self._staging.begin_step()
        starts = np.fromiter((s.start for s in items), np.int64, len(items))
        q_lens = np.fromiter((s.num_new_tokens for s in items), np.int64, len(items))
        seq_lens = starts + q_lens
        cu = np.zeros(len(items) + 1, np.int64)
        np.cumsum(q_lens, out=cu[1:])
        rows = self.block_table.rows_for([s.request.request_id for s in items], block_tables)
        offsets = np.repeat(starts - cu[:-1], q_lens)  # position minus batch row, per token
        positions = np.arange(cu[-1], dtype=np.int64) + offsets
        seq_of_token = np.repeat(rows, q_lens)
        blocks = self.block_table.array[seq_of_token, positions // bs].astype(np.int64)
        slots = blocks * bs + positions % bs  # int64: a large cache has over 2**31 slots
        input_ids = np.empty(cu[-1], np.int64)
        for item, a, b in zip(items, cu[:-1].tolist(), cu[1:].tolist()):
            input_ids[a:b] = item.request.all_token_ids[item.start : item.start + b - a]
        sample_rows = [e - 1 for item, e in zip(items, cu[1:].tolist()) if item.samples]
        width = int(-(-seq_lens.max() // bs))
        tables = self.block_table.host[torch.from_numpy(rows), :width]
        meta = AttentionMetadata(
            slot_mapping=self._to_device(slots),
            cu_query_lens=self._to_device(cu.astype(np.int32)),
            seq_lens=self._to_device(seq_lens.astype(np.int32)),
            block_tables=self._to_device(tables),
            backend=self.attention_backend,
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
        )
        if self.attention_backend == "torch":
            plan = AttentionPlan(
                q_lens.tolist(), seq_lens.tolist(), meta.block_tables, bs, all_slots_valid=True,
            )  # fmt: skip
            plan.decode_kernel = self.decode_kernel
            meta = replace(meta, plan=plan)
        return (
            self._to_device(input_ids),
            self._to_device(positions),
            meta,
            self._to_device(np.asarray(sample_rows, np.int64)),
        )

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array on the model's device: the same memory on the CPU; on CUDA, copied
        through a persistent pinned buffer and sent without waiting."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        if self.device.type != "cuda":
            return tensor
        return self._staging.send(tensor, self.device)

    @torch.inference_mode()
    def execute(
        self, sched: SchedulerOutput, block_tables: Mapping[str, list[int]]
    ) -> RunnerOutput:
        """One forward pass: the sampling rows' logits, and the prompt logprobs asked for
        (made from the same hidden states, before a graph replay can overwrite them)."""
        input_ids, positions, meta, sample_rows = self.prepare_inputs(sched, block_tables)
        graphs = self.graphs
        if (graphs is not None and meta.max_query_len == 1
                and graphs.padded_size(input_ids.shape[0], meta.max_seq_len)):  # fmt: skip
            hidden = graphs.run(input_ids, positions, meta)  # a static buffer: used at once
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, meta)
        logits = self.model.compute_logits(hidden[sample_rows])
        selected = select_prompt_rows(sched)
        return RunnerOutput(logits, compute_prompt_logprobs(self.model, hidden, selected, self.vocab_size))

    def release(self) -> None:
        """Let go of the model, the cache and the graphs that hold both."""
        if self.graphs is not None:
            self.graphs.close()
            self.graphs = None
        self.kv_caches = []
        self.model = None
        if self.tp_executor is not None:
            self.tp_executor.shutdown()
