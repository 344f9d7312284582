"""GPT-2 over the paged KV cache.

How it differs from Llama: learned absolute positions, LayerNorm with biases before each
block, GELU (tanh) MLP, and Conv1D weights: stored [in, out], the transpose of a Linear's.
We keep that layout (`Conv1D` computes x @ W + b), so checkpoints load as they are, with no
transposed copy. The head is tied to the token embedding. Checkpoints saved by old
transformers versions leave off the "transformer." prefix and carry the causal-mask buffers
(`attn.bias`, `attn.masked_bias`), which are not weights.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.models.base import PagedCausalLM
from engine.models.layers import Embedding, KVCache, LayerNorm, PagedAttention, activation


class Conv1D(nn.Module):
    """transformers' GPT-2 Conv1D: a linear layer whose weight is [in_features, out_features]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.c_attn = Conv1D(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, config.hidden_size)
        scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        self.attn = PagedAttention(self.num_heads, self.num_heads, self.head_dim, scale)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata):
        n = hidden.shape[0]
        q, k, v = (t.view(n, self.num_heads, self.head_dim) for t in self.c_attn(hidden).chunk(3, -1))
        return self.c_proj(self.attn(q, k, v, kv_cache, meta))


class GPT2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner or 4 * config.hidden_size
        self.c_fc = Conv1D(config.hidden_size, inner)
        self.c_proj = Conv1D(inner, config.hidden_size)
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata):
        hidden = hidden + self.attn(self.ln_1(hidden), kv_cache, meta)
        return hidden + self.mlp(self.ln_2(hidden))


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = Embedding(config.vocab_size, config.hidden_size)
        self.wpe = Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, positions, kv_caches: list[KVCache], meta: AttentionMetadata):
        hidden = self.wte(input_ids) + self.wpe(positions)
        for block, kv_cache in zip(self.h, kv_caches, strict=True):
            hidden = block(hidden, kv_cache, meta)
        return self.ln_f(hidden)


class GPT2LMHeadModel(PagedCausalLM):
    decoder_name = "transformer"
    hf_prefixes = ("transformer.",)
    ignored_suffixes = (".attn.bias", ".attn.masked_bias")

    def __init__(self, config):
        super().__init__(config, GPT2Model(config))

    def embedding(self) -> nn.Embedding:
        return self.transformer.wte
