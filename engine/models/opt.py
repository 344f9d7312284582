"""OPT (facebook/opt-125m ... opt-6.7b) over the paged KV cache.

How it differs from Llama: learned absolute positions (with the offset of 2 OPT was
trained with), LayerNorm with biases, a plain ReLU MLP (fc1, fc2), biased projections,
layer norms before (`do_layer_norm_before`, most sizes) or after (opt-350m) each block,
and for opt-350m a projection between the `word_embed_proj_dim` embedding and the hidden
size. The head is tied to the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.models.base import PagedCausalLM, qkv_shards
from engine.models.layers import Embedding, KVCache, LayerNorm, Linear, PagedAttention, activation

POSITION_OFFSET = 2  # OPT's embedding row of position p is p + 2


class OPTAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.size = config.hidden_size
        bias = getattr(config, "enable_bias", True)
        self.qkv_proj = Linear(config.hidden_size, 3 * self.size, bias=bias)
        self.out_proj = Linear(self.size, config.hidden_size, bias=bias)
        self.attn = PagedAttention(self.num_heads, self.num_heads, self.head_dim, self.head_dim**-0.5)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata):
        n = hidden.shape[0]
        q, k, v = (t.view(n, self.num_heads, self.head_dim) for t in self.qkv_proj(hidden).chunk(3, -1))
        return self.out_proj(self.attn(q, k, v, kv_cache, meta))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "enable_bias", True)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.fc1 = Linear(config.hidden_size, config.ffn_dim, bias=bias)
        self.fc2 = Linear(config.ffn_dim, config.hidden_size, bias=bias)
        self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.act = activation(config.activation_function)

    def forward(self, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata):
        hidden = self._residual(hidden, self.self_attn_layer_norm,
                                lambda h: self.self_attn(h, kv_cache, meta))  # fmt: skip
        return self._residual(hidden, self.final_layer_norm, lambda h: self.fc2(self.act(self.fc1(h))))

    def _residual(self, hidden: torch.Tensor, norm: nn.Module, block) -> torch.Tensor:
        """hidden + block(norm(hidden)) with the norm first, or norm(hidden + block(hidden))."""
        if self.pre_norm:
            return hidden + block(norm(hidden))
        return norm(hidden + block(hidden))


class OPTDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        embed_dim = config.word_embed_proj_dim
        self.embed_tokens = Embedding(config.vocab_size, embed_dim)
        self.embed_positions = Embedding(config.max_position_embeddings + POSITION_OFFSET, config.hidden_size)
        projected = embed_dim != config.hidden_size
        self.project_in = Linear(embed_dim, config.hidden_size, bias=False) if projected else None
        self.project_out = Linear(config.hidden_size, embed_dim, bias=False) if projected else None
        keep_final = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine) if keep_final else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids, positions, kv_caches: list[KVCache], meta: AttentionMetadata):
        hidden = self.embed_tokens(input_ids)
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        hidden = hidden + self.embed_positions(positions + POSITION_OFFSET)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, kv_cache, meta)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden


class OPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids, positions, kv_caches: list[KVCache], meta: AttentionMetadata):
        return self.decoder(input_ids, positions, kv_caches, meta)


class OPTForCausalLM(PagedCausalLM):
    def __init__(self, config):
        super().__init__(config, OPTModel(config))

    def embedding(self) -> nn.Embedding:
        return self.model.decoder.embed_tokens

    def head_input_size(self) -> int:
        return self.config.word_embed_proj_dim

    def stacked_shards(self) -> dict[str, tuple[str, slice]]:
        size = self.config.hidden_size
        return qkv_shards(size, size)
