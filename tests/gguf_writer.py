"""A Hugging Face checkpoint written as a GGUF, the way llama.cpp's convert_hf_to_gguf does.

`write_family_gguf(model_dir, gguf_path)` takes a directory made by
`family_parity.save_random_model` (or `model_factory.make_random_llama`) and writes the
metadata keys llama.cpp writes for its family (`{arch}.context_length`, ...), the byte
tokenizer as "gpt2" BPE metadata, and every tensor under gguf's own name mapping
(`gguf.get_tensor_name_map`), changed the way llama.cpp changes it:
  * llama / mistral: q and k rows permuted for llama.cpp's RoPE layout;
  * gpt2: Conv1D weights transposed to (out, in), and the tied LM head written out as
    `output.weight` (a copy of the embedding);
  * gemma2 / gemma3: norm weights stored as 1 + w (the model's own `(1 + w) * x`).
Tensors are F32 (exact), or Q8_0 for 2-D ones with `quantize=True`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import gguf
import numpy as np
import torch

from model_factory import _llama_cpp_permute, _write_gguf_tokenizer

# Hugging Face model_type -> llama.cpp architecture.
GGUF_ARCH = {
    "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
    "phi3": "phi3", "gpt2": "gpt2", "gemma2": "gemma2", "gemma3_text": "gemma3",
}  # fmt: skip
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight",
                ".mlp.c_proj.weight")  # fmt: skip


def write_family_gguf(
    model_dir: str | Path, gguf_path: str | Path, *, quantize: bool = False,
    drop: Collection[str] = (),
) -> Path:
    """Write the checkpoint in `model_dir` as a llama.cpp-style GGUF at `gguf_path`,
    leaving out the GGUF tensors named in `drop` (to test damaged files)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    config = AutoConfig.from_pretrained(model_dir)
    arch = GGUF_ARCH[config.model_type]
    writer = gguf.GGUFWriter(str(gguf_path), arch)
    writer.add_name(f"tiny random {config.model_type}")
    _write_metadata(writer, config)
    _write_gguf_tokenizer(writer, AutoTokenizer.from_pretrained(model_dir))
    tensors = load_file(model_dir / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for name, tensor in _llama_cpp_tensors(tensors, config):
        base, suffix = name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        assert gguf_name is not None, f"gguf has no name for {name}"
        if f"{gguf_name}.{suffix}" not in drop:
            _add_tensor(writer, f"{gguf_name}.{suffix}", tensor.float().numpy(), quantize)
    if (getattr(config, "rope_parameters", None) or {}).get("rope_type") == "longrope":  # Phi-3
        rope = config.rope_parameters
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


def _write_metadata(writer, config) -> None:
    """The keys llama.cpp's converter writes for this family (a subset where it adds
    ones no loader reads, such as file_type)."""
    if config.model_type == "gpt2":
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if config.to_dict().get("head_dim") is not None:  # llama.cpp: only when the config has one
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = config.rope_parameters
    if config.model_type == "gemma3_text":
        rope = rope["full_attention"]  # the local (sliding) theta is fixed in llama.cpp
    if config.model_type != "gemma2":  # llama.cpp's Gemma 2 writes no RoPE base
        writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        writer.add_rope_scaling_factor(rope["factor"])
    if rope.get("rope_type") == "yarn":
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if config.model_type in ("llama", "mistral"):
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
    elif config.model_type == "phi3":
        rotary = int(rope.get("partial_rotary_factor", 1.0) * head_dim)
        writer.add_rope_dimension_count(rotary)
        writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
        if config.sliding_window is not None:
            writer.add_sliding_window(config.sliding_window)
    elif config.model_type in ("gemma2", "gemma3_text"):
        writer.add_sliding_window(config.sliding_window)
        if config.model_type == "gemma2":
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
            writer.add_final_logit_softcapping(config.final_logit_softcapping)


def _llama_cpp_tensors(tensors: dict[str, torch.Tensor], config):
    """(Hugging Face name, tensor as llama.cpp stores it), in the checkpoint's order."""
    model_type = config.model_type
    for name, tensor in tensors.items():
        if model_type in ("llama", "mistral"):
            tensor = _llama_cpp_permute(name, tensor.float(), config)
        elif model_type == "gpt2":
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers, not weights
            if name.endswith(_GPT2_CONV1D):
                tensor = tensor.T.contiguous()
        elif model_type.startswith("gemma") and name.endswith("norm.weight"):
            tensor = tensor.float() + 1
        yield name, tensor
        if model_type == "gpt2" and name.endswith("wte.weight") and "lm_head.weight" not in tensors:
            yield "lm_head.weight", tensor  # llama.cpp writes GPT-2's tied head out


def _add_tensor(writer, name: str, data: np.ndarray, quantize: bool) -> None:
    data = np.ascontiguousarray(data, dtype=np.float32)
    if quantize and data.ndim == 2 and data.shape[1] % 32 == 0:
        q8 = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data)
