"""GGUF files of the non-Llama families -> a Hugging Face directory, through transformers' reader.

`gguf_loader` converts Llama files on its own fast path; every other supported architecture
(`GENERIC_ARCHITECTURES`) is read with transformers' GGUF loader (`load_gguf_checkpoint`):
its config mapping, and its tensor names and processors, which undo what llama.cpp's
converter changed (Gemma's norms stored as 1 + w, GPT-2's transposed Conv1D weights). It
maps names through a model instance, built here on the meta device (no memory, no code
from the file). The tokenizer is `gguf_loader.build_tokenizer`, the builder that
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` uses too.

transformers' mapping leaves out some keys that llama.cpp writes (Qwen3's head size, GPT-2's
position count, Gemma 2's soft-capping, Phi-3's sliding window, partial rotary width and
long-context RoPE factors, any RoPE scaling), and Gemma's attention scale, which llama.cpp
derives: `_from_metadata` and `_rope_parameters` put them back, so the copy has the shape
the file states rather than a config class's defaults.

transformers' loader holds every tensor at once (as float16 past FP32_MAX_PARAMS) and parses
the metadata twice (once for the config that the meta model needs): fine for small and
mid-sized models, slower than the Llama path on big vocabularies.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch

from engine import gguf_loader
from engine.models import UnsupportedModelError

log = logging.getLogger(__name__)

# llama.cpp's `general.architecture` names that this module converts.
GENERIC_ARCHITECTURES = ("qwen2", "qwen3", "phi3", "gpt2", "gemma2", "gemma3")
# "{arch}.<key>" -> config field, for keys transformers' GGUF mapping does not read.
_FROM_METADATA = {
    "qwen2": {"attention.key_length": "head_dim"},
    "qwen3": {"attention.key_length": "head_dim"},
    "phi3": {
        "rope.scaling.original_context_length": "original_max_position_embeddings",
        "attention.sliding_window": "sliding_window",
    },
    "gpt2": {"context_length": "n_positions", "feed_forward_length": "n_inner"},
    "gemma2": {
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    },
}
# Gemma's attention scale is not in the file: llama.cpp uses 1/sqrt(head_dim), but
# 1/sqrt(hidden / heads) for the 27B models, which it knows by their layer count.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# What transformers' reader puts in the config dict that is no field of the config class.
_NOT_CONFIG = ("_model_name_or_path", "n_ctx", "feed_forward_length")


def write_converted(gguf_path: Path, out: Path, metadata: dict, tensor_names: tuple) -> None:
    """config.json, tokenizer files and safetensors weights of `gguf_path` into `out`
    (the caller writes the marker)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    architecture = metadata["general.architecture"]
    fields = _read_config(gguf_path)
    fields.update(_from_metadata(architecture, metadata))
    fields.update(_rope_parameters(gguf_path, architecture, metadata, tensor_names, fields))
    for name in _NOT_CONFIG:
        fields.pop(name, None)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    params = sum(p.numel() for p in model.parameters())
    dtype = torch.float32 if params <= gguf_loader.FP32_MAX_PARAMS else torch.float16
    tensors = _read_tensors(gguf_path, model, dtype)
    tokenizer = gguf_loader.build_tokenizer(gguf_path, config.max_position_embeddings)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_tensors(tensors, out)


def _read_config(gguf_path: Path) -> dict:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        return dict(load_gguf_checkpoint(str(gguf_path), return_tensors=False)["config"])
    except ValueError as exc:  # an older transformers that does not know the architecture
        raise UnsupportedModelError(f"transformers cannot read {gguf_path.name}: {exc}") from exc


def _from_metadata(architecture: str, metadata: dict) -> dict:
    """Config fields from the keys transformers' mapping skips (`_FROM_METADATA`), and
    Gemma's `query_pre_attn_scalar` by llama.cpp's rule."""
    keys = _FROM_METADATA.get(architecture, {})
    fields = {
        field: metadata[f"{architecture}.{key}"]
        for key, field in keys.items()
        if f"{architecture}.{key}" in metadata
    }
    key = lambda name: metadata.get(f"{architecture}.{name}")  # noqa: E731
    if architecture in _GEMMA_27B_LAYERS and key("attention.key_length"):
        big = key("block_count") == _GEMMA_27B_LAYERS[architecture]
        width = key("embedding_length") // key("attention.head_count")
        fields["query_pre_attn_scalar"] = width if big else key("attention.key_length")
    return fields


