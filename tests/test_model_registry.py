"""Which path runs a config: native families first, the generic transformers path for other
decoder-only architectures, and a one-sentence refusal naming the architecture otherwise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.models import (
    NATIVE_FAMILIES,
    SUPPORTED_ARCHITECTURES,
    UnsupportedModelError,
    get_model_class,
    model_path_of,
)


def declared(**fields) -> SimpleNamespace:
    """What a raw config.json declares (the loader judges it before transformers reads it)."""
    fields.setdefault("architectures", None)
    fields.setdefault("model_type", None)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    "fields,family",
    [
        (dict(architectures=["LlamaForCausalLM"]), "Llama"),
        (dict(model_type="qwen3"), "Qwen3"),  # a GGUF-rebuilt config has no architectures
        (dict(architectures=["OPTForCausalLM"], model_type="opt"), "OPT"),
        (dict(architectures=["GPT2LMHeadModel"], model_type="gpt2"), "GPT-2"),
        (dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2"), "Gemma 2"),
        (dict(architectures=["Phi3ForCausalLM"], model_type="phi3"), "Phi-3"),
    ],
)
def test_native_families_take_precedence(fields, family):
    path = model_path_of(declared(**fields))
    assert (path.kind, path.family, path.label) == ("native", family, f"native {family}")


def test_other_decoder_only_architectures_take_the_generic_path():
    from engine.models.transformers_backend import TransformersForCausalLM

    config = declared(architectures=["GraniteForCausalLM"], model_type="granite")
    path = model_path_of(config)
    assert path.kind == "generic" and path.label == "generic (transformers GraniteForCausalLM)"
    assert get_model_class(config) is TransformersForCausalLM
    # A config without `architectures` is named after transformers' class for its model_type.
    assert model_path_of(declared(model_type="olmo2")).architecture == "Olmo2ForCausalLM"


@pytest.mark.parametrize(
    "fields,named,reason",
    [
        (dict(architectures=["T5ForConditionalGeneration"], model_type="t5"),
         "T5ForConditionalGeneration", "encoder-decoder"),
        (dict(architectures=["BartForConditionalGeneration"], model_type="bart"),
         "BartForConditionalGeneration", "encoder-decoder"),
        (dict(architectures=["BertForMaskedLM"], model_type="bert"), "BertForMaskedLM", "encoder"),
        (dict(architectures=["MyLabForCausalLM"], model_type="mylab",
              auto_map={"AutoModelForCausalLM": "modeling_mylab.MyLabForCausalLM"}),
         "MyLabForCausalLM", "trust_remote_code"),
        (dict(model_type="not-a-model"), "'not-a-model'", "not part of transformers"),
        (dict(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=8),
         "MixtralForCausalLM", "mixture of 8 experts"),
    ],
)  # fmt: skip
def test_refusals_name_the_architecture_and_the_reason(fields, named, reason):
    with pytest.raises(UnsupportedModelError) as err:
        get_model_class(declared(**fields))
    message = str(err.value)
    assert named in message and reason in message
    assert message.count(". ") == 0 and message.endswith("."), message  # one sentence


def test_the_lists_agree():
    assert "OPTForCausalLM" in SUPPORTED_ARCHITECTURES and "Gemma3ForCausalLM" in SUPPORTED_ARCHITECTURES
    assert NATIVE_FAMILIES == ("Llama", "Mistral", "Qwen2", "Qwen3", "Phi-3", "OPT", "GPT-2",
                               "Gemma", "Gemma 2", "Gemma 3")  # fmt: skip


def test_the_engine_package_exports_the_public_names():
    import engine
    from engine.async_engine import AsyncEngine, EngineDeadError
    from engine.models import ModelPath as Path_, UnsupportedModelError as Refused

    assert (engine.AsyncEngine, engine.EngineDeadError) == (AsyncEngine, EngineDeadError)
    assert (engine.ModelPath, engine.UnsupportedModelError) == (Path_, Refused)
    assert {"AsyncEngine", "EngineDeadError", "UnsupportedModelError"} <= set(engine.__all__)
