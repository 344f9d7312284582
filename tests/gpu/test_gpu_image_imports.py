"""tests/gpu runs on the GPU image, which lacks the desktop and test stack (PySide6, openai,
…): neither tests/conftest.py, nor tests/gpu, nor the engine code they load may import
those. Runs on the CPU (no gpu mark, so benchmarks/gpu_check.sh deselects it there): a
child pytest with those packages made unimportable and plugin autoload off (a bare pytest)
collects tests/gpu, then imports what the GPU tests import inside their functions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# On the dev disk, not on the GPU image (FACTS.md, "The GPU machines").
MISSING_THERE = ("PySide6", "shiboken6", "openai", "qasync", "pyqtgraph", "pytestqt", "hypothesis")

CHILD = r"""
import importlib, importlib.abc, sys

BLOCKED = set(sys.argv[1].split(","))


class NotOnTheGpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU image)")
        return None


sys.meta_path.insert(0, NotOnTheGpuImage())
import pytest

rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/gpu"])
if rc:
    sys.exit(f"collection failed: {rc}")
sys.path.insert(0, "tests")
for name in ("engine", "engine.llm_engine", "engine.async_engine", "engine.cuda_graphs",
             "engine.memory_profile", "kernels.triton_attention", "kernels.triton_store_kv",
             "model_factory", "engine_helpers"):
    importlib.import_module(name)
from engine import EngineConfig, LLMEngine, SamplingParams  # the lazy facade's exports
print("IMPORTS OK")
"""


def test_gpu_tests_import_nothing_the_gpu_image_lacks():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(MISSING_THERE)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "IMPORTS OK" in log and " collected" in log, log[-2000:]
