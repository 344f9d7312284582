"""Every native family against transformers, on tiny random checkpoints built with
transformers' own config classes (see family_parity.py for the rules: greedy ids token for
token, top-5 logprobs close, each prompt alone and all in a mixed, chunked batch).

Prompts (up to 41 tokens) are longer than the 8-token sliding windows and the 16-token RoPE
regimes below, so windows, softcaps and scaled RoPE are all exercised.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, EngineConfig, LLMEngine, SamplingParams
from engine.models import model_path_of
from engine_helpers import run_to_completion
from family_parity import (
    assert_matches_transformers,
    check_logprobs_close,
    engine_greedy,
    hf_greedy,
    random_prompts,
    save_random_model,
)

VOCAB = 259  # the byte tokenizer's
PROMPTS = random_prompts(VOCAB, [3, 17, 30, 41])
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
GQA = dict(SMALL, intermediate_size=128, num_key_value_heads=2, head_dim=16)
GQA_DEFAULT_HEAD_DIM = {k: v for k, v in GQA.items() if k != "head_dim"}  # 64 / 4 = 16

FAMILIES = {
    "llama": ("llama", GQA),
    "llama-tied": ("llama", dict(GQA, tie_word_embeddings=True)),
    "mistral-sliding-window": ("mistral", dict(GQA, sliding_window=8)),
    "qwen2-bias": ("qwen2", GQA_DEFAULT_HEAD_DIM),
    "qwen3-qk-norm": ("qwen3", GQA),
    "phi3-fused": ("phi3", GQA_DEFAULT_HEAD_DIM),
    "opt": ("opt", dict(SMALL, ffn_dim=128, word_embed_proj_dim=64)),
    "opt-350m-shape": (  # layer norms after the blocks, a projected embedding
        "opt", dict(SMALL, ffn_dim=128, word_embed_proj_dim=32, do_layer_norm_before=False),
    ),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "gemma": ("gemma", GQA),
    "gemma2-softcap-window": ("gemma2", dict(
        GQA, sliding_window=8, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0,
    )),
    "gemma3-local-rope": ("gemma3_text", dict(
        GQA, sliding_window=8, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        },
    )),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FAMILIES))
def test_family_matches_transformers(tmp_path, case):
    model_type, fields = FAMILIES[case]
    path = save_random_model(tmp_path / case, model_type, **fields)
    engine = assert_matches_transformers(path, PROMPTS)
    assert model_path_of(engine.loaded.hf_config).kind == "native"


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}  # fmt: skip


@pytest.mark.parametrize("rope_type", list(ROPE_SCALINGS))
def test_llama_rope_scaling_matches_transformers(tmp_path, rope_type):
    rope = {"rope_theta": 500.0, **ROPE_SCALINGS[rope_type]}
    path = save_random_model(tmp_path / rope_type, "llama", **dict(GQA, rope_parameters=rope))
    assert_matches_transformers(path, PROMPTS)


def test_phi3_longrope_short_factors_within_the_original_context_long_past_it(tmp_path):
    """Phi-3's su/longrope: short factors while the context stays within
    original_max_position_embeddings (32), long ones once it is past it. A 16-token prompt
    with 16 new tokens stays within; a 41-token prompt starts past it.

    (A sequence that crosses 32 while decoding is not compared: transformers then drops its
    cache and recomputes every token with the long factors; pagedesk, like vLLM, keeps the
    tokens already cached and uses the long factors from that step on. Likewise a prefix-cache
    hit on blocks computed in the short regime is reused by a longer prompt.)"""
    half = 16 // 2
    rope = {
        "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
        "short_factor": [1.0 + 0.1 * i for i in range(half)],
        "long_factor": [2.0 + 0.5 * i for i in range(half)],
    }  # fmt: skip
    # Phi3Config's own original_max_position_embeddings overrides the one in rope_parameters.
    fields = dict(GQA_DEFAULT_HEAD_DIM, rope_parameters=rope, original_max_position_embeddings=32)
    path = save_random_model(tmp_path / "phi3", "phi3", **fields)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["original_max_position_embeddings"] == 32
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", block_size=8))
    for length, new, seed in ((16, 16, 3), (41, 24, 4)):  # no shared prefix: see the note
        prompt = random_prompts(VOCAB, [length], seed=seed)[0]
        want = hf_greedy(hf, prompt, new)
        got = engine_greedy(engine, [prompt], new)[0]
        assert got[0] == want[0], f"{length}-token prompt"
        check_logprobs_close(got, want, steps=new)


def test_bf16_checkpoint_in_shards_with_an_index(tmp_path):
    """A bfloat16 checkpoint split into several safetensors files with an index loads into a
    float32 engine and matches transformers reading the same files."""
    path = save_random_model(tmp_path / "sharded", "qwen3", dtype=torch.bfloat16,
                             max_shard_size="40KB", **GQA)  # fmt: skip
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert_matches_transformers(path, PROMPTS[1:3])


def test_generation_config_eos_list_stops_generation(tmp_path):
    """generation_config.json's eos_token_id list: each id ends a reply (reported as the
    stop_reason, as vLLM does), min_tokens holds them back, ignore_eos ignores them."""
    path = save_random_model(tmp_path / "eos", "llama", **GQA)
    free_run = LLM(model=str(path), device="cpu", dtype="float32")
    eos = free_run.tokenizer.eos_token_id
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    # A prompt whose greedy reply never meets the tokenizer's own EOS.
    runs = free_run.generate(random_prompts(VOCAB, [20] * 8, seed=5), greedy)
    prompt, tokens = next(
        (r.prompt_token_ids, r.outputs[0].token_ids) for r in runs if eos not in r.outputs[0].token_ids
    )
    stop_at = next(i for i, t in enumerate(tokens) if t not in tokens[:i] and i >= 2)
    config = json.loads((path / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], tokens[stop_at]]
    (path / "generation_config.json").write_text(json.dumps(config))

    llm = LLM(model=str(path), device="cpu", dtype="float32")
    engine = llm.engine
    outs = run_to_completion(engine, [prompt] * 3, [
        SamplingParams(temperature=0.0, max_tokens=12),
        SamplingParams(temperature=0.0, max_tokens=12, min_tokens=stop_at + 2),
        greedy,
    ])  # fmt: skip
    stopped, held, ignored = (o.outputs[0] for o in outs)
    assert stopped.token_ids == tokens[: stop_at + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == tokens[stop_at]
    assert tokens[stop_at] not in held.token_ids[: stop_at + 2]
    assert ignored.token_ids == tokens and ignored.finish_reason == "length"


def test_vllm_quickstart_opt_125m_from_the_hf_cache(tmp_path, monkeypatch):
    """`LLM(model="facebook/opt-125m")`, the first example in vLLM's documentation: a tiny
    random OPT in a Hugging Face cache under that repo id loads offline and generates as
    transformers does."""
    source = save_random_model(tmp_path / "opt", "opt", **dict(SMALL, ffn_dim=128, word_embed_proj_dim=64))
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--facebook--opt-125m"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    llm = LLM(model="facebook/opt-125m", device="cpu", dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outputs = llm.generate(["Hello, my name is", "The capital of France is"], params)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    for out in outputs:
        want, _ = hf_greedy(hf, out.prompt_token_ids, 16)
        assert out.outputs[0].token_ids == want
    assert llm.engine.loaded.name == "facebook/opt-125m"


def test_sliding_window_waste_is_reported(tmp_path):
    """pagedesk keeps every block of a windowed layer; the KV panel's numbers count the blocks
    no query can read again. Gemma 2 here: layer 0 slides (W = 8), layer 1 is global."""
    from engine import kv_metrics

    model_type, fields = FAMILIES["gemma2-softcap-window"]
    path = save_random_model(tmp_path / "g2", model_type, **fields)
    engine = LLMEngine(EngineConfig(model=str(path), device="cpu", dtype="float32", block_size=4))
    assert engine.layer_windows == (8, None)
    engine.add_request("long", PROMPTS[3], SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()  # the 41-token prompt, prefilled
    waste = kv_metrics.window_waste(engine.kv_snapshot())
    # The next token (position 41) sees positions 34..41: blocks 0..7 (positions 0..31) and
    # none after are wholly outside, in the one sliding layer.
    assert (waste.num_sliding_layers, waste.num_layers, waste.window) == (1, 2, 8)
    assert waste.layer_blocks == (41 - 8 + 1) // 4 == 8
    per_layer_token = 2 * 2 * 16 * 4  # K and V, 2 KV heads of 16, float32
    assert waste.bytes == 8 * 4 * per_layer_token
    assert "W = 8" in waste.describe() and "1 of 2 layers" in waste.describe()
