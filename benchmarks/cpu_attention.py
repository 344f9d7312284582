"""The decode attention of one CPU step, each way pagedesk can run it, side by side in one run.

A decode step attends every running sequence's one new query over its whole context, in
every layer. SmolLM2-135M's shape: 9 query heads sharing 3 KV heads of 64, 30 layers, block
size 16; the cache holds far more blocks than the batch uses, each sequence's blocks spread
through it (as the engine's free list leaves them). For each batch it times one step's
attention (all 30 layers, each its own cache, so K/V come from memory, not the CPU's cache):

- torch:  the torch path (kernels/reference.py `_attend_decodes`): K/V of every sequence
          gathered into one padded batch, then SDPA with a mask over the padding
- kernel: pagedesk's compiled CPU kernel (kernels/cpu_decode_attention.py), reading each
          K/V row in place through the block table

    .venv/bin/python benchmarks/cpu_attention.py
    .venv/bin/python benchmarks/cpu_attention.py --batches 16x300,1x1000 --repeat 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import cpu_decode_attention  # noqa: E402
from kernels.reference import AttentionPlan, unified_attention_torch  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_LAYERS = 9, 3, 64, 16, 30


def make_step(num_seqs: int, mean_len: int, seed: int = 0):
    """Per layer a cache and one shared batch: q, block tables, context lengths (spread
    +-50% around mean_len)."""
    rng = random.Random(seed)
    lens = [max(1, int(mean_len * rng.uniform(0.5, 1.5))) for _ in range(num_seqs)]
    if num_seqs == 1:
        lens = [mean_len]
    per_seq = max(lens) // BLOCK_SIZE + 1
    num_blocks = 4 * num_seqs * per_seq
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    tables = perm[: num_seqs * per_seq].view(num_seqs, per_seq).to(torch.int32).contiguous()
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    caches = [(torch.randn(shape), torch.randn(shape)) for _ in range(NUM_LAYERS)]
    q = torch.randn(num_seqs, HEADS, HEAD_DIM)
    return q, caches, tables, lens


def time_step(q, caches, tables, lens, kernel, repeat: int) -> float:
    """Median milliseconds of one step's attention over all layers."""
    cu = torch.arange(len(lens) + 1, dtype=torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32)

    def one_step() -> None:
        plan = AttentionPlan([1] * len(lens), lens, tables, BLOCK_SIZE)
        plan.decode_kernel = kernel
        for k_cache, v_cache in caches:
            unified_attention_torch(q, k_cache, v_cache, cu, seq_lens, tables, HEAD_DIM**-0.5,
                                    plan=plan)  # fmt: skip

    one_step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1x1000,4x300,16x300,32x300",
                   help="SEQSxMEAN_CONTEXT, comma-separated")  # fmt: skip
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    kernel = cpu_decode_attention.load()
    if kernel is None:
        sys.exit("the CPU decode kernel is not built here (see the log): nothing to compare")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per decode step's "
          f"attention ({NUM_LAYERS} layers), median of {args.repeat}")  # fmt: skip
    print(f"{'batch':>9} {'torch':>9} {'kernel':>9} {'speed-up':>9}")
    for spec in args.batches.split(","):
        seqs, mean = (int(x) for x in spec.split("x"))
        step = make_step(seqs, mean)
        ms_torch = time_step(*step, None, args.repeat)
        ms_kernel = time_step(*step, kernel, args.repeat)
        print(f"{spec:>9} {ms_torch:9.1f} {ms_kernel:9.1f} {ms_torch / ms_kernel:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
