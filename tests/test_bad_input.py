"""Bad input gets a clear error that names the problem, and the engine keeps serving."""

from __future__ import annotations

import json

import pytest

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine_helpers import greedy, run_to_completion


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine(max_model_len=256)


def serves_normally(engine: LLMEngine) -> None:
    out = run_to_completion(engine, ["The capital of France is"], greedy(4), prefix="ok")
    assert len(out[0].outputs[0].token_ids) == 4
    assert engine.kv_snapshot().num_in_use == 0


def test_empty_prompt(engine):
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("e1", "", greedy(4))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("e2", [], greedy(4))
    serves_normally(engine)


def test_too_long_prompt(engine):
    with pytest.raises(ValueError, match=r"prompt is too long: 300 tokens.*256"):
        engine.add_request("long", [42] * 300, greedy(4))
    serves_normally(engine)


def test_token_ids_outside_the_vocabulary(engine):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request("oov", [1, 2, 10**9], greedy(4))
    serves_normally(engine)


@pytest.mark.parametrize(
    "field,value",
    [("max_tokens", 0), ("max_tokens", -3), ("temperature", -0.5), ("top_p", 0.0),
     ("top_p", 1.5), ("top_k", 0), ("top_k", -7)],
)
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_duplicate_request_id(engine):
    engine.add_request("dup", "Hello", greedy(2))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", "Hello", greedy(2))
    engine.abort_request("dup")
    serves_normally(engine)


def test_a_bad_prompt_in_a_batch_fails_the_call_not_the_engine(default_loaded):
    llm = LLM.from_engine(
        LLMEngine(EngineConfig(device="cpu", dtype="float32", max_model_len=64,
                               cpu_weight_dtype="float32"), loaded=default_loaded)
    )
    with pytest.raises(ValueError, match="too long"):
        llm.generate(["fine", "x " * 200], greedy(3), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    outs = llm.generate(["Hello", "World"], greedy(3), use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]


def test_unknown_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises((FileNotFoundError, ValueError, OSError), match="no-such-model"):
        LLMEngine(EngineConfig(model=str(missing), device="cpu"))


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "bartish"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bart", "architectures": ["BartForConditionalGeneration"],
        "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "vocab_size": 50,
    }))
    with pytest.raises(ValueError, match=r"BartForConditionalGeneration is an encoder-decoder"):
        LLMEngine(EngineConfig(model=str(folder), device="cpu"))


def test_bad_engine_config_names_the_field():
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=12)
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="int3").resolve_dtype(__import__("torch").device("cpu"))


def test_triton_backend_where_it_cannot_run_is_refused_clearly(default_loaded, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton.*cannot run on cpu"):
        LLMEngine(EngineConfig(device="cpu", attention_backend="triton"), loaded=default_loaded)
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda-magic'"):
        LLMEngine(EngineConfig(device="cpu", attention_backend="cuda-magic"), loaded=default_loaded)
    engine = LLMEngine(EngineConfig(device="cpu", cpu_weight_dtype="float32"), loaded=default_loaded)
    assert engine.attention_backend == "torch"
    run_to_completion(engine, ["Hi"], greedy(2))
    assert engine.last_step_stats.attention_backend == "torch"
