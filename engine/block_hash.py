"""The prefix cache's block hash: stable across processes and runs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def hash_block(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Chained hash: the same prefix gives the same chain, whatever follows it.

    A sha256 digest of (parent hash, token ids), as vLLM uses since CVE-2025-25183: Python's
    hash() is salted per process (the same prompt would show a different hash in every run)
    and easy to collide on purpose. 128 bits of it are kept, as a Python int.
    """
    parent = (parent_hash or 0).to_bytes(16, "little")
    tokens = np.asarray(token_ids, dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.sha256(parent + tokens).digest()[:16], "little")
