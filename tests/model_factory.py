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
