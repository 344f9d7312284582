"""Tensor parallelism on CUDA: NCCL between GPUs, rank r on cuda:r. Needs two GPUs
(`pytest -m gpu`); prepared on a machine without one, so it has not run yet."""

from __future__ import annotations

import pytest
import torch

TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not TWO_GPUS, reason="needs two CUDA devices")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_factory import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("gpu-tp") / "llama", num_heads=8,
                             num_kv_heads=2, head_dim=64, num_layers=4, hidden_size=512)


def test_tp2_on_two_gpus_matches_tp1_and_uses_nccl(model_dir):
    from engine import EngineConfig, LLMEngine
    from engine_helpers import greedy, run_to_completion

    prompts = [[(13 * i + j) % 250 + 3 for j in range(n)] for i, n in enumerate((1, 17, 64, 200))]
    tokens = {}
    for tp in (1, 2):
        engine = LLMEngine(EngineConfig(model=str(model_dir), device="cuda", dtype="float32",
                                        tensor_parallel_size=tp))
        if tp == 2:
            assert type(engine.tp_executor.group.device_group).__name__ == "ProcessGroupNCCL"
            assert engine.device == torch.device("cuda:0")
        outs = run_to_completion(engine, prompts, greedy(24))
        tokens[tp] = [o.outputs[0].token_ids for o in outs]
        engine.release()
    assert tokens[1] == tokens[2]
