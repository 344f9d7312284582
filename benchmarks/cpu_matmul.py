"""The CPU matmuls of one decode step, each way torch can run them, side by side in one run.

A decode step of SmolLM2-135M multiplies 30 layers' weights (q/k/v, o, gate/up, down) and
the LM head by a few rows of activations. Every layer has its own weights, so the weights
come from memory, not the cache, as in the engine (a loop over one hot matrix would flatter
every method). For each row count M it times:

- mkl:     F.linear in float32 (torch's default on the CPU: MKL's GEMM)
- onednn:  torch.ops.mkldnn._linear_pointwise in float32 (what engine/models/layers.py uses)
- onednn-packed16: the same on weights reordered once for 16 rows (the engine's float32
  linears where pagedesk's own kernel does not load)
- pagedesk-f32 / pagedesk-bf16: pagedesk's CPU linear (kernels/cpu_linear.py) on weights
  packed once in blocks of 16 outputs, stored float32 / bfloat16; activations and arithmetic
  float32 in both
- bf16:    F.linear with bfloat16 weights and activations
- vllm-onednn: vLLM's CPU linear (float32, weights prepacked once), only when run with
  the vLLM peer venv's python (`bash scripts/vllm_peer.sh` builds it)

and prints milliseconds per step of matmuls and each method's speed relative to mkl.

    .venv/bin/python benchmarks/cpu_matmul.py               # M = 1, 4, 16, 64, 256
    .venv/bin/python benchmarks/cpu_matmul.py --rows 1,16 --repeat 5
    .venv-vllm/bin/python benchmarks/cpu_matmul.py --rows 1,16,64   # with vLLM's kernel

(In the vLLM venv, pagedesk's own kernel is built against vLLM's torch, the same 2.13.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# SmolLM2-135M: hidden 576, 9 + 2 * 3 heads of 64 (q/k/v 960), intermediate 1536 (x2 merged).
LAYER_SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]  # (in, out)
HEAD_SHAPE = (576, 49152)
NUM_LAYERS = 30


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def vllm_onednn_linear() -> Callable | None:
    """vLLM's own CPU linear (its oneDNN matmul handler over weights prepacked once, what
    its CPU build runs), when this script runs in the vLLM peer venv (scripts/vllm_peer.sh);
    None elsewhere: pagedesk never imports vLLM."""
    try:
        import vllm._custom_ops as ops
    except ImportError:
        return None
    handlers: dict[int, object] = {}

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        handler = handlers.get(id(w))
        if handler is None:  # packed on first use, as vLLM packs each layer once at load
            handler = handlers[id(w)] = ops.create_onednn_mm(w.t(), 32)
        return ops.onednn_mm(handler, x, None)

    return fn


def onednn_packed_linear(rows_hint: int = 16) -> Callable:
    """oneDNN's inner product on weights reordered once into the blocked layout it picks for
    `rows_hint` rows (torch.ops.mkldnn._reorder_linear_weight: same shape and size, other
    element order), as a load-time packing would keep them."""
    packed: dict[int, torch.Tensor] = {}

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        p = packed.get(id(w))
        if p is None:
            p = packed[id(w)] = torch.ops.mkldnn._reorder_linear_weight(w, rows_hint)
        return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    return fn


def pagedesk_linear(stored: torch.dtype) -> Callable | None:
    """pagedesk's CPU linear on weights packed once (kernels/cpu_linear.py), stored in
    `stored`; None where it does not load (no AVX2/FMA, no compiler)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kernels import cpu_linear

    if cpu_linear.load() is None:
        return None
    packed: dict[int, torch.Tensor] = {}

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        p = packed.get(id(w))
        if p is None:
            p = packed[id(w)] = cpu_linear.pack(w, stored)
        return cpu_linear.linear(x, p, None, w.shape[0])

    return fn


METHODS: dict[str, tuple[torch.dtype, Callable]] = {
    "mkl": (torch.float32, F.linear),
    "onednn": (torch.float32, onednn_linear),
    "onednn-packed16": (torch.float32, onednn_packed_linear(16)),
    "bf16": (torch.bfloat16, F.linear),
}
for _name, _stored in (("pagedesk-f32", torch.float32), ("pagedesk-bf16", torch.bfloat16)):
    if (_ours := pagedesk_linear(_stored)) is not None:
        METHODS[_name] = (torch.float32, _ours)
if (_vllm_linear := vllm_onednn_linear()) is not None:
    METHODS["vllm-onednn"] = (torch.float32, _vllm_linear)


def make_weights(dtype: torch.dtype) -> list[torch.Tensor]:
    torch.manual_seed(0)
    weights = [torch.randn(o, i, dtype=dtype) * 0.02 for _ in range(NUM_LAYERS)
               for i, o in LAYER_SHAPES]  # fmt: skip
    weights.append(torch.randn(HEAD_SHAPE[1], HEAD_SHAPE[0], dtype=dtype) * 0.02)
    return weights


def time_step(fn: Callable, weights: list[torch.Tensor], rows: int, dtype: torch.dtype,
              repeat: int) -> float:  # fmt: skip
    """Median milliseconds of one pass over every weight."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype) for w in weights}

    def one_pass() -> None:
        for w in weights:
            fn(inputs[w.shape[1]], w)

    one_pass()  # warm-up: first calls build kernels / primitives
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="1,4,16,64,256", help="row counts M, comma-separated")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    weights = {name: make_weights(dtype) for name, (dtype, _) in METHODS.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per step of matmuls "
          f"(30 layers + LM head), median of {args.repeat}")  # fmt: skip
    print(f"{'M':>5} " + " ".join(f"{name:>16}" for name in METHODS))
    for m in rows:
        ms = {name: time_step(fn, weights[name], m, dtype, args.repeat)
              for name, (dtype, fn) in METHODS.items()}  # fmt: skip
        cells = [f"{ms[n]:8.1f} ({ms['mkl'] / ms[n]:4.2f}x)" for n in METHODS]
        print(f"{m:>5} " + " ".join(f"{c:>16}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
