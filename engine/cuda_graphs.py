"""CUDA graphs for decode steps: one captured forward pass per batch size.

A decode step (every request brings one token) of a small model is bound by the CPU
launching hundreds of kernels, not by the GPU. Replaying a captured graph launches them
all at once. As in vLLM and nano-vllm: graphs for batch sizes 1, 2, 4, 8, 16, 24, ...,
max_num_seqs; a step of n requests runs the graph of the next captured size, its extra rows
padded so that they write nothing and read something finite; static input buffers the
graphs read from; one memory pool shared by every graph (they never replay at once).

What a graph bakes in, and so what the caller must keep fixed after `capture()`:
- the KV cache tensors (their addresses): never reallocate them;
- the host-side hints of AttentionMetadata: max_query_len 1 and max_seq_len = the
  capture-time bound (`max_model_len`). The Triton attention derives its split-KV
  segment count from max_seq_len; the count is a runtime argument that each program
  divides its own context by, so a graph captured for the longest context is right for
  every shorter one (the kernel variant depends on the batch shape alone);
- a RoPE whose tables switch with the context (Phi-3's longrope: long factors past
  `long_after`) is captured with the bound's choice; `padded_size` sends the steps whose
  choice differs to the eager path.

Padded rows: input id 0 at position 0, slot -1 (store_kv skips it: nothing is written),
seq_len 1 over block 0 (a real block of the cache, which the runner zeroes and only
ever fills with finite K/V; the row's result is dropped). Rows are independent through
the whole model, so padding never changes the real rows' results.

Only the Triton backend on CUDA can be captured (the torch reference reads lengths back
to the host). `eager=True` runs the same padded batch through the model instead of a
replay: the CPU stand-in the tests use, and a way to compare the two on a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from engine.attention import AttentionMetadata

log = logging.getLogger(__name__)

# Stop capturing larger sizes once this much time has gone (Triton's first compiles count):
# a bigger batch then simply runs eagerly.
DEFAULT_CAPTURE_BUDGET_S = 60.0


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, then every multiple of 8 up to max_num_seqs, and max_num_seqs itself."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += range(8, max_num_seqs, 8)
    return sizes + [max_num_seqs]


def graphs_supported(device: torch.device | str, attention_backend: str | None) -> str | None:
    """None when decode graphs can be captured here, else the reason they cannot."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if attention_backend != "triton":
        return f"the {attention_backend!r} attention backend syncs with the host (needs 'triton')"
    return None


def _rope_switch(model: torch.nn.Module) -> int | None:
    """The smallest context past which a rotary embedding of the model switches tables."""
    points = [m.long_after for m in model.modules() if getattr(m, "long_after", None) is not None]
    return min(points) if points else None


