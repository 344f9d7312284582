"""The CPU decode-attention kernel (csrc/cpu_decode_attention.cpp): each decode's query
against its own context, read in place from the paged cache through its block table.

The torch path (reference.py `_attend_decodes`) first gathers every decode's K/V into one
padded batch (a copy of the whole context, every layer, every step), then runs SDPA with a
mask over the padding. On a 16-request decode step of SmolLM2 that gather and SDPA were 40%
of the step (torch.profiler); this kernel reads each K and V row once, in place, and skips
the padding. It is C++ compiled on this machine by torch's extension builder (g++, ninja),
once: `scripts/setup.sh` builds it (`python -m kernels.cpu_decode_attention`), and later
loads take ~1 s. Without a compiler the engine logs why and keeps the torch path.

PAGEDESK_CPU_DECODE_KERNEL=0 turns it off (benchmarks compare both).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "cpu_decode_attention.cpp"
ENV_SWITCH = "PAGEDESK_CPU_DECODE_KERNEL"
DecodeKernel = Callable[..., torch.Tensor]


def _cpu_flags() -> str:
    """The CPU's feature flags: the build uses -march=native, so a build is only reused on
    a CPU with the same instruction set."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_name(source: str) -> str:
    key = "\n".join((source, torch.__version__, platform.machine(), _cpu_flags()))
    return "pagedesk_cpu_decode_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


@functools.lru_cache(maxsize=1)
def load() -> DecodeKernel | None:
    """The compiled kernel (built on first call if no build exists), or None, with the
    reason logged, where it is turned off or cannot be built."""
    if not enabled():
        log.info("CPU decode kernel off (%s=0): torch attention", ENV_SWITCH)
        return None
    source = SOURCE.read_text()
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            name=build_name(source), cpp_sources=[source], functions=["decode_attention"],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False,
        )  # fmt: skip
    except Exception as exc:  # no compiler, no ninja, a failed build: the torch path serves
        log.warning("CPU decode kernel unavailable (%s): torch attention", str(exc)[:300])
        return None
    return module.decode_attention


if __name__ == "__main__":  # scripts/setup.sh: build once, so an engine start only loads
    logging.basicConfig(level=logging.INFO)
    kernel = load()
    print("CPU decode kernel:", "built" if kernel else "not available (see the log above)")
