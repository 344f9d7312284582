"""Small random-weight Llama-family checkpoints on disk, built with transformers.

`make_random_llama(dir, ...)` writes a complete Hugging Face model directory (config.json,
model.safetensors, tokenizer files with a ChatML chat template) that both our engine and
transformers can load, so tests can compare the two token for token.

The default `initializer_range` is large (0.5, transformers uses 0.02) on purpose: logits of
a random model are then spread widely (std ~ 5-10), so greedy choices have clear margins and
float32 rounding differences between two correct implementations do not flip them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2


def make_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 3 special tokens + 256 byte tokens (vocab 259), ChatML template.

    Every string round-trips exactly; bos is `<|im_start|>`, eos and pad `<|im_end|>`.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
        chat_template=CHATML_TEMPLATE,
    )


def make_random_llama(
    path: str | Path,
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    num_layers: int = 2,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.5,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    model_type: str = "llama",
    attention_bias: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write a random-weight model of `model_type` ("llama", "mistral", "qwen2") to `path`.

    hidden_size defaults to num_heads * head_dim, intermediate_size to 2 * hidden_size, the
    tokenizer to `make_byte_tokenizer()`; vocab_size is always the tokenizer's length.
    Returns `path`. Deterministic for a given seed.
    """
    path = Path(path)
    tokenizer = tokenizer or make_byte_tokenizer()
    hidden = hidden_size or num_heads * head_dim
    rope = {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate_size or 2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        rope_parameters=rope,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"attention_bias": attention_bias} if model_type == "llama" else {}),
        **({"sliding_window": None} if model_type == "mistral" else {}),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if model_type == "qwen2" or attention_bias:
        _randomize_biases(model, initializer_range)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _randomize_biases(model: torch.nn.Module, std: float) -> None:
    """transformers zeroes biases at init; random ones make a bias test mean something."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, std)


# Hugging Face Llama parameter -> llama.cpp GGUF tensor name (per layer, then global).
_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
_GGUF_GLOBAL_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


def write_gguf(model_dir: str | Path, gguf_path: str | Path, *, quantize: bool = True) -> Path:
    """Write a Llama checkpoint made by `make_random_llama` as a llama.cpp-style GGUF.

    Like llama.cpp's converter: q/k rows permuted for its RoPE layout, 2-D weights quantised
    to Q8_0 (when `quantize` and the rows allow), norms in F32, the byte tokenizer as
    "gpt2" metadata with the chat template. Returns `gguf_path`.
    """
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    _write_gguf_config(writer, config)
    _write_gguf_tokenizer(writer, tokenizer)
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        data = _llama_cpp_permute(name, tensor.float(), config).numpy()
        if quantize and data.ndim == 2 and data.shape[1] % 32 == 0:
            q8 = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(_gguf_name(name), q8, raw_shape=q8.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # fmt: skip
        else:
            writer.add_tensor(_gguf_name(name), np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


def _write_gguf_config(writer, config) -> None:
    writer.add_name("tiny random llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _write_gguf_tokenizer(writer, tokenizer) -> None:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in special else 1 for token, _ in vocab])  # 3: control
    writer.add_token_scores([0.0] * len(vocab))  # no merges: transformers derives none
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def _gguf_name(hf_name: str) -> str:
    base, suffix = hf_name.rsplit(".", 1)
    if base in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[base]}.{suffix}"
    _, _, layer, part = base.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[part]}.{suffix}"


def _llama_cpp_permute(name: str, weight: torch.Tensor, config) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf permute: rows (head, half, pair) -> (head, pair, half)."""
    if ".q_proj." in name:
        heads = config.num_attention_heads
    elif ".k_proj." in name:
        heads = config.num_key_value_heads
    else:
        return weight
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