class DecodeGraphs:
    """Captured decode forward passes, one per batch size, over static input buffers.

    model(input_ids, positions, kv_caches, meta) -> hidden [T, hidden] is the call
    captured; kv_caches are the runner's cache tensors (per layer (k, v), each
    [num_blocks, block_size, num_kv_heads, head_dim]). max_blocks_per_seq is the width of
    the static block table: cdiv(max_model_len, block_size). max_model_len (default: that
    width in tokens) is the max_seq_len hint baked into every graph.

    Use: `capture()` once after the KV cache is allocated; then per decode step
    `padded_size(n, meta.max_seq_len)`: None -> run eagerly, else `run(...)`; `close()`
    when the engine shuts down.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        max_num_seqs: int,
        max_blocks_per_seq: int,
        device: torch.device | str,
        attention_backend: str | None,
        *,
        max_model_len: int | None = None,
        capture_budget_s: float = DEFAULT_CAPTURE_BUDGET_S,
        eager: bool = False,
    ):
        self.model = model
        self.kv_caches = list(kv_caches)
        self.device = torch.device(device)
        self.attention_backend = attention_backend
        self.eager = eager
        self.capture_budget_s = capture_budget_s
        if not eager and (reason := graphs_supported(self.device, attention_backend)):
            raise ValueError(f"cannot capture decode graphs: {reason}")
        block_size = self.kv_caches[0][0].shape[1]
        self.max_seq_len = max_model_len or max_blocks_per_seq * block_size
        if self.max_seq_len > max_blocks_per_seq * block_size:
            raise ValueError(
                f"max_model_len {self.max_seq_len} does not fit {max_blocks_per_seq} blocks "
                f"of {block_size} tokens"
            )
        self.sizes = capture_sizes(max_num_seqs)
        self.captured: list[int] = []  # ascending: the sizes `run` may use
        self.capture_seconds = 0.0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        # A bound past the RoPE switch bakes in the long tables: graphs then serve only the
        # steps past it too. (A bound below it: no step can pass it, every step fits.)
        switch = _rope_switch(model)
        self.min_seq_len = switch + 1 if switch is not None and self.max_seq_len > switch else 0
        largest, dev = self.sizes[-1], self.device
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=dev)
        self.positions = torch.zeros(largest, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.long, device=dev)
        self.seq_lens = torch.ones(largest, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32, device=dev)
        self.cu_query_lens = torch.arange(largest + 1, dtype=torch.int32, device=dev)
        self.hidden: torch.Tensor | None = None  # [largest, hidden]: what the graphs write

    # ------------------------------------------------------------ choosing a size
    def padded_size(self, n: int, max_seq_len: int | None = None) -> int | None:
        """The captured batch size a decode step of n requests runs at, or None (run it
        eagerly): n above the largest captured size, or a context (the step's max_seq_len)
        for which the graphs' baked-in choices would differ from an eager pass."""
        if n < 1 or not self.captured or n > self.captured[-1]:
            return None
        if self.min_seq_len and (max_seq_len is None or max_seq_len < self.min_seq_len):
            return None
        return next(s for s in self.captured if s >= n)

    def metadata(self, size: int) -> AttentionMetadata:
        """The metadata a graph of `size` rows is captured with (views of the buffers)."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            cu_query_lens=self.cu_query_lens[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            backend=self.attention_backend,
            max_query_len=1,
            max_seq_len=self.max_seq_len,
        )

    def fill(
        self,
        size: int,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        """Copy an n-request decode batch into the first `size` rows of the static buffers;
        rows n..size are padding (slot -1, seq_len 1 over block 0, token 0 at position 0)."""
        n = input_ids.shape[0]
        width = meta.block_tables.shape[1]
        if not n <= size <= self.sizes[-1]:
            raise ValueError(f"a batch of {n} does not pad to {size} (largest {self.sizes[-1]})")
        if meta.cu_query_lens.shape[0] != n + 1 or meta.seq_lens.shape[0] != n:
            raise ValueError("a decode graph takes one query token per sequence")
        if meta.max_query_len not in (None, 1):
            raise ValueError(f"a decode graph takes max_query_len 1, not {meta.max_query_len}")
        if width > self.block_tables.shape[1]:
            raise ValueError(f"block tables of {width} blocks exceed {self.block_tables.shape[1]}")
        self.input_ids[:n].copy_(input_ids)
        self.input_ids[n:size].zero_()
        self.positions[:n].copy_(positions)
        self.positions[n:size].zero_()
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:size].fill_(1)
        self.block_tables[:size].zero_()
        self.block_tables[:n, :width].copy_(meta.block_tables)

    # ------------------------------------------------------------ capturing
    @torch.inference_mode()
    def capture(self) -> list[int]:
        """Capture the sizes in ascending order until the time budget is spent (the first
        always); returns the sizes captured. A model that cannot be captured (a host sync
        in its forward pass) leaves no graph: every step then runs eagerly."""
        start = time.perf_counter()
        self._drop_graphs()
        self._reset_buffers()
        probe = self._forward(1)  # the hidden size and dtype (and a first warm-up)
        self.hidden = torch.zeros(
            self.sizes[-1], probe.shape[-1], dtype=probe.dtype, device=self.device
        )
        if self.eager:
            self.captured = list(self.sizes)
            return self.captured
        self.pool = torch.cuda.graph_pool_handle()
        try:
            for size in self.sizes:
                if self.captured and time.perf_counter() - start > self.capture_budget_s:
                    log.info(
                        "CUDA graphs: capture budget of %.0f s spent; decode batches above %d "
                        "run eagerly", self.capture_budget_s, self.captured[-1],
                    )  # fmt: skip
                    break
                self._capture_one(size)
                self.captured.append(size)
        except Exception as exc:  # a host sync or an unsupported op inside the forward pass
            log.warning("CUDA graphs: capture failed (%s); decode steps run eagerly", exc)
            self._drop_graphs()
            torch.cuda.synchronize(self.device)
            return []
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        log.info(
            "CUDA graphs: captured %d decode batch sizes (%s) in %.1f s",
            len(self.captured), _span(self.captured), self.capture_seconds,
        )  # fmt: skip
        return self.captured

    def _capture_one(self, size: int) -> None:
        self._forward(size)  # warm-up: Triton compiles (and loads) its kernels outside capture
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.hidden[:size] = self.model(
                self.input_ids[:size], self.positions[:size], self.kv_caches, self.metadata(size)
            )
        self.graphs[size] = graph

    def _forward(self, size: int) -> torch.Tensor:
        hidden = self.model(
            self.input_ids[:size], self.positions[:size], self.kv_caches, self.metadata(size)
        )
        if self.hidden is not None and self.hidden.shape[-1] == hidden.shape[-1]:
            self.hidden[:size] = hidden
        return hidden

    def _reset_buffers(self) -> None:
        """Every row a padding row: a capture's warm-up pass writes no cache slot."""
        self.input_ids.zero_()
        self.positions.zero_()
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.block_tables.zero_()

    # ------------------------------------------------------------ running
    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """The decode step's hidden states [n, hidden], through the graph of the padded
        size. The result is a view of a static buffer: read it (compute_logits) before the
        next run. ValueError when no captured size takes this batch (see padded_size)."""
        n = input_ids.shape[0]
        size = self.padded_size(n, meta.max_seq_len)
        if size is None:
            raise ValueError(f"no captured decode graph takes a batch of {n} (check padded_size)")
        self.fill(size, input_ids, positions, meta)
        if self.eager:
            self._forward(size)
        else:
            self.graphs[size].replay()
        return self.hidden[:n]

    def _drop_graphs(self) -> None:
        self.graphs.clear()
        self.captured = []
        self.pool = None
        self.hidden = None

    def close(self) -> None:
        """Free the graphs, their pool and the buffers, and let go of the model and the
        caches (an engine that shuts down must call it, or they stay allocated)."""
        self._drop_graphs()
        self.model = None
        self.kv_caches = []


def _span(sizes: list[int]) -> str:
    return f"{sizes[0]}..{sizes[-1]}" if len(sizes) > 1 else str(sizes[0]) if sizes else "none"
