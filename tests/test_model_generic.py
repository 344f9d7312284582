"""The generic path (engine.models.transformers_backend) against transformers itself.

Architectures pagedesk has no native implementation of (Granite, OLMo 2, Cohere) run
through transformers' own modelling code with pagedesk's paged attention plugged in. Each
gives transformers' greedy tokens (and close top-5 logprobs) in one continuous batch whose
prompts share prefixes (prefix-cache hits) and whose cache is too small for all of them
(preemption and recompute) — the stats history proves both happened. The paged attention
function refuses a mask, so these runs also show that transformers built none.

Engines load the checkpoints by path, through the registry (which sends these
architectures down the generic path).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.model_loader import LoadedModel, _weight_files, build_model, max_model_len_of
from engine.models import UnsupportedModelError
from engine.models.transformers_backend import TransformersForCausalLM, generic_refusal
from engine_helpers import run_to_completion
from family_parity import (
    TOP_K,
    assert_matches_transformers,
    check_logprobs_close,
    hf_greedy,
    random_prompts,
    save_random_model,
)

NEW_TOKENS = 12
BLOCK_SIZE = 4
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256,
)  # fmt: skip
# Each architecture's own knobs set away from their neutral defaults, so a head or
# multiplier the generic path failed to apply would show.
ARCHITECTURES = {
    "granite": dict(
        embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
        logits_scaling=4.0, tie_word_embeddings=True,
    ),  # fmt: skip
    "olmo2": dict(tie_word_embeddings=False),
    "cohere": dict(logit_scale=0.25, use_qk_norm=False),  # tied by default
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    model_type = request.param
    path = tmp_path_factory.mktemp(model_type) / model_type
    return save_random_model(path, model_type, **TINY, **ARCHITECTURES[model_type])


def generic_engine(path, **fields) -> LLMEngine:
    config = dict(model=str(path), device="cpu", dtype="float32", block_size=BLOCK_SIZE)
    engine = LLMEngine(EngineConfig(**{**config, **fields}))
    assert isinstance(engine.loaded.model, TransformersForCausalLM), engine.model_path
    return engine


def direct_engine(path, **fields) -> LLMEngine:
    """An engine over TransformersForCausalLM even where the registry picks a native family."""
    config = AutoConfig.from_pretrained(path)
    model = build_model(
        TransformersForCausalLM, config, _weight_files(path), torch.float32, torch.device("cpu")
    )
    loaded = LoadedModel(
        model, config, AutoTokenizer.from_pretrained(path), path.name, max_model_len_of(config), path
    )
    engine_config = dict(model=str(path), device="cpu", dtype="float32", block_size=BLOCK_SIZE)
    return LLMEngine(EngineConfig(**{**engine_config, **fields}), loaded=loaded)


def kernels_accept(option: str) -> bool:
    import inspect

    import kernels

    return option in inspect.signature(kernels.unified_attention).parameters


def shared_prefix_prompts(vocab_size: int) -> list[list[int]]:
    """Five prompts; four start with the same 12 tokens (three full blocks of 4)."""
    prefix = random_prompts(vocab_size, [12], seed=7)[0]
    tails = random_prompts(vocab_size, [3, 9, 5, 14, 2], seed=8)
    return [prefix + tails[0], prefix + tails[1], tails[2] + prefix, prefix + tails[3],
            prefix + tails[4]]  # fmt: skip


def greedy_outputs(engine: LLMEngine, prompts: list[list[int]], prefix: str = "req"):
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=TOP_K
    )
    outs = run_to_completion(engine, prompts, params, prefix=prefix)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


def test_mixed_batch_with_prefix_hits_and_preemption_matches_transformers(checkpoint):
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompts = shared_prefix_prompts(hf.config.vocab_size)
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    # 14 blocks of 4 = 56 slots for five requests of 26-38 tokens each: the cache runs out
    # while they decode, and chunks of 16 tokens spread the prefills over several steps, so
    # later prompts find the shared prefix already cached.
    engine = generic_engine(checkpoint, num_kv_blocks=14, max_num_batched_tokens=16)
    got = greedy_outputs(engine, prompts)
    stats = list(engine.stats_history)
    assert sum(s.num_preemptions for s in stats) > 0, "no request was preempted"
    assert sum(s.prefix_cache_hit_tokens for s in stats) > 0, "no prefix-cache hit"
    assert any(s.prefill_tokens and s.decode_tokens for s in stats), "no mixed step"
    for i, (ours, theirs) in enumerate(zip(got, expected)):
        assert ours[0] == theirs[0], f"prompt {i}: {ours[0]} != {theirs[0]}"
        check_logprobs_close(ours, theirs, steps=NEW_TOKENS, what=f"prompt {i}")


def test_alone_and_chunked_batch_match_transformers(checkpoint):
    """The shared family harness: each prompt alone, then all in one chunked mixed batch."""
    prompts = random_prompts(259, [5, 30, 12, 1], seed=2)
    engine = assert_matches_transformers(checkpoint, prompts, new_tokens=NEW_TOKENS)
    assert engine.model_path.kind == "generic"


def test_two_generic_engines_step_interleaved(tmp_path):
    """The paging data travel with each forward call: two engines of different
    architectures stepped in turn in one process do not see each other's caches."""
    paths = {
        mt: save_random_model(tmp_path / mt, mt, **TINY, **ARCHITECTURES[mt])
        for mt in ("granite", "cohere")
    }
    engines = {mt: generic_engine(p, num_kv_blocks=64) for mt, p in paths.items()}
    prompts = random_prompts(259, [7, 19], seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for mt, engine in engines.items():
        for i, p in enumerate(prompts):
            engine.add_request(f"{mt}-{i}", p, params)
    done: dict[str, list[int]] = {}
    while any(e.has_unfinished_requests() for e in engines.values()):
        for engine in engines.values():
            if engine.has_unfinished_requests():
                done.update(
                    (o.request_id, o.outputs[0].token_ids) for o in engine.step() if o.finished
                )
    for mt, path in paths.items():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for i, p in enumerate(prompts):
            assert done[f"{mt}-{i}"] == hf_greedy(hf, p, NEW_TOKENS)[0], f"{mt} prompt {i}"


LAYER_OPTIONS = {
    # Cohere 2: sliding-window layers (window 6) beside a full-attention one.
    "cohere2": ("sliding_window", dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"])),
    # Gemma 2's attention logit soft-capping (small, so that it matters), and its window
    # (Gemma 2 has a native family too: this builds the generic model directly).
    "gemma2": ("softcap", dict(head_dim=16, attn_logit_softcapping=2.0, sliding_window=6)),
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(LAYER_OPTIONS))
def test_per_layer_window_and_softcap_reach_the_kernels(model_type, tmp_path):
    """Contexts well past the window: the layer's window (and soft-cap) must be applied."""
    option, fields = LAYER_OPTIONS[model_type]
    if not all(kernels_accept(o) for o in ("sliding_window", option)):
        pytest.skip(f"kernels.unified_attention does not take {option} yet")
    path = save_random_model(tmp_path / model_type, model_type, **{**TINY, **fields})
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = random_prompts(hf.config.vocab_size, [5, 17, 26], seed=11)
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    engine = direct_engine(path, max_num_batched_tokens=16)
    for i, (ours, theirs) in enumerate(zip(greedy_outputs(engine, prompts), expected)):
        assert ours[0] == theirs[0], f"prompt {i}: {ours[0]} != {theirs[0]}"
        check_logprobs_close(ours, theirs, steps=NEW_TOKENS, what=f"prompt {i}")


def test_kernels_without_window_option(tmp_path, monkeypatch):
    """Kernels that take no sliding_window: a windowed model runs exactly within its window
    (windowed attention is full attention there) and is refused clearly past it."""
    import kernels

    real = kernels.unified_attention

    def unified_attention(q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale,
                          out=None, *, backend=None, max_query_len=None, max_seq_len=None,
                          split_kv=None):  # fmt: skip
        return real(q, k_cache, v_cache, cu_query_lens, seq_lens, block_tables, scale, out,
                    backend=backend, max_query_len=max_query_len, max_seq_len=max_seq_len,
                    split_kv=split_kv)  # fmt: skip

    monkeypatch.setattr(kernels, "unified_attention", unified_attention)
    fields = dict(sliding_window=32, layer_types=["sliding_attention", "full_attention"])
    path = save_random_model(tmp_path / "cohere2", "cohere2", **{**TINY, **fields})
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = random_prompts(hf.config.vocab_size, [9, 20], seed=5)
    engine = generic_engine(path, max_model_len=32)  # no context past the window
    assert engine.max_model_len == 32
    for (ours, _), p in zip(greedy_outputs(engine, prompts), prompts):
        assert ours == hf_greedy(hf, p, NEW_TOKENS)[0]
    with pytest.raises(UnsupportedModelError, match=r"sliding-window attention \(window 32\)"):
        greedy_outputs(generic_engine(path), [prompts[1] * 2], prefix="long")


def test_buffers_rebuilt_and_embeddings_tied(tmp_path):
    """Non-persistent buffers (RoPE frequencies) are recomputed after to_empty, in float32
    even in a bfloat16 model; a tied head shares the embedding and loads from a checkpoint
    without lm_head.weight."""
    path = save_random_model(tmp_path / "granite", "granite", **TINY, **ARCHITECTURES["granite"])
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    config = AutoConfig.from_pretrained(path)
    model = build_model(
        TransformersForCausalLM, config, _weight_files(path), torch.bfloat16, torch.device("cpu")
    )
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ours_rope, theirs_rope = model.hf.model.rotary_emb, hf.model.rotary_emb
    assert ours_rope.inv_freq.dtype == torch.float32
    torch.testing.assert_close(ours_rope.inv_freq, theirs_rope.inv_freq, rtol=0, atol=0)
    assert model.hf.lm_head.weight is model.hf.model.embed_tokens.weight
    torch.testing.assert_close(
        model.hf.model.embed_tokens.weight.float(),
        hf.model.embed_tokens.weight.bfloat16().float(),
    )
    # The caller's config keeps its own attention implementation.
    assert config._attn_implementation != "pagedesk_paged"


def test_load_weights_refuses_bad_checkpoints(tmp_path):
    path = save_random_model(tmp_path / "olmo2", "olmo2", **TINY)
    config = AutoConfig.from_pretrained(path)
    state = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()

    def fresh() -> TransformersForCausalLM:
        with torch.device("meta"):
            model = TransformersForCausalLM(config)
        return model.to_empty(device="cpu")

    fresh().load_weights(state.items())  # the whole checkpoint loads
    wrong_shape = {**state, "lm_head.weight": torch.zeros(3, 64)}
    with pytest.raises(ValueError, match="lm_head.weight.*shape"):
        fresh().load_weights(wrong_shape.items())
    with pytest.raises(ValueError, match="Unexpected weight 'model.extra.weight'"):
        fresh().load_weights([*state.items(), ("model.extra.weight", torch.zeros(1))])
    partial = {k: v for k, v in state.items() if not k.startswith("model.layers.1.")}
    with pytest.raises(ValueError, match="missing.*model.layers.1"):
        fresh().load_weights(partial.items())


def test_code_that_drops_the_paging_data_is_refused_at_load(tmp_path, monkeypatch):
    """A decoder layer that does not pass **kwargs down: the load's probe pass says so."""
    from transformers.models.granite import modeling_granite

    from engine.models.transformers_backend import PAGING_KWARG

    path = save_random_model(tmp_path / "granite", "granite", **TINY)
    layer_forward = modeling_granite.GraniteDecoderLayer.forward

    def forward(self, hidden_states, **kwargs):
        kwargs.pop(PAGING_KWARG, None)
        return layer_forward(self, hidden_states, **kwargs)

    monkeypatch.setattr(modeling_granite.GraniteDecoderLayer, "forward", forward)
    with pytest.raises(UnsupportedModelError, match=r"GraniteAttention .*\*\*kwargs"):
        build_model(TransformersForCausalLM, AutoConfig.from_pretrained(path),
                    _weight_files(path), torch.float32, torch.device("cpu"))  # fmt: skip


def _without_attention_backend() -> str:
    """A decoder-only model type whose transformers class lacks _supports_attention_backend."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for model_type in ("stablelm", "bloom", "falcon", "gpt_neo", "mpt", "biogpt", "xglm"):
        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, ""), None)
        if cls is not None and not getattr(cls, "_supports_attention_backend", False):
            return model_type
    pytest.skip("every candidate supports attention backends in this transformers")


REFUSALS = {
    "encoder-decoder T5": (
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
        "T5ForConditionalGeneration",
        "encoder-decoder",
    ),
    "encoder-decoder BART": (
        {"model_type": "bart", "architectures": ["BartForConditionalGeneration"]},
        "BartForConditionalGeneration",
        "encoder-decoder",
    ),
    "custom code": (
        {
            "model_type": "pagedesk_custom",
            "architectures": ["PagedeskCustomForCausalLM"],
            "auto_map": {"AutoModelForCausalLM": "modeling_custom.PagedeskCustomForCausalLM"},
        },
        "PagedeskCustomForCausalLM",
        "trust_remote_code",
    ),
    "custom class of a known type": (
        {"model_type": "llama", "architectures": ["MyOwnLlamaForCausalLM"]},
        "MyOwnLlamaForCausalLM",
        "trust_remote_code",
    ),
    "encoder only": (
        {"model_type": "bert", "architectures": ["BertForMaskedLM"]},
        "BertForMaskedLM",
        "not a causal language model",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_architecture(case):
    raw, arch, reason = REFUSALS[case]
    message = generic_refusal(raw)
    assert message is not None and arch in message and reason in message, message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_model_without_attention_backend_is_refused():
    model_type = _without_attention_backend()
    config = AutoConfig.for_model(model_type, **TINY)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    config.architectures = [arch]
    with pytest.raises(UnsupportedModelError, match=f"{arch}.*_supports_attention_backend"):
        with torch.device("meta"):
            TransformersForCausalLM(config)
    # The raw config.json's two fields are enough to tell.
    assert arch in generic_refusal({"model_type": model_type, "architectures": [arch]})


def test_encoder_decoder_config_is_refused_at_construction():
    config = AutoConfig.for_model("t5", d_model=64, num_layers=2, num_heads=4)
    config.architectures = ["T5ForConditionalGeneration"]
    with pytest.raises(UnsupportedModelError, match="T5ForConditionalGeneration.*encoder-decoder"):
        with torch.device("meta"):
            TransformersForCausalLM(config)


def test_supported_configs_have_no_refusal(checkpoint):
    config = AutoConfig.from_pretrained(checkpoint)
    assert generic_refusal(config) is None
    assert generic_refusal({"model_type": config.model_type, "architectures": config.architectures}) is None
