"""The block tables of the running requests, kept in one persistent tensor (vLLM's BlockTable).

Each request the runner has seen owns a row of a [max_num_seqs, max_blocks_per_seq] int32
host array. A step writes only the blocks a request gained since its previous step (a
decode gains one block every `block_size` tokens), instead of rebuilding every table from
Python lists. A request whose block list was replaced (preempted, then admitted again)
has its row rewritten from the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)
class _Row:
    index: int
    source: list[int]  # the cache manager's live list: a new list means a new allocation
    written: int = 0


class BlockTable:
    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, pin_memory: bool = False):
        self.host = torch.zeros((max_num_seqs, max_blocks_per_seq), dtype=torch.int32,
                                pin_memory=pin_memory)  # fmt: skip
        self.array = self.host.numpy()  # the same memory, for cheap slice writes
        self._rows: dict[str, _Row] = {}
        self._free = list(range(max_num_seqs - 1, -1, -1))

    @property
    def max_blocks_per_seq(self) -> int:
        return self.host.shape[1]

    def rows_for(self, request_ids: Sequence[str], tables: Mapping[str, list[int]]) -> np.ndarray:
        """Bring the rows of this step's requests up to date; returns their row indices.
        Rows of requests not in this step are given back (re-synced if they return)."""
        wanted = set(request_ids)
        for rid in [r for r in self._rows if r not in wanted]:
            self._free.append(self._rows.pop(rid).index)
        rows = np.empty(len(request_ids), dtype=np.int64)
        for i, rid in enumerate(request_ids):
            rows[i] = self._sync(rid, tables[rid])
        return rows

    def _sync(self, rid: str, blocks: list[int]) -> int:
        row = self._rows.get(rid)
        if row is None or row.source is not blocks or len(blocks) < row.written:
            if row is None:
                row = self._rows[rid] = _Row(self._free.pop(), blocks)
            row.source, row.written = blocks, 0
        if len(blocks) > self.max_blocks_per_seq:
            raise ValueError(
                f"request {rid!r} holds {len(blocks)} blocks, more than the table's "
                f"{self.max_blocks_per_seq} per sequence"
            )
        if len(blocks) > row.written:
            self.array[row.index, row.written : len(blocks)] = blocks[row.written :]
            row.written = len(blocks)
        return row.index
