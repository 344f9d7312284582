"""Time the Triton paged-attention kernels on a CUDA GPU.

For decode (batch 1/16/64/256 x context 512..8192) and prefill (one chunk of 512..4096
tokens) it times Triton `unified_attention` against the torch reference (the CPU path) and
against torch's scaled_dot_product_attention over contiguous K/V of the same size, and
prints achieved bandwidth (K/V bytes read / time) next to the device's measured copy
bandwidth. Also times store_kv. Without CUDA it says so and exits 2: no numbers are faked.

    PYTHONPATH=. python benchmarks/kernels.py [--quick] [--summary FILE]

Shapes default to a Llama-3-8B layer (32 heads, 8 KV heads, head 128, bf16, block 16).
Timing: triton.testing.do_bench (CUDA events, L2 flushed between runs, median).
"""

from __future__ import annotations

import argparse
import os
import sys

# Run as a script, this file's folder is sys.path[0] and this file would shadow the
# `kernels` package it measures: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DEVICE = "cuda"  # a module constant so a CPU smoke test of the code paths can swap it
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _bench(fn) -> float:
    """Median milliseconds of fn()."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / ms / 1e6


def _kv_bytes(context_lens: list[int], kv_heads: int, head_dim: int, dtype) -> int:
    return sum(context_lens) * kv_heads * head_dim * 2 * torch.finfo(dtype).bits // 8


def _sdpa_fn(b, batch: int, ctx: int, q_len: int):
    """SDPA over contiguous K/V holding the same rows as the paged cache (uniform lengths)."""
    heads, d = b.q.shape[1], b.q.shape[2]
    kvh = b.k_cache.shape[2]
    k = torch.randn(batch, kvh, ctx, d, device=DEVICE, dtype=b.q.dtype)
    v = torch.randn_like(k)
    q = b.q.view(batch, q_len, heads, d).transpose(1, 2)
    causal = q_len > 1

    def run():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        run()
    except RuntimeError as e:  # an SDPA build without enable_gqa on this backend
        print(f"  sdpa unavailable: {e}", file=sys.stderr)
        return None
    return run


def bench_attention(
    kind: str, batch: int, ctx: int, q_len: int, args, torch_max_tokens: int
) -> dict:
    import kernels
    from kernels import triton_attention as ta
    from kernels.reference import unified_attention_torch
    from kernels.testing import make_paged_batch

    dtype = DTYPES[args.dtype]
    b = make_paged_batch(
        [q_len] * batch, [ctx] * batch, num_heads=args.heads, num_kv_heads=args.kv_heads,
        head_dim=args.head_dim, block_size=args.block_size, dtype=dtype, device=DEVICE,
        spare_blocks=16, poison_unused=False,
    )  # fmt: skip
    out = torch.empty_like(b.q)
    hints = dict(max_query_len=q_len, max_seq_len=ctx)
    cfg = ta.config_for(b.q, b.k_cache, b.seq_lens, b.block_tables, q_len, ctx)
    row = {"case": f"{kind} b={batch} ctx={ctx}" + (f" q={q_len}" if kind == "prefill" else "")}
    row["segments"] = cfg.num_segments
    row["triton_ms"] = _bench(
        lambda: kernels.unified_attention(*b.args(), out=out, backend="triton", **hints)
    )
    if batch * ctx <= torch_max_tokens:
        row["torch_ms"] = _bench(lambda: unified_attention_torch(*b.args(), out=out))
    sdpa = _sdpa_fn(b, batch, ctx, q_len)
    if sdpa is not None:
        row["sdpa_ms"] = _bench(sdpa)
    nbytes = _kv_bytes([ctx] * batch, args.kv_heads, args.head_dim, dtype)
    row["triton_gbs"] = nbytes / row["triton_ms"] / 1e6
    if "sdpa_ms" in row:
        row["sdpa_gbs"] = nbytes / row["sdpa_ms"] / 1e6
    if kind == "prefill":  # causal: half of the 2 * 2 * L^2 * H * D multiply-adds
        flops = 2 * batch * q_len * ctx * args.heads * args.head_dim
        row["triton_tflops"] = flops / row["triton_ms"] / 1e9
    del b, out
    torch.cuda.empty_cache()
    return row


def bench_store_kv(num_tokens: int, args) -> dict:
    import kernels
    from kernels.reference import store_kv_torch

    dtype = DTYPES[args.dtype]
    kvh, d, bs = args.kv_heads, args.head_dim, args.block_size
    num_blocks = num_tokens // bs * 4
    k_cache = torch.zeros(num_blocks, bs, kvh, d, device=DEVICE, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_blocks * bs, device=DEVICE)[:num_tokens]
    key = torch.randn(num_tokens, kvh, d, device=DEVICE, dtype=dtype)
    value = torch.randn_like(key)
    ms = _bench(lambda: kernels.store_kv(key, value, k_cache, v_cache, slots, backend="triton"))
    ms_t = _bench(lambda: store_kv_torch(key, value, k_cache, v_cache, slots))
    nbytes = 2 * 2 * key.numel() * key.element_size()  # K and V, read and written
    return {"case": f"store_kv tokens={num_tokens}", "triton_ms": ms, "torch_ms": ms_t,
            "triton_gbs": nbytes / ms / 1e6}  # fmt: skip


def _fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def print_table(rows: list[dict], copy_gbs: float, out=sys.stdout) -> None:
    head = (
        f"{'case':30s} {'seg':>4s} {'triton ms':>10s} {'torch ms':>10s} {'sdpa ms':>9s} "
        f"{'triton GB/s':>11s} {'%copy':>6s} {'sdpa GB/s':>10s} {'TFLOP/s':>8s}"
    )
    print(head, file=out)
    for r in rows:
        pct = 100 * r["triton_gbs"] / copy_gbs
        print(
            f"{r['case']:30s} {_fmt(r, 'segments', 'd'):>4s} {r['triton_ms']:10.3f} "
            f"{_fmt(r, 'torch_ms', '.3f'):>10s} {_fmt(r, 'sdpa_ms', '.3f'):>9s} "
            f"{r['triton_gbs']:11.0f} {pct:5.0f}% {_fmt(r, 'sdpa_gbs', '.0f'):>10s} "
            f"{_fmt(r, 'triton_tflops', '.0f'):>8s}",
            file=out,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer cases (the GPU check uses it)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--torch-max-tokens", type=int, default=64 * 8192,
                   help="skip the torch reference above batch x context (it is slow)")
    p.add_argument("--summary", help="also write the table to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU and none is visible: nothing measured.",
              file=sys.stderr)  # fmt: skip
        return 2
    import triton

    name = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth_gbs()
    print(f"{name}  torch {torch.__version__}  triton {triton.__version__}  {args.dtype} "
          f"heads {args.heads}/{args.kv_heads} d={args.head_dim} block {args.block_size}")  # fmt: skip
    print(f"device copy bandwidth (read+write): {copy_gbs:.0f} GB/s", flush=True)

    batches = (1, 16, 64, 256)
    contexts = (512, 2048, 8192) if not args.quick else (512, 8192)
    chunks = (512, 1024, 2048, 4096) if not args.quick else (512, 4096)
    rows = []
    for batch in batches:
        for ctx in contexts:
            rows.append(bench_attention("decode", batch, ctx, 1, args, args.torch_max_tokens))
            print(f"  {rows[-1]['case']}: {rows[-1]['triton_ms']:.3f} ms", flush=True)
    for chunk in chunks:
        rows.append(bench_attention("prefill", 1, chunk, chunk, args, args.torch_max_tokens))
        print(f"  {rows[-1]['case']}: {rows[-1]['triton_ms']:.3f} ms", flush=True)
    rows.append(bench_store_kv(4096, args))
    print()
    print_table(rows, copy_gbs)
    if args.summary:
        with open(args.summary, "w") as f:
            print(f"{name}: copy {copy_gbs:.0f} GB/s (read+write), {args.dtype}", file=f)
            print_table(rows, copy_gbs, out=f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
