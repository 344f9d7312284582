"""The CPU decode-attention kernel (csrc/cpu_decode_attention.cpp): each decode's query
against its own context, read in place from the paged cache through its block table.

The torch path (reference.py `_attend_decodes`) first gathers every decode's K/V into one
padded batch (a copy of the whole context, every layer, every step), then runs SDPA with a
mask over the padding. On a 16-request decode step of SmolLM2 that gather and SDPA were 40%
of the step (torch.profiler); this kernel reads each K and V row once, in place, and skips
the padding. It is C++ compiled on this machine by torch's extension builder (g++, ninja),
once (kernels/cpu_build.py): `scripts/setup.sh` builds it, and later loads take ~1 s.
Without a compiler the engine logs why and keeps the torch path.

PAGEDESK_CPU_DECODE_KERNEL=0 turns it off (benchmarks compare both).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch

from kernels.cpu_build import load_extension

log = logging.getLogger(__name__)

SOURCE_FILE = "cpu_decode_attention.cpp"
ENV_SWITCH = "PAGEDESK_CPU_DECODE_KERNEL"
DecodeKernel = Callable[..., torch.Tensor]


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


@functools.lru_cache(maxsize=1)
def load() -> DecodeKernel | None:
    """The compiled kernel (built on first call if no build exists), or None, with the
    reason logged, where it is turned off or cannot be built."""
    if not enabled():
        log.info("CPU decode kernel off (%s=0): torch attention", ENV_SWITCH)
        return None
    module = load_extension("pagedesk_cpu_decode", SOURCE_FILE, ["decode_attention"])
    return None if module is None else module.decode_attention


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    kernel = load()
    print("CPU decode kernel:", "built" if kernel else "not available (see the log above)")
