"""The CPU's fused per-layer ops (csrc/cpu_fused_ops.cpp): RMSNorm with its residual add,
SiLU(gate) * up, and neox RoPE, each one pass instead of 4-8 torch ops.

At decode sizes those torch ops cost their dispatch and thread fork/join, not arithmetic:
at one row, a SmolLM2 step's 61 RMSNorms, 30 SiLU x up and 30 RoPEs took ~12 ms of its
~70 (benchmarks/cpu_fused_ops.py measures both). vLLM's CPU build has the same three as C++
ops. Built once by kernels/cpu_build.py; `layers.py` uses them for float32 and bfloat16 on
the CPU where they load, and torch's ops otherwise (other dtypes, devices, no compiler).

PAGEDESK_CPU_FUSED_OPS=0 turns them off (benchmarks compare both).
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

from kernels.cpu_build import load_extension

log = logging.getLogger(__name__)

SOURCE_FILE = "cpu_fused_ops.cpp"
ENV_SWITCH = "PAGEDESK_CPU_FUSED_OPS"
FUNCTIONS = ["add_rms_norm", "silu_and_mul", "rope_neox"]


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


@functools.lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """The compiled ops (`add_rms_norm`, `silu_and_mul`, `rope_neox`), or None, the reason
    logged, where they are turned off or cannot be built."""
    if not enabled():
        log.info("CPU fused ops off (%s=0): torch ops", ENV_SWITCH)
        return None
    return load_extension("pagedesk_cpu_fused", SOURCE_FILE, FUNCTIONS)
