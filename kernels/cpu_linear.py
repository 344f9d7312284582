"""pagedesk's CPU linear for decode-sized inputs (csrc/cpu_linear.cpp): float32 activations
against a weight packed in blocks of 16 outputs, stored in float32 or bfloat16.

`pack(weight, dtype)` makes the layout once at load; `linear(x, packed, bias, out_features)`
multiplies. A bfloat16-packed weight is half the bytes of a float32 one and, at decode sizes,
about half the time, since reading the weight is the work; the arithmetic stays float32
(benchmarks/cpu_linear.py measures both against oneDNN's inner product).

PAGEDESK_CPU_LINEAR=0 turns it off (the engine keeps oneDNN's packed float32 linears).
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

import torch

from kernels.cpu_build import load_extension

log = logging.getLogger(__name__)

SOURCE_FILE = "cpu_linear.cpp"
ENV_SWITCH = "PAGEDESK_CPU_LINEAR"
FUNCTIONS = ["packed_linear"]
BLOCK = 16  # outputs per packed block: two 8-lane AVX2 vectors
DTYPES = (torch.float32, torch.bfloat16)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


@functools.lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """The compiled kernel, or None, the reason logged, where it is turned off, the CPU lacks
    AVX2 and FMA, or it cannot be built."""
    if not enabled():
        log.info("CPU linear off (%s=0): oneDNN's", ENV_SWITCH)
        return None
    if not _has_avx2_fma():
        log.info("CPU linear needs AVX2 and FMA: oneDNN's")
        return None
    return load_extension("pagedesk_cpu_linear", SOURCE_FILE, FUNCTIONS)


def _has_avx2_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def pack(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight [out, in] -> [ceil(out/16), in, 16] in `dtype` (float32 or bfloat16), the last
    block zero-padded: for each block of 16 outputs, their weights of one input side by side."""
    if weight.dim() != 2:
        raise ValueError(f"pack takes a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if dtype not in DTYPES:
        raise ValueError(f"pack stores float32 or bfloat16, got {dtype}")
    out_features, in_features = weight.shape
    blocks = -(-out_features // BLOCK)
    padded = weight.new_zeros(blocks * BLOCK, in_features, dtype=dtype)
    padded[:out_features] = weight.detach()
    return padded.view(blocks, BLOCK, in_features).transpose(1, 2).contiguous()


def unpack(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The [out, in] matrix a `pack` holds, in its stored dtype."""
    blocks, in_features, _ = packed.shape
    return packed.transpose(1, 2).reshape(blocks * BLOCK, in_features)[:out_features]


def linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """x [..., in] (float32) @ a `pack`ed weight (+ bias) -> [..., out_features] float32."""
    kernel = load()
    if kernel is None:
        raise RuntimeError("the CPU linear kernel is not available (see the log)")
    flat = x.reshape(-1, x.shape[-1])
    out = kernel.packed_linear(flat, packed, bias, out_features)
    return out.view(*x.shape[:-1], out_features)
