"""GGUF files of each family, written the way llama.cpp writes them, load through the engine
and generate what transformers generates on the original Hugging Face checkpoint.

Each case: a tiny random checkpoint (`family_parity.save_random_model`), written as an F32
GGUF (`gguf_writer.write_family_gguf`), loaded by the engine (converted once into the
pagedesk cache); the greedy tokens must equal transformers' on the original directory, and
the converted config must state the same shape. Llama and Mistral files take the fast
Llama path, the others transformers' GGUF reader (`engine.gguf_generic`).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from engine import EngineConfig, LLMEngine, gguf_generic, gguf_loader
from engine.model_loader import load_model
from engine.models import UnsupportedModelError, model_path_of
from family_parity import check_logprobs_close, engine_greedy, hf_greedy, random_prompts
from family_parity import save_random_model
from gguf_writer import write_family_gguf

VOCAB = 259  # the byte tokenizer's
# Phi-3 below: the first prompt stays within its original context (32: short RoPE factors),
# the second starts past it (long ones). None crosses it while decoding: there transformers'
# generate() recomputes the whole cache with the long factors, which no paged engine does.
PROMPTS = random_prompts(VOCAB, [5, 40], seed=1)
NEW_TOKENS = 10
GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
           num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
LONGROPE = {  # Phi-3 below: head 16, half of it rotated, so 4 frequency factors of each kind
    "rope_type": "longrope", "rope_theta": 500.0, "partial_rotary_factor": 0.5,
    "short_factor": [1.0 + 0.125 * i for i in range(4)],  # exact in float32, as the file holds
    "long_factor": [2.0 + 0.5 * i for i in range(4)],
}
YARN = {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0,
        "original_max_position_embeddings": 64}

FAMILIES = {
    "qwen2-bias": ("qwen2", dict(GQA, rope_parameters={"rope_type": "default", "rope_theta": 5e2})),
    "qwen3-qk-norm-yarn": ("qwen3", dict(GQA, head_dim=16, rope_parameters=YARN)),
    "phi3-partial-longrope": ("phi3", dict(
        GQA, original_max_position_embeddings=32, rope_parameters=LONGROPE,
    )),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "gemma2-softcap-window": ("gemma2", dict(
        GQA, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,  # llama.cpp: 1/sqrt(head_dim)
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0,
    )),
    "gemma3-global-linear-rope": ("gemma3_text", dict(  # 2 local layers (llama.cpp: 5 of 6)
        GQA, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0},
        },
    )),
    "mistral-as-llama": ("mistral", dict(GQA, head_dim=16, sliding_window=None)),
}  # fmt: skip
# Config entries that may differ after a round trip through a GGUF.
_MAY_DIFFER = {
    "architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype",
    "rms_norm_eps", "layer_norm_epsilon",  # stored as float32
    "tie_word_embeddings",  # llama.cpp writes GPT-2's tied head out as its own tensor
    "n_inner",  # GPT-2: None means 4 * n_embd, which the file states
}  # fmt: skip


@pytest.fixture
def family_gguf(tmp_path, request):
    model_type, fields = FAMILIES[request.param]
    hf_dir = save_random_model(tmp_path / "hf", model_type, **fields)
    return hf_dir, write_family_gguf(hf_dir, tmp_path / f"{request.param}.gguf")


@pytest.mark.parametrize("family_gguf", list(FAMILIES), indirect=True)
def test_gguf_matches_transformers_on_the_original(family_gguf):
    hf_dir, gguf_path = family_gguf
    engine = LLMEngine(EngineConfig(model=str(gguf_path), device="cpu", dtype="float32"))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for i, prompt in enumerate(PROMPTS):  # one at a time: LongRoPE picks its factors per step
        want = hf_greedy(hf, prompt, NEW_TOKENS)
        got = engine_greedy(engine, [prompt], NEW_TOKENS)[0]
        assert got[0] == want[0], f"prompt {i}: {got[0]} != {want[0]}"
        check_logprobs_close(got, want, what=f"prompt {i}")
    assert model_path_of(engine.loaded.hf_config).kind == "native"
    # The copy holds the original weights (Gemma's norms: 1 + w - 1, a rounding away).
    ours = load_file(gguf_loader.convert_gguf(gguf_path) / "model.safetensors")
    theirs = load_file(hf_dir / "model.safetensors")
    assert set(ours) - set(theirs) <= {"lm_head.weight"} and set(theirs) <= set(ours)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-7, rtol=0, msg=name)
    original, converted = AutoConfig.from_pretrained(hf_dir), engine.loaded.hf_config
    if original.model_type == "mistral":  # stored as llama: the fast path makes a LlamaConfig
        assert converted.model_type == "llama" and converted.head_dim == original.head_dim
        return
    want, got = original.to_dict(), converted.to_dict()
    differ = {k: (want.get(k), got.get(k)) for k in {*want, *got} - _MAY_DIFFER
              if want.get(k) != got.get(k)}  # fmt: skip
    assert not differ, f"the converted config differs: {differ}"


@pytest.mark.parametrize("family_gguf", ["qwen2-bias"], indirect=True)
def test_tokenizer_matches_the_original_and_transformers_gguf_reader(family_gguf):
    hf_dir, gguf_path = family_gguf
    ours = AutoTokenizer.from_pretrained(gguf_loader.convert_gguf(gguf_path))
    original = AutoTokenizer.from_pretrained(hf_dir)
    reference = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    texts = ["Hello, world!", "  two spaces, 12345", "émigré 日本語 🙂", "<|im_start|>hi<|im_end|>"]
    for text in texts:
        assert ours.encode(text) == original.encode(text) == reference.encode(text), text
    assert ours.chat_template == original.chat_template
    assert (ours.bos_token, ours.eos_token) == (original.bos_token, original.eos_token)


@pytest.mark.parametrize("family_gguf", ["gemma2-softcap-window"], indirect=True)
def test_generic_conversion_is_cached_and_float16_sharded_when_big(
    family_gguf, tmp_path, monkeypatch
):
    hf_dir, gguf_path = family_gguf
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_loader, "FP32_MAX_PARAMS", 0)
    monkeypatch.setattr(gguf_loader, "SHARD_BYTES", 50_000)
    converted = gguf_loader.convert_gguf(gguf_path)
    assert gguf_loader.is_complete(converted)
    shards = sorted(converted.glob("model-*.safetensors"))
    assert len(shards) > 1 and (converted / "model.safetensors.index.json").is_file()
    weights = {name: t for shard in shards for name, t in load_file(shard).items()}
    original = load_file(hf_dir / "model.safetensors")
    assert set(weights) == set(original)
    for name, tensor in original.items():  # norms: stored as 1 + w, read back as w
        assert weights[name].dtype == torch.float16
        torch.testing.assert_close(weights[name], tensor.half(), atol=1e-3, rtol=0, msg=name)

    def fail(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_generic, "write_converted", fail)
    assert gguf_loader.convert_gguf(gguf_path) == converted


def test_missing_tensor_is_an_error_not_a_random_weight(tmp_path):
    hf_dir = save_random_model(tmp_path / "hf", "qwen3", **dict(GQA, head_dim=16))
    gguf_path = write_family_gguf(hf_dir, tmp_path / "q.gguf", drop=["blk.1.attn_k_norm.weight"])
    with pytest.raises(UnsupportedModelError, match="lacks tensors.*layers.1.self_attn.k_norm"):
        LLMEngine(EngineConfig(model=str(gguf_path), device="cpu", dtype="float32"))


def test_unsupported_architecture_is_named_with_the_supported_ones(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError) as err:
        # The public load path (test_model_loading.py's GGUF tests cover the llama one).
        load_model(str(tmp_path / "x.gguf"), dtype=torch.float32, device=torch.device("cpu"))
    assert "'mamba'" in str(err.value)
    assert all(arch in str(err.value) for arch in gguf_loader.SUPPORTED_GGUF_ARCHITECTURES)
    assert set(gguf_generic.GENERIC_ARCHITECTURES) == set(
        gguf_loader.SUPPORTED_GGUF_ARCHITECTURES
    ) - {"llama"}
