"""Gemma, Gemma 2 and Gemma 3 (text) over the paged KV cache.

How they differ from Llama:
  * the token embedding is scaled by sqrt(hidden_size); the head is tied to it;
  * RMSNorm weights are stored minus one: the norm scales by (1 + weight), in fp32;
  * GeGLU MLP (gelu with the tanh approximation);
  * attention is scaled by query_pre_attn_scalar ** -0.5 (Gemma 2/3) rather than head_dim's;
  * Gemma 2/3 norm the attention and MLP outputs too (post-attention, pre- and
    post-feed-forward norms), and alternate sliding-window and global layers (`layer_types`);
  * Gemma 2 soft-caps the attention logits and the final logits with tanh;
  * Gemma 3 RMS-normalises q and k per head and gives its sliding layers their own RoPE
    base (`rope_parameters["sliding_attention"]`).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.models.base import PagedCausalLM, gate_up_shards, qkv_shards
from engine.models.layers import (
    Embedding,
    GatedMLP,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    head_dim_of,
    layer_types_of,
)
from engine.models.llama import RotaryAttention


def _norm(config, size: int | None = None) -> RMSNorm:
    return RMSNorm(size or config.hidden_size, config.rms_norm_eps, zero_centred=True)


def gemma_attention(config, layer_idx: int) -> RotaryAttention:
    """Llama's attention with Gemma's scale (query_pre_attn_scalar), Gemma 2's softcap and
    Gemma 3's zero-centred q/k norms."""
    bias = bool(getattr(config, "attention_bias", False))
    scalar = getattr(config, "query_pre_attn_scalar", None) or head_dim_of(config)
    return RotaryAttention(
        config, layer_idx, qkv_bias=bias, o_bias=bias,
        qk_norm=config.model_type == "gemma3_text", zero_centred_qk_norm=True,
        scale=scalar**-0.5, softcap=getattr(config, "attn_logit_softcapping", None),
    )  # fmt: skip


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_type = layer_types_of(config)[layer_idx]
        self.self_attn = gemma_attention(config, layer_idx)
        act = getattr(config, "hidden_activation", None) or "gelu_pytorch_tanh"
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, act)
        self.input_layernorm = _norm(config)
        self.post_attention_layernorm = _norm(config)
        # Gemma 2/3 norm each block's output before the residual add, and the MLP's input.
        self.sandwich = config.model_type != "gemma"
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(config)
            self.post_feedforward_layernorm = _norm(config)

    def forward(self, hidden, residual, rope: dict, kv_cache: KVCache, meta: AttentionMetadata):
        cos, sin = rope[self.layer_type]
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, kv_cache, meta)
        if not self.sandwich:
            hidden, residual = self.post_attention_layernorm(hidden, residual)
            return self.mlp(hidden), residual
        hidden = self.post_attention_layernorm.norm(hidden)
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm.norm(self.mlp(hidden)), residual


class GemmaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = config.hidden_size**0.5
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = _norm(config)
        head_dim = head_dim_of(config)
        # One table per layer type: Gemma 3's sliding layers have their own RoPE base.
        self.rotary = nn.ModuleDict({
            kind: RotaryEmbedding(config, head_dim, layer_type=kind)
            for kind in dict.fromkeys(layer_types_of(config))
        })  # fmt: skip

    def forward(self, input_ids, positions, kv_caches: list[KVCache], meta: AttentionMetadata):
        hidden = self.embed_tokens(input_ids)
        # The scale rounded to the model dtype first, as transformers does.
        hidden = hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)
        rope = {k: emb(positions, hidden.dtype, meta.max_seq_len) for k, emb in self.rotary.items()}
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, rope, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class GemmaForCausalLM(PagedCausalLM):
    def __init__(self, config):
        super().__init__(config, GemmaModel(config))
        self.final_logit_softcap = getattr(config, "final_logit_softcapping", None)

    def stacked_shards(self) -> dict[str, tuple[str, slice]]:
        attn = self.decoder.layers[0].self_attn
        return {
            **qkv_shards(attn.q_size, attn.kv_size),
            **gate_up_shards(self.config.intermediate_size),
        }
