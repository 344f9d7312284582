"""Random paged-attention batches for tests and benchmarks (no triton import), and a naive
dense attention written from the spec to check every kernel against.

A batch is described by two lists: how many new query tokens each sequence brings and its
context length after this step. Block tables are random permutations of a pool with many
more blocks than used, so a kernel that ignores the table, assumes contiguity or reads a
neighbour's block gets visibly wrong answers.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    q: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    cu_query_lens: torch.Tensor  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks]
    scale: float
    query_lens: list[int]
    context_lens: list[int]

    def args(self) -> tuple:
        """Positional arguments of `unified_attention`."""
        return (
            self.q,
            self.k_cache,
            self.v_cache,
            self.cu_query_lens,
            self.seq_lens,
            self.block_tables,
            self.scale,
        )


def make_paged_batch(
    query_lens: list[int],
    context_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    spare_blocks: int | None = None,
    poison_unused: bool = True,
) -> PagedBatch:
    """Build a batch; sequence s has query_lens[s] new tokens and context_lens[s] in all.

    poison_unused fills every cache slot that no sequence owns (and the tail of each last
    block) with NaN: a kernel that lets an unread row leak into its sums returns NaN.
    """
    assert len(query_lens) == len(context_lens)
    assert all(1 <= q <= c for q, c in zip(query_lens, context_lens))
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(c / block_size) for c in context_lens]
    used = sum(blocks_per_seq)
    spare = spare_blocks if spare_blocks is not None else used + 3
    num_blocks = used + spare
    max_blocks = max(blocks_per_seq) + 2  # wider than needed: the tail must not be read
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(0, num_blocks, (len(query_lens), max_blocks), generator=gen)
    start = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = perm[start : start + n]
        start += n
    tables = tables.to(torch.int32).to(device)

    # Random data is drawn on the target device: CPU randn of GPU-sized caches is slow.
    dgen = torch.Generator(device=device).manual_seed(seed)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=dgen, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=dgen, device=device).to(dtype)
    if poison_unused:
        owned = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=device)
        for s, c in enumerate(context_lens):
            pos = torch.arange(c, device=device)
            owned[tables[s, pos // block_size].long() * block_size + pos % block_size] = True
        for cache in (k_cache, v_cache):
            cache.view(num_blocks * block_size, -1)[~owned] = float("nan")

    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=dgen, device=device)
    cu = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32)
    return PagedBatch(
        q=q.to(dtype),
        k_cache=k_cache,
        v_cache=v_cache,
        cu_query_lens=cu.to(device),
        seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        block_tables=tables,
        scale=head_dim**-0.5,
        query_lens=list(query_lens),
        context_lens=list(context_lens),
    )


def naive_attention(
    q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale,
    *, sliding_window=None, softcap=None,
):  # fmt: skip
    """Per sequence: walk the block table position by position, build the full score
    matrix with an explicit causal mask, softmax, multiply by V (all in float64).
    sliding_window W: query at position p keeps keys p - W < k <= p; softcap c: scores
    become c * tanh(scores / c) after scaling."""
    num_heads = q.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for s in range(len(seq_lens)):
        start, end = int(cu_query_lens[s]), int(cu_query_lens[s + 1])
        ctx, q_len = int(seq_lens[s]), end - start
        rows_k, rows_v = [], []
        for pos in range(ctx):
            block = int(block_tables[s, pos // block_size])
            rows_k.append(k_cache[block, pos % block_size])
            rows_v.append(v_cache[block, pos % block_size])
        k = torch.stack(rows_k).double()  # [ctx, kvh, d]
        v = torch.stack(rows_v).double()
        mask = torch.zeros(q_len, ctx, dtype=torch.bool)
        for i in range(q_len):
            p = ctx - q_len + i
            first = 0 if sliding_window is None else max(0, p - sliding_window + 1)
            mask[i, first : p + 1] = True
        for h in range(num_heads):
            scores = q[start:end, h].double() @ k[:, h // group].T * scale
            if softcap:
                scores = softcap * torch.tanh(scores / softcap)
            scores = scores.masked_fill(~mask, float("-inf"))
            out[start:end, h] = torch.softmax(scores, dim=-1) @ v[:, h // group]
    return out


# How close a kernel's output must be to the torch reference, one table for the CPU
# interpreter tests (tests/test_kernels_triton.py) and the GPU tests
# (tests/gpu/test_kernels_gpu.py), through `assert_kernel_close`. Elementwise, as
# torch.testing.assert_close takes it: fp32 leaves room for a GPU's summation order and
# exp2 approximation over contexts of thousands; 16-bit for one rounding of the output.
KERNEL_TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
# Relative L2 error over the whole output: catches a missing or doubled KV tile, which
# moves outputs by ~1/num_tiles and could hide inside the elementwise tolerances.
KERNEL_REL_L2 = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}


def assert_kernel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """out (a kernel's, in `dtype`) against ref (the reference's): no NaN, elementwise within
    KERNEL_TOL[dtype], and relative L2 error below KERNEL_REL_L2[dtype]."""
    assert not out.isnan().any(), "unwritten or NaN-contaminated output"
    out, ref = out.float(), ref.float()
    torch.testing.assert_close(out, ref, **KERNEL_TOL[dtype])
    norm = ref.norm().item()
    if norm > 0:
        rel = (out - ref).norm().item() / norm
        assert rel < KERNEL_REL_L2[dtype], f"relative L2 error {rel:.2e}"


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel forgets to write shows."""
    return torch.full_like(t, float("nan"))


def run_pytest_file(path: str, *, interpret: bool, timeout: float = 900) -> tuple[int, str]:
    """Run one test file in a child pytest with TRITON_INTERPRET on or off.

    @triton.jit fixes interpreted-vs-compiled when kernels.triton_* is first imported, so
    a test file that needs the other mode than this process has runs itself in a child.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
    proc = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def triton_mode_is_interpreted() -> bool:
    """True when this process's Triton kernels are (or will be, on first import) interpreted."""
    mod = sys.modules.get("kernels.triton_attention") or sys.modules.get("kernels.triton_store_kv")
    if mod is not None:
        return bool(mod.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
