"""A decode step's small ops on the CPU, each way they can run, side by side in one run.

Besides its matmuls and attention, one step of SmolLM2-135M runs 61 RMSNorms (60 with the
residual add), 30 SiLU(gate) * up over 1,536 lanes and 30 RoPEs over 12 heads of 64. For each
row count M this times them as:

- torch:    the engine's torch path (engine/models/layers.py with the fused ops off)
- pagedesk: the engine's fused C++ ops (kernels/cpu_fused_ops.py), through the same layers
- vllm:     vLLM's CPU ops (torch.ops._C fused_add_rms_norm, silu_and_mul,
  rotary_embedding), only when run with the vLLM peer venv's python
  (`bash scripts/vllm_peer.sh` builds it; pagedesk never imports vLLM)

and prints milliseconds per step (median of --repeat runs) and each one's speed against torch.

    .venv/bin/python benchmarks/cpu_fused_ops.py                  # M = 1, 16, 256
    .venv-vllm/bin/python benchmarks/cpu_fused_ops.py --rows 1,16  # with vLLM's ops
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from engine.models import layers  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, LAYERS, EPS = 576, 1536, 12, 64, 30, 1e-5


class StepInputs:
    """One step's activations for M rows, and one norm weight per norm (as in the model)."""

    def __init__(self, rows: int):
        g = torch.Generator().manual_seed(rows)
        self.x = torch.randn(rows, HIDDEN, generator=g)
        self.residual = torch.randn(rows, HIDDEN, generator=g)
        self.gate_up = torch.randn(rows, 2 * INTERMEDIATE, generator=g)
        self.qk = torch.randn(rows, HEADS, HEAD_DIM, generator=g)
        self.positions = torch.randint(0, 2048, (rows,), generator=g)
        self.norms = [layers.RMSNorm(HIDDEN, EPS) for _ in range(2 * LAYERS + 1)]
        angles = torch.outer(torch.arange(2048.0), torch.rand(HEAD_DIM // 2, generator=g))
        self.cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1)  # vLLM's cache layout


def through_layers(fused: bool) -> Callable[[StepInputs], None]:
    """The engine's own layers, with the fused ops on or off."""
    ops = layers.cpu_fused_ops.load() if fused else None
    if fused and ops is None:
        raise SystemExit("the fused ops did not build: see the log")

    def step(s: StepInputs) -> None:
        layers.cpu_fused_ops.load = (lambda: ops) if fused else (lambda: None)
        rows = s.cos_sin[s.positions].unsqueeze(1)
        cos, sin = rows.chunk(2, dim=-1)
        hidden, residual = s.norms[0](s.x)
        for layer in range(LAYERS):
            layers.apply_rope(s.qk, cos, sin)
            hidden, residual = s.norms[2 * layer + 1](s.x, residual)
            # GatedMLP's part between its two matmuls (its torch path: silu, then mul_).
            act = ops.silu_and_mul(s.gate_up) if fused else torch.nn.functional.silu(
                s.gate_up[:, :INTERMEDIATE]).mul_(s.gate_up[:, INTERMEDIATE:])  # fmt: skip
            hidden, residual = s.norms[2 * layer + 2](s.x, residual)
        del act, hidden

    return step


def vllm_ops() -> Callable[[StepInputs], None] | None:
    """vLLM's CPU ops, when this script runs in the vLLM peer venv; None elsewhere."""
    try:
        import vllm._custom_ops as ops
    except ImportError:
        return None

    def step(s: StepInputs) -> None:
        x, residual = s.x.clone(), s.residual.clone()
        out = torch.empty(s.x.shape[0], INTERMEDIATE)
        q = s.qk[:, :9].reshape(s.x.shape[0], -1).clone()
        k = s.qk[:, 9:].reshape(s.x.shape[0], -1).clone()
        ops.rms_norm(torch.empty_like(x), x, s.norms[0].weight.data, EPS)
        for layer in range(LAYERS):
            ops.rotary_embedding(s.positions, q, k, HEAD_DIM, s.cos_sin, True)
            ops.fused_add_rms_norm(x, residual, s.norms[2 * layer + 1].weight.data, EPS)
            torch.ops._C.silu_and_mul(out, s.gate_up)
            ops.fused_add_rms_norm(x, residual, s.norms[2 * layer + 2].weight.data, EPS)

    return step


def time_ms(step: Callable[[StepInputs], None], inputs: StepInputs, repeat: int) -> float:
    for _ in range(3):
        step(inputs)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        step(inputs)
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,16,256")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    original_load = layers.cpu_fused_ops.load
    methods = {"torch": through_layers(False), "pagedesk": through_layers(True)}
    layers.cpu_fused_ops.load = original_load
    if (peer := vllm_ops()) is not None:
        methods["vllm"] = peer
    else:
        print("vLLM peer: not in this venv (run with .venv-vllm/bin/python for its column)")
    print(f"{args.threads} threads; ms per decode step of SmolLM2's 61 norms, 30 SiLU x up, 30 RoPEs")
    print(f"{'rows':>5} " + " ".join(f"{m:>16}" for m in methods))
    for rows in [int(r) for r in args.rows.split(",")]:
        inputs = StepInputs(rows)
        times = {m: time_ms(fn, inputs, args.repeat) for m, fn in methods.items()}
        cells = [f"{t:8.2f} ({times['torch'] / t:4.1f}x)" for t in times.values()]
        print(f"{rows:>5} " + " ".join(f"{c:>16}" for c in cells))
    layers.cpu_fused_ops.load = original_load


if __name__ == "__main__":
    main()
