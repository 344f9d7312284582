"""Megatron-style tensor-parallel layers and the arithmetic of who holds which rows.

As vLLM shards them (vllm/model_executor/layers/linear.py, vocab_parallel_embedding.py):
  * column-parallel merged linears (qkv_proj, gate_up_proj): each rank holds its rows of
    each part (its q heads, its k heads, its v heads / its rows of gate, of up); the output
    stays sharded, no communication;
  * row-parallel linears (o_proj, down_proj): each rank holds the columns matching its
    input shard; partial sums are all-reduced (a bias is added once, after the sum);
  * a vocabulary-parallel embedding: each rank looks up the ids in its vocab rows (zeros
    elsewhere), then one all-reduce;
  * the LM head: each rank computes the logits of its vocab rows, gathered to rank 0.
KV heads are split across ranks (whole KV groups: see `head_shard`); with fewer KV heads
than ranks each rank holds one, replicated (kv head rank * num_kv_heads // tp), as vLLM does.

All are subclasses of `Linear` / `Embedding`, so loading and `pack_cpu_linears` treat them
as the plain layers they replace: the all-reduce comes after the packed matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.distributed.parallel_state import TPGroup
from engine.models.layers import Embedding, GatedMLP, Linear, activation, linear, packed_linear


@dataclass(frozen=True, slots=True)
class HeadShard:
    """The attention heads one rank holds: q heads [q_start, q_start + num_heads), KV heads
    [kv_start, kv_start + num_kv_heads) of the checkpoint's."""

    num_heads: int
    q_start: int
    num_kv_heads: int
    kv_start: int


def head_shard(num_heads: int, num_kv_heads: int, rank: int, tp: int) -> HeadShard:
    """Rank `rank`'s heads of `tp`. ValueError when the heads cannot be split that way.

    At least as many KV heads as ranks: each rank holds whole KV groups (a KV head and the
    query heads reading it), num_kv_heads / tp of them, as vLLM splits them. Where tp does
    not divide num_kv_heads (SmolLM2-135M: 9 query heads, 3 KV heads, on 2 ranks), vLLM
    refuses; here the first ranks hold one group more (2 and 1), so every rank's heads
    stay a regular GQA layout. Fewer KV heads than ranks: each rank holds one, replicated,
    with num_heads / tp query heads (tp must then divide num_heads and be a multiple of
    num_kv_heads)."""
    if num_heads % num_kv_heads:
        raise ValueError(
            f"the number of attention heads ({num_heads}) must be a multiple of the number "
            f"of KV heads ({num_kv_heads})"
        )
    if num_kv_heads >= tp:
        group = num_heads // num_kv_heads
        base, extra = divmod(num_kv_heads, tp)
        kv_count = base + (rank < extra)
        kv_start = rank * base + min(rank, extra)
        return HeadShard(kv_count * group, kv_start * group, kv_count, kv_start)
    if num_heads % tp:
        raise ValueError(
            f"tensor_parallel_size={tp} must divide the number of attention heads "
            f"({num_heads}) when there are fewer KV heads ({num_kv_heads}) than ranks."
        )
    if tp % num_kv_heads:
        raise ValueError(
            f"tensor_parallel_size={tp} must be a multiple of the number of KV heads "
            f"({num_kv_heads}) when there are fewer KV heads than ranks (each is replicated)."
        )
    per_rank = num_heads // tp
    return HeadShard(per_rank, rank * per_rank, 1, rank * num_kv_heads // tp)


def even_range(size: int, rank: int, tp: int, what: str) -> tuple[int, int]:
    """[start, stop) of rank's equal part of `size`; ValueError when tp does not divide it."""
    if size % tp:
        raise ValueError(f"tensor_parallel_size={tp} must divide {what} ({size}).")
    part = size // tp
    return rank * part, (rank + 1) * part


def vocab_range(vocab_size: int, rank: int, tp: int) -> tuple[int, int, int]:
    """(start, stop, padded rows per rank): every rank holds ceil(vocab / tp) rows, the
    last one's tail unused, so the gathered logits are equal-sized parts."""
    per_rank = -(-vocab_size // tp)
    start = min(rank * per_rank, vocab_size)
    return start, min(start + per_rank, vocab_size), per_rank


class ColumnParallelLinear(Linear):
    """Rows of a (merged) output: its weight is [sum of this rank's parts, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: TPGroup):
        super().__init__(in_features, out_features, bias=bias)
        self.group = group


class RowParallelLinear(Linear):
    """Columns of the input (this rank's shard of it); the partial products are summed
    over the ranks, and the (replicated) bias added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: TPGroup):
        super().__init__(in_features, out_features, bias=bias)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.packed:
            out = packed_linear(flat, self.weight, self.out_features)
        else:
            out = linear(flat, self.weight)
        out = self.group.all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


class VocabParallelEmbedding(Embedding):
    """This rank's vocab rows [start, stop) (padded to `rows` rows): ids outside give zeros,
    and the all-reduce fills each row from the rank that holds it."""

    def __init__(self, vocab_size: int, hidden_size: int, group: TPGroup):
        self.start, self.stop, rows = vocab_range(vocab_size, group.rank, group.world_size)
        super().__init__(rows, hidden_size)
        self.group = group
        self.full_vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        outside = (input_ids < self.start) | (input_ids >= self.stop)
        local = (input_ids - self.start).masked_fill_(outside, 0)
        hidden = super().forward(local).masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.group.all_reduce(hidden)


class ParallelGatedMLP(GatedMLP):
    """GatedMLP with this rank's rows of gate and of up (column-parallel, merged) and the
    matching columns of down (row-parallel: one all-reduce)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False,
                 *, group: TPGroup):  # fmt: skip
        torch.nn.Module.__init__(self)
        start, stop = even_range(intermediate_size, group.rank, group.world_size,
                                 "intermediate_size")  # fmt: skip
        self.intermediate_size = local = stop - start
        self.act = activation(act)
        self.silu = act in ("silu", "swish")
        self.gate_up_proj = ColumnParallelLinear(hidden_size, 2 * local, bias, group)
        self.down_proj = RowParallelLinear(local, hidden_size, bias, group)


def parallel_logits(
    hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int, group: TPGroup,
    head: Linear | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """float32 logits [N, vocab] on rank 0 from each rank's vocab rows (`head` when the LM
    head is its own layer, possibly packed, else the tied embedding's `weight`); None on
    the other ranks."""
    local = (head(hidden) if head is not None else linear(hidden, weight)).float()
    gathered = group.gather_to_first(local)
    return None if gathered is None else gathered[:, :vocab_size]
