"""Model implementations and the registry that picks one for a Hugging Face config.

Every model here has the same interface (see `llama.LlamaForCausalLM`):
`forward(input_ids, positions, kv_caches, attn_metadata) -> hidden`,
`compute_logits(hidden) -> float32 logits`, `load_weights(iterable of (hf_name, tensor))`.
"""

from __future__ import annotations

from torch import nn

from engine.models.llama import LlamaForCausalLM

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "UnsupportedModelError",
    "get_model_class",
    "LlamaForCausalLM",
]

# Hugging Face `architectures` names -> our class. Mistral and Qwen2 share Llama's shape
# (Qwen2 adds a bias to q/k/v; Mistral's sliding window is handled by capping the context).
_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_REGISTRY)
# A config without `architectures` (hand-made, or rebuilt from a GGUF) is judged by model_type.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


class UnsupportedModelError(ValueError):
    """The checkpoint is readable but is not a model this engine can run."""


def get_model_class(hf_config) -> type[nn.Module]:
    """The model class for `hf_config`, or `UnsupportedModelError` naming what it is."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not architectures and getattr(hf_config, "model_type", None) in _MODEL_TYPES:
        architectures = [_MODEL_TYPES[hf_config.model_type]]
    for arch in architectures:
        if arch in _REGISTRY:
            return _REGISTRY[arch]
    what = ", ".join(architectures) or f"model_type {getattr(hf_config, 'model_type', None)!r}"
    raise UnsupportedModelError(
        f"Unsupported model architecture: {what}. "
        f"Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}."
    )
