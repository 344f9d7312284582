"""What rank 0 tells the tensor-parallel workers, and how a step's inputs travel.

Each message starts with a fixed header of int64s sent down the worker's pipe (the pipe
is also how a worker learns that the engine is gone: it reads EOF). Tensors follow over
torch.distributed: a step's inputs packed into one int64 tensor broadcast from rank 0,
hidden states for the LM head broadcast as they are. No pickling: fixed-size numbers.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

from engine.attention import AttentionMetadata
from kernels.reference import AttentionPlan

HEADER_LEN = 8


class Op(enum.IntEnum):
    SHUTDOWN = 0
    STEP = 1  # [T tokens, S seqs, W table width, max_query_len, max_seq_len, cache blocks, plan]
    LOGITS = 2  # [N rows]: hidden [N, hidden] follows
    ALLOCATE = 3  # [num_blocks]: allocate the KV cache


def header(op: Op, *fields: int) -> bytes:
    values = np.zeros(HEADER_LEN, np.int64)
    values[0] = int(op)
    values[1 : 1 + len(fields)] = fields
    return values.tobytes()


def read_header(data: bytes) -> tuple[Op, list[int]]:
    values = np.frombuffer(data, np.int64)
    if values.shape != (HEADER_LEN,):
        raise ValueError(f"a tensor-parallel message of {len(data)} bytes is not a header")
    return Op(int(values[0])), [int(v) for v in values[1:]]


def step_header(input_ids: torch.Tensor, meta: AttentionMetadata, cache_blocks: int) -> bytes:
    num_seqs, width = meta.block_tables.shape
    return header(Op.STEP, input_ids.shape[0], num_seqs, width, meta.max_query_len or 0,
                  meta.max_seq_len or 0, cache_blocks, int(meta.plan is not None))  # fmt: skip


def pack_step(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """One int64 tensor holding a step's inputs (on their device), for one broadcast."""
    parts = (input_ids, positions, meta.slot_mapping, meta.cu_query_lens, meta.seq_lens,
             meta.block_tables.reshape(-1))  # fmt: skip
    return torch.cat([p.to(torch.int64) for p in parts])


def step_size(fields: list[int]) -> int:
    tokens, seqs, width = fields[:3]
    return 3 * tokens + (seqs + 1) + seqs + seqs * width


def unpack_step(
    packed: torch.Tensor, fields: list[int], backend: str, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """input_ids, positions and metadata from `pack_step`'s tensor and its header fields."""
    tokens, seqs, width, max_q, max_seq, _, has_plan = fields[:7]
    ids, pos, slots, cu, seq_lens, tables = packed.split(
        [tokens, tokens, tokens, seqs + 1, seqs, seqs * width]
    )
    cu, seq_lens = cu.to(torch.int32), seq_lens.to(torch.int32)
    tables = tables.to(torch.int32).view(seqs, width)
    plan = None
    if has_plan:
        q_lens = (cu[1:] - cu[:-1]).tolist()
        plan = AttentionPlan(q_lens, seq_lens.tolist(), tables, block_size, all_slots_valid=True)
    meta = AttentionMetadata(slots, cu, seq_lens, tables, backend, max_q, max_seq, plan)
    return ids, pos, meta
