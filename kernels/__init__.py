"""Paged KV-cache kernels behind two fixed signatures.

`store_kv` scatters new tokens' K/V into their cache slots; `unified_attention` runs
causal attention for a mixed batch of prefill chunks and decodes through block tables,
optionally with a sliding window (Mistral, Gemma 2's local layers) and logit soft-capping
(Gemma 2). The torch implementations in `reference.py` define what both compute.

Backends: "torch" (reference.py, the CPU path) and "triton" (triton_*.py). The Triton
modules are imported lazily, on first use: @triton.jit picks compiled or interpreted
kernels from TRITON_INTERPRET at that import, so `import kernels` alone fixes nothing and
works without triton installed. Triton on CPU tensors needs TRITON_INTERPRET=1 set before
that first use.

Triton launches on the *current* CUDA device (its context and stream), not on the tensors'
device, so each Triton call runs under `torch.cuda.device(tensor.device)`: an engine on
cuda:1 launches on cuda:1 whatever the current device is.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

from kernels.reference import store_kv_torch, unified_attention_torch

__all__ = ["resolve_backend", "store_kv", "unified_attention"]

BACKENDS = ("torch", "triton")


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreter_on() -> bool:
    """Would (or did) our Triton kernels run in the interpreter?"""
    mod = sys.modules.get("kernels.triton_attention")
    if mod is not None:
        return bool(mod.INTERPRET)  # decided at its import; later env changes do nothing
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(requested: str | None, device: torch.device | str) -> str:
    """"auto" (or None): triton on CUDA when triton is installed, else torch.
    "torch" / "triton": that one, or RuntimeError when triton cannot run on `device`."""
    device = torch.device(device)
    if requested is None or requested == "auto":
        return "triton" if device.type == "cuda" and _triton_installed() else "torch"
    if requested not in BACKENDS:
        raise ValueError(f"unknown kernel backend {requested!r}: use 'auto', 'torch' or 'triton'")
    if requested == "triton":
        if not _triton_installed():
            raise RuntimeError("kernel backend 'triton' requested but triton is not installed")
        if device.type != "cuda" and not (device.type == "cpu" and _interpreter_on()):
            raise RuntimeError(
                f"kernel backend 'triton' cannot run on {device.type} tensors: it needs CUDA, "
                "or CPU tensors with TRITON_INTERPRET=1 set before kernels first use triton"
            )
    return requested


def _triton(name: str) -> ModuleType:
    return importlib.import_module(f"kernels.{name}")


@functools.lru_cache(maxsize=1)
def _single_gpu() -> bool:
    return torch.cuda.device_count() <= 1


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make `device` the current CUDA device for a Triton launch (a no-op off CUDA, and
    on a machine with one GPU, where the current device can only be that one)."""
    if device.type != "cuda" or _single_gpu():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    backend: str | None = None,
) -> None:
    """key, value: [num_tokens, num_kv_heads, head_dim]; caches: [num_blocks, block_size,
    num_kv_heads, head_dim]; slot_mapping: int64 [num_tokens], block_id * block_size +
    offset, -1 to skip a token."""
    if resolve_backend(backend, k_cache.device) == "triton":
        with _on_device(k_cache.device):
            _triton("triton_store_kv").store_kv_triton(key, value, k_cache, v_cache, slot_mapping)
    else:
        store_kv_torch(key, value, k_cache, v_cache, slot_mapping)


def unified_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_query_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    split_kv: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; cu_query_lens: int32 [num_seqs + 1];
    seq_lens: int32 [num_seqs] (context after this step); block_tables: int32
    [num_seqs, max_blocks]. Query token i of sequence s sits at position
    seq_lens[s] - query_len[s] + i and attends to positions 0..that one.

    Optional host-side hints for the Triton launch (never read back from the device):
    max_query_len (1 means all decodes), max_seq_len (longest context). Without them the
    kernel assumes all decodes iff num_tokens == num_seqs and bounds contexts by the
    block-table width; results are the same either way, only speed changes.
    split_kv: None = automatic flash-decoding, False = never, True = always.

    sliding_window: W >= 1 restricts the query at position p to keys p - W < k <= p (the
    last W positions, itself included: transformers' `kv_idx > q_idx - W`, vLLM's window
    (W - 1, 0)); None = full causal attention.
    softcap: Gemma 2's attention logit soft-capping, applied after scaling and before the
    mask and softmax: s = softcap * tanh(s / softcap); None or 0 = off.
    ValueError for a window below 1 or a negative softcap.
    """
    if resolve_backend(backend, q.device) == "torch":
        return unified_attention_torch(
            q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out,
            sliding_window=sliding_window, softcap=softcap,
        )  # fmt: skip
    attn = _triton("triton_attention")
    segments = None if split_kv is None else (16 if split_kv else 1)
    with _on_device(q.device):
        return attn.unified_attention_triton(
            q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out,
            max_query_len=max_query_len, max_seq_len=max_seq_len, num_segments=segments,
            sliding_window=sliding_window, softcap=softcap,
        )  # fmt: skip
