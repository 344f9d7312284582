"""Model implementations and the registry that picks one for a Hugging Face config.

Two paths run a model:
  * native — a family written here over the paged KV cache (`NATIVE_FAMILIES`);
  * generic — any other decoder-only architecture transformers ships whose class supports
    attention backends: transformers' own modelling code with pagedesk's paged attention
    plugged in (`transformers_backend`), as vLLM's Transformers backend does.
Native families take precedence. Every model has the same interface (see
`base.PagedCausalLM`): `forward(input_ids, positions, kv_caches, attn_metadata) -> hidden`,
`compute_logits(hidden) -> float32 logits`, `load_weights(iterable of (hf_name, tensor))`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

__all__ = [
    "NATIVE_FAMILIES",
    "SUPPORTED_ARCHITECTURES",
    "ModelPath",
    "UnsupportedModelError",
    "get_model_class",
    "model_path_of",
]


class UnsupportedModelError(ValueError):
    """The checkpoint is readable but is not a model this engine can run."""


# Hugging Face `architectures` name -> (module, class, family shown to people).
_NATIVE: dict[str, tuple[str, str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM", "Llama"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM", "Mistral"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM", "Qwen2"),
    "Qwen3ForCausalLM": ("llama", "LlamaForCausalLM", "Qwen3"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM", "Phi-3"),
    "OPTForCausalLM": ("opt", "OPTForCausalLM", "OPT"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel", "GPT-2"),
    "GemmaForCausalLM": ("gemma", "GemmaForCausalLM", "Gemma"),
    "Gemma2ForCausalLM": ("gemma", "GemmaForCausalLM", "Gemma 2"),
    "Gemma3ForCausalLM": ("gemma", "GemmaForCausalLM", "Gemma 3"),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_NATIVE)
NATIVE_FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f for _, _, f in _NATIVE.values()))
# A config without `architectures` (hand-made, or rebuilt from a GGUF) is judged by model_type.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "opt": "OPTForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


@dataclass(frozen=True, slots=True)
class ModelPath:
    """How a model runs: `kind` "native" or "generic", the architecture, and in words."""

    kind: str
    architecture: str
    family: str

    @property
    def label(self) -> str:
        if self.kind == "native":
            return f"native {self.family}"
        return f"generic (transformers {self.architecture})"


def _architectures(hf_config) -> list[str]:
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not architectures and getattr(hf_config, "model_type", None) in _MODEL_TYPES:
        architectures = [_MODEL_TYPES[hf_config.model_type]]
    return architectures


def model_path_of(hf_config) -> ModelPath:
    """Which path runs `hf_config` (a transformers config, or anything with `architectures`
    and `model_type`, e.g. a raw config.json's fields); UnsupportedModelError naming the
    architecture and the reason when neither can."""
    architectures = _architectures(hf_config)
    for arch in architectures:
        if arch in _NATIVE:
            return ModelPath("native", arch, _NATIVE[arch][2])
    from engine.models.transformers_backend import generic_refusal

    why = generic_refusal(hf_config)
    if why is not None:
        raise UnsupportedModelError(why)
    arch = architectures[0] if architectures else _causal_lm_name(hf_config.model_type)
    return ModelPath("generic", arch, arch)


def _causal_lm_name(model_type: str) -> str:
    """transformers' causal-LM class name for a model_type (a config without architectures)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, f"model_type {model_type!r}")


def get_model_class(hf_config) -> type[nn.Module]:
    """The model class for `hf_config`, or `UnsupportedModelError` naming what it is."""
    path = model_path_of(hf_config)
    if path.kind == "generic":
        from engine.models.transformers_backend import TransformersForCausalLM

        return TransformersForCausalLM
    module, cls, _ = _NATIVE[path.architecture]
    return getattr(importlib.import_module(f"engine.models.{module}"), cls)
