"""Building pagedesk's C++ CPU kernels (kernels/csrc/*.cpp) with torch's extension builder.

Each source is compiled once on this machine (g++, ninja) into torch's extension cache,
under a name hashed from the source, the torch version and install path and the CPU's flags: the build uses
-march=native, so it is only reused where the same source meets the same instruction set.
`scripts/setup.sh` builds them ahead (`python -m kernels.cpu_build`), so an engine start
only loads them (~1 s). Without a compiler a kernel is None, the reason logged, and the
engine keeps its torch path.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_name(prefix: str, source: str) -> str:
    # torch's install path too: a build records its include paths, so two checkouts (venvs)
    # sharing one name would each see the other's build as stale and rebuild it, each
    # waiting on the other's lock.
    key = "\n".join((source, torch.__version__, torch.__file__, platform.machine(), _cpu_flags()))
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# libmvec: glibc's vector math (the fused ops call its 8-lane expf).
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp", "-lmvec"]
# A build takes about a minute; a lock file older than this was left by a killed build, and
# torch's builder would wait on it forever (every engine start would hang).
STALE_LOCK_S = 600


def load_extension(prefix: str, source_file: str, functions: list[str]) -> ModuleType | None:
    """The compiled module of kernels/csrc/`source_file` exposing `functions` (built on first
    call where no build exists), or None with the reason logged."""
    source = (CSRC / source_file).read_text()
    name = build_name(prefix, source)
    try:
        from torch.utils.cpp_extension import load_inline

        remove_stale_lock(name)
        # Copies of the flag lists: torch appends to the extra_ldflags it is given, and a
        # second load of the same name with longer flags is rebuilt from scratch as name_v1.
        return load_inline(
            name=name, cpp_sources=[source], functions=functions,
            extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False,
        )  # fmt: skip
    except Exception as exc:  # no compiler, no ninja, a failed build: the torch path serves
        log.warning("CPU kernels %s unavailable (%s): torch ops", source_file, str(exc)[:300])
        return None


def remove_stale_lock(name: str) -> None:
    """Delete the build's lock file where a killed build left it (older than STALE_LOCK_S)."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        log.warning("removing a stale build lock (%.0f s old): %s", age, lock)
        lock.unlink(missing_ok=True)


if __name__ == "__main__":  # scripts/setup.sh: build every kernel once
    logging.basicConfig(level=logging.INFO)
    from kernels import cpu_decode_attention, cpu_fused_ops, cpu_linear

    for name, kernel in (("decode attention", cpu_decode_attention.load()),
                         ("fused ops", cpu_fused_ops.load()),
                         ("linear", cpu_linear.load())):  # fmt: skip
        print(f"CPU {name}:", "built" if kernel else "not available (see the log above)")
