"""EngineConfig.cpu_weight_dtype: what "auto" picks from the checkpoint's own precision
(engine/checkpoint_precision.py), and that bfloat16 storage keeps the bundled model's quality
against transformers' float32 forward of the same GGUF."""

from __future__ import annotations

import math

import pytest
import torch

from engine import LLM, EngineConfig, SamplingParams
from engine.checkpoint_precision import matrix_precision
from engine.model_loader import resolve_model
from kernels import cpu_linear

needs_kernel = pytest.mark.skipif(cpu_linear.load() is None, reason="needs AVX2/FMA and a C++ compiler")

# Public-domain text (Austen), the same kind benchmarks/bf16_quality.py scores.
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such a "
    "man may be on his first entering a neighbourhood, this truth is so well fixed in the minds "
    "of the surrounding families, that he is considered the rightful property of some one or "
    "other of their daughters."
)


@pytest.mark.parametrize("dtype,expected", [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"),
                                            (torch.float16, "float16")])  # fmt: skip
def test_precision_of_a_safetensors_folder_is_its_matrices_dtype(tmp_path, dtype, expected):
    from model_factory import make_random_llama

    folder = make_random_llama(tmp_path / "m", num_layers=1, dtype=dtype)
    assert matrix_precision(folder) == expected


def test_the_bundled_gguf_is_quantized_and_an_unreadable_source_is_unknown(tmp_path):
    assert matrix_precision(resolve_model(None)[1]) == "quantized"
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    assert matrix_precision(tmp_path) is None


@pytest.mark.parametrize("precision,expected", [
    ("quantized", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("float16", torch.float32), ("float32", torch.float32), (None, torch.float32),
])  # fmt: skip
def test_auto_keeps_bfloat16_only_where_the_checkpoint_loses_next_to_nothing(precision, expected):
    assert EngineConfig().resolve_cpu_weight_dtype(precision) == expected
    assert EngineConfig(cpu_weight_dtype="float32").resolve_cpu_weight_dtype(precision) == torch.float32
    assert EngineConfig(cpu_weight_dtype="bfloat16").resolve_cpu_weight_dtype(precision) == torch.bfloat16


@needs_kernel
def test_engine_packs_a_bfloat16_checkpoint_in_bfloat16_and_float32_in_float32(tmp_path):
    from model_factory import make_random_llama

    for dtype in (torch.bfloat16, torch.float32):
        folder = make_random_llama(tmp_path / str(dtype), num_layers=1, dtype=dtype)
        runner = LLM(str(folder), num_kv_blocks=16).engine.runner
        assert runner.cpu_weight_dtype == dtype
        assert runner.model.lm_head.weight.dtype == dtype and runner.model.lm_head.packed


def mean_nll(logprobs: list, token_ids: list[int]) -> float:
    return -sum(logprobs[i][token_ids[i]] for i in range(1, len(token_ids))) / (len(token_ids) - 1)


@needs_kernel
def test_bundled_model_in_bfloat16_storage_scores_text_as_transformers_float32(hf_smollm2_gguf):
    """"auto" on the bundled Q4_1 model stores bfloat16; its perplexity on a fixed text stays
    within 1% of transformers' float32 forward of the same GGUF (measured: ~0.1%), while
    greedy text is still produced and the difference from exact is real."""
    llm = LLM(num_kv_blocks=64)
    assert llm.engine.runner.cpu_weight_dtype == torch.bfloat16
    ids = llm.engine.tokenizer(TEXT)["input_ids"]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    ours = mean_nll(llm.generate([ids], params)[0].prompt_logprobs, ids)
    with torch.no_grad():
        logits = hf_smollm2_gguf(torch.tensor([ids])).logits[0, :-1].float()
    reference = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))
    assert math.exp(ours) == pytest.approx(math.exp(reference), rel=0.01)
    assert abs(ours - reference) > 1e-5  # bf16 storage is in effect, not exact float32
