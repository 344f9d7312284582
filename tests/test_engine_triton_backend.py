"""End to end: the engine on the Triton kernels (run by Triton's CPU interpreter) gives the
same greedy tokens as on the torch kernels, for a small random Llama on a mixed batch.

TRITON_INTERPRET=1 must be set before Triton kernels are imported, and it would turn every
later Triton use in this process into the interpreter too, so the comparison runs in a child
process and prints its result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
sys.path.insert(0, "tests")
from model_factory import make_random_llama
from engine import EngineConfig, LLMEngine
from engine_helpers import greedy, run_to_completion

path = make_random_llama(sys.argv[1], num_heads=4, num_kv_heads=2, head_dim=32, num_layers=2)
prompts = [[(7 * i + 3 * j) % 250 + 3 for j in range(n)] for i, n in enumerate((1, 9, 23, 40))]
result = {}
for backend in ("torch", "triton"):
    # A small token budget chunks the long prompts, so steps mix decodes and prefills.
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                    block_size=8, max_num_batched_tokens=24,
                                    attention_backend=backend))
    outs = run_to_completion(engine, prompts, greedy(12))
    mixed = any(s.prefill_tokens and s.decode_tokens for s in engine.stats_history)
    result[backend] = {"tokens": [o.outputs[0].token_ids for o in outs],
                       "backend": engine.attention_backend, "mixed": mixed}
print(json.dumps(result))
"""


@pytest.mark.timeout(600)
def test_triton_backend_matches_torch_backend(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "model")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["triton"]["backend"] == "triton"
    assert result["torch"]["backend"] == "torch"
    assert result["triton"]["mixed"], "no step mixed prefill and decode tokens"
    assert result["triton"]["tokens"] == result["torch"]["tokens"]
    assert all(len(t) == 12 for t in result["torch"]["tokens"])
