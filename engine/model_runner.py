"""Turns a scheduled step into one forward pass over the paged KV cache.

It owns the model and the cache tensors: it sizes the cache, flattens the batch into
`input_ids, positions, slot_mapping, cu_query_lens, seq_lens, block_tables`, runs the
model and returns the logits of the last token of each request that samples this step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.attention import AttentionMetadata
from engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from engine.scheduler import SchedulerOutput

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


def cache_shape_of(hf_config, dtype: torch.dtype) -> CacheShape:
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    return CacheShape(hf_config.num_hidden_layers, kv_heads, head_dim, dtype)


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
    ):
        self.model = model
        self.config = config
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.attention_backend = attention_backend
        self.shape = cache_shape_of(hf_config, dtype)
        self.num_blocks = self._decide_num_blocks(max_model_len)
        self.kv_caches = self._allocate_cache(self.num_blocks)

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
            self.model.compute_logits(hidden[-1:])
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
        s = self.shape
        dims = (num_blocks, self.block_size, s.num_kv_heads, s.head_dim)
        # Zeroed: attention may read (and then mask) slots nothing was written to.
        return [
            (
                torch.zeros(dims, dtype=s.dtype, device=self.device),
                torch.zeros(dims, dtype=s.dtype, device=self.device),
            )
            for _ in range(s.num_layers)
        ]

    @property
    def cache_bytes(self) -> int:
        return self.num_blocks * self.block_size * self.shape.bytes_per_token

    # ---------------------------------------------------------------- a step
    def prepare_inputs(
        self, sched: SchedulerOutput, block_tables: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """Flatten the batch; returns input_ids, positions, metadata and the row of each
        sampling request's last token."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        for item, table in zip(sched.scheduled, block_tables):
            start, n = item.start, item.num_new_tokens
            input_ids.extend(item.request.all_token_ids[start : start + n])
            span = range(start, start + n)
            positions.extend(span)
            slots.extend(table[p // bs] * bs + p % bs for p in span)
            cu.append(cu[-1] + n)
            seq_lens.append(start + n)
            if item.samples:
                sample_rows.append(cu[-1] - 1)
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            cu_query_lens=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(padded, dtype=torch.int32, device=dev),
            backend=self.attention_backend,
            max_query_len=max(s.num_new_tokens for s in sched.scheduled),
            max_seq_len=max(seq_lens),
        )
        return (
            torch.tensor(input_ids, dtype=torch.long, device=dev),
            torch.tensor(positions, dtype=torch.long, device=dev),
            meta,
            torch.tensor(sample_rows, dtype=torch.long, device=dev),
        )

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, block_tables: list[list[int]]) -> torch.Tensor:
        """One forward pass; float32 logits [num_sampling_requests, vocab]."""
        input_ids, positions, meta, sample_rows = self.prepare_inputs(sched, block_tables)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        return self.model.compute_logits(hidden[sample_rows])
