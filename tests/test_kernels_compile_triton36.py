"""Every kernel variant compiles for sm_90 / sm_80 under triton 3.6 as well: the GPU
machines' version (this disk's .venv has a newer one, which tests/test_kernels_compile.py
uses). A change that only the newer compiler accepts would otherwise first fail on a GPU.

scripts/test.sh builds `.venv-triton36` (triton==3.6.0 alone: its compiler needs no torch).
The child runs tests/test_kernels_compile.py with that venv's python, every case compiled
for sm_90 (PAGEDESK_COMPILE_CC=90: the GPU machines are H100/H200): triton comes from its
own site-packages, which come first on sys.path; torch and pytest, which the kernel modules
and the test file import, come from this venv's site-packages, appended after it.
Skipped, with the reason, only when that venv does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-triton36"
VERSION = "3.6.0"

CHILD = r"""
import sys
import triton
assert triton.__version__ == sys.argv[1], f"triton {triton.__version__}, expected {sys.argv[1]}"
sys.path.append(sys.argv[2])  # torch and pytest, after this venv's triton
import pytest
args = ["-q", "-p", "no:cacheprovider", "tests/test_kernels_compile.py"]
sys.exit(pytest.main(args))
"""


@pytest.mark.timeout(1800)
def test_every_variant_compiles_under_triton_36():
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{VENV.name} is absent: scripts/test.sh builds it (triton=={VERSION} only)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PAGEDESK_COMPILE_CC="90")
    env.pop("TRITON_INTERPRET", None)  # the compiler needs real @triton.jit functions
    proc = subprocess.run(
        [str(python), "-c", CHILD, VERSION, sysconfig.get_paths()["purelib"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert " passed" in log and " failed" not in log, log[-3000:]