def _rope_parameters(
    gguf_path: Path, architecture: str, metadata: dict, tensor_names: tuple, fields: dict
) -> dict:
    """`rope_parameters` where the file states more than the RoPE base (which transformers'
    mapping reads, as `rope_theta`); nothing otherwise."""

    def key(name: str):
        return metadata.get(f"{architecture}.rope.{name}")

    kind = key("scaling.type")
    if architecture == "phi3" and "rope_factors_long.weight" in tensor_names:
        scaling = {  # llama.cpp states Phi-3's LongRoPE by its two factor tensors
            "rope_type": "longrope",
            "long_factor": _read_vector(gguf_path, "rope_factors_long.weight"),
            "short_factor": _read_vector(gguf_path, "rope_factors_short.weight"),
        }
    elif kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(key("scaling.factor"))}
    elif kind == "yarn":
        scaling = {
            "rope_type": "yarn",
            "factor": float(key("scaling.factor")),
            "original_max_position_embeddings": int(key("scaling.original_context_length")),
        }
    elif kind in (None, "none"):
        scaling = {}
    else:
        raise UnsupportedModelError(
            f"GGUF RoPE scaling {kind!r} is not supported (linear, yarn and Phi-3's longrope are)."
        )
    partial = 1.0
    if architecture == "phi3" and key("dimension_count"):  # rotary width, in dimensions
        partial = key("dimension_count") / (fields["hidden_size"] // fields["num_attention_heads"])
    if not scaling and partial == 1.0:
        return {}
    rope = {"rope_type": "default", "rope_theta": float(fields.pop("rope_theta", 10000.0))}
    rope.update(scaling)
    if architecture == "phi3":
        rope["partial_rotary_factor"] = partial
    if architecture == "gemma3":  # scaling is for the global layers; llama.cpp fixes the local base
        local = {"rope_type": "default", "rope_theta": 10000.0}
        rope = {"full_attention": rope, "sliding_attention": local}
    return {"rope_parameters": rope}


def _read_vector(gguf_path: Path, name: str) -> list[float]:
    """One small tensor of the file (a RoPE factor list), as floats."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    header = gguf_loader._gguf_api().GgufHeader.from_file(str(gguf_path))
    info = next(t for t in header.tensors if t.name == name)
    offset = header.data_start + info.offset
    raw = np.fromfile(gguf_path, dtype=np.uint8, count=info.nbytes, offset=offset)
    raw = raw.reshape(*info.shape[:-1], -1)
    return dequantize(raw, GGMLQuantizationType(info.ggml_type)).reshape(-1).tolist()


def _read_tensors(gguf_path: Path, model: torch.nn.Module, dtype: torch.dtype) -> dict:
    """Every weight `model` has, from the file, under its Hugging Face name."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    kwargs = {"return_tensors": True, "model_to_load": model}
    if "torch_dtype" in inspect.signature(load_gguf_checkpoint).parameters:
        kwargs["torch_dtype"] = dtype  # cast as read: a big model's copy is held once, in fp16
    tensors = load_gguf_checkpoint(str(gguf_path), **kwargs)["tensors"]
    # Parameters once each (a tied head is the embedding), and the buffers that are saved.
    expected = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True)
    expected.update({n: b for n, b in model.named_buffers() if n in persistent})
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise UnsupportedModelError(
            f"{gguf_path.name} lacks tensors the {type(model).__name__} needs: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
        )
    for name in [n for n in tensors if n not in persistent]:
        log.warning("Skipping GGUF tensor %s (no Hugging Face counterpart).", name)
        del tensors[name]
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(persistent[name].shape):
            raise UnsupportedModelError(
                f"{gguf_path.name}: tensor {name} has shape {tuple(tensor.shape)}, the config "
                f"says {tuple(persistent[name].shape)}."
            )
    return {name: tensors[name].to(dtype) for name in persistent if name in tensors}


def _write_tensors(tensors: dict[str, torch.Tensor], out: Path) -> None:
    """As `model.safetensors`, or shards of ~SHARD_BYTES and an index (as `gguf_loader`)."""
    shard: dict[str, np.ndarray] = {}
    shard_of: dict[str, int] = {}
    count = 0
    for name in list(tensors):
        if shard and sum(a.nbytes for a in shard.values()) >= gguf_loader.SHARD_BYTES:
            gguf_loader._save_shard(shard, out, count)
            shard, count = {}, count + 1
        shard[name] = tensors.pop(name).contiguous().numpy()  # popped: memory goes as it is written
        shard_of[name] = count
    gguf_loader._save_shard(shard, out, count)
    gguf_loader._name_shards(out, shard_of, count + 1)
