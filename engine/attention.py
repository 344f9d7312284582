"""What one forward pass needs to know to use the paged KV cache.

The model runner builds one `AttentionMetadata` per step and passes it explicitly to
every attention layer (no module-global context), so a model can be called from a test
with hand-made metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kernels.reference import AttentionPlan


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Flattened description of a mixed batch of prefill chunks and decodes.

    slot_mapping:  int64 [num_tokens]  cache slot of each new token (block_id * block_size + offset)
    cu_query_lens: int32 [num_seqs + 1] offsets of each sequence's new tokens in the batch
    seq_lens:      int32 [num_seqs]    context length of each sequence after this step
    block_tables:  int32 [num_seqs, max_blocks] physical block ids, in logical order
    backend:       "torch" / "triton" / None (None: chosen by the tensors' device)
    max_query_len, max_seq_len: host-side ints the runner already knows; they let the
                   kernels pick tiles and split-KV without reading the device tensors
    plan:          the torch backend's per-step AttentionPlan (which cache rows each
                   sequence reads), made once by the runner for all layers; None otherwise
    """

    slot_mapping: torch.Tensor
    cu_query_lens: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    backend: str | None = None
    max_query_len: int | None = None
    max_seq_len: int | None = None
    plan: AttentionPlan | None = None
