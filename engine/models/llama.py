"""The Llama family over the paged KV cache: Llama 2/3 (and SmolLM2), Mistral, Qwen2, Qwen3.

One decoder layer: RMSNorm -> attention (RoPE, GQA) -> RMSNorm -> SwiGLU MLP, residuals
fused into the norms. How the members differ:
  * Qwen2 biases q/k/v (not o); Llama's `attention_bias` biases all four.
  * Qwen3 RMS-normalises q and k per head before RoPE.
  * Mistral (and Qwen2/3 with `use_sliding_window`) attend through a sliding window, per
    layer as `layer_types` says.
Parameter names follow Hugging Face's, except that q/k/v and gate/up are each merged into
one matrix (`qkv_proj`, `gate_up_proj`): fewer, larger matmuls are faster, on a CPU most of
all. `load_weights` writes each checkpoint shard into its rows.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.distributed.parallel_state import current_group
from engine.models.base import CheckpointSlice, PagedCausalLM, gate_up_shards, qkv_shards
from engine.models.layers import (
    Embedding,
    GatedMLP,
    KVCache,
    Linear,
    PagedAttention,
    RMSNorm,
    RotaryEmbedding,
    apply_rope,
    head_dim_of,
    sliding_window_of,
)
from engine.models.parallel_layers import (
    ColumnParallelLinear,
    ParallelGatedMLP,
    RowParallelLinear,
    VocabParallelEmbedding,
    even_range,
    head_shard,
    vocab_range,
)


def _biases(config) -> tuple[bool, bool]:
    """(q/k/v bias, o_proj bias)."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


class RotaryAttention(nn.Module):
    """Merged q/k/v projection, optional per-head q/k norm, RoPE, paged attention, output
    projection: the attention of Llama, Qwen, Mistral, Phi-3 and Gemma, each stating its
    biases, q/k norm, scale and softcap."""

    def __init__(
        self,
        config,
        layer_idx: int,
        *,
        qkv_bias: bool,
        o_bias: bool,
        qk_norm: bool = False,
        zero_centred_qk_norm: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = head_dim_of(config)
        group = current_group()
        if group.is_parallel:  # this rank's heads only (engine/models/parallel_layers.py)
            self.shard = head_shard(self.num_heads, self.num_kv_heads, group.rank, group.world_size)
            self.num_heads, self.num_kv_heads = self.shard.num_heads, self.shard.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        qkv_size = self.q_size + 2 * self.kv_size
        if group.is_parallel:
            self.qkv_proj = ColumnParallelLinear(config.hidden_size, qkv_size, qkv_bias, group)
            self.o_proj = RowParallelLinear(self.q_size, config.hidden_size, o_bias, group)
        else:
            self.qkv_proj = Linear(config.hidden_size, qkv_size, bias=qkv_bias)
            self.o_proj = Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.qk_norm = qk_norm
        if qk_norm:
            eps, zc = config.rms_norm_eps, zero_centred_qk_norm
            self.q_norm = RMSNorm(self.head_dim, eps, zero_centred=zc)
            self.k_norm = RMSNorm(self.head_dim, eps, zero_centred=zc)
        self.attn = PagedAttention(
            self.num_heads, self.num_kv_heads, self.head_dim,
            scale if scale is not None else self.head_dim**-0.5,
            sliding_window=sliding_window_of(config, layer_idx), softcap=softcap,
        )  # fmt: skip

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        n, h, d = hidden.shape[0], self.num_heads, self.head_dim
        qkv = self.qkv_proj(hidden)
        v = qkv[:, self.q_size + self.kv_size :].view(n, self.num_kv_heads, d)
        if self.qk_norm:
            q, k = qkv[:, : self.q_size + self.kv_size].split([self.q_size, self.kv_size], -1)
            q, k = self.q_norm.norm(q.view(n, h, d)), self.k_norm.norm(k.view(n, -1, d))
            qk = torch.cat((q, k), dim=1)
        else:
            qk = qkv[:, : self.q_size + self.kv_size].view(n, -1, d)
        # q and k heads side by side: one RoPE pass (its ops are per element) for both.
        qk = apply_rope(qk, cos, sin)
        return self.o_proj(self.attn(qk[:, :h], qk[:, h:], v, kv_cache, meta))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        qkv_bias, o_bias = _biases(config)
        self.self_attn = RotaryAttention(
            config, layer_idx, qkv_bias=qkv_bias, o_bias=o_bias,
            qk_norm=config.model_type == "qwen3",
        )  # fmt: skip
        group = current_group()
        mlp_cls = ParallelGatedMLP if group.is_parallel else GatedMLP
        self.mlp = mlp_cls(
            config.hidden_size, config.intermediate_size, getattr(config, "hidden_act", "silu"),
            bias=bool(getattr(config, "mlp_bias", False)),
            **({"group": group} if group.is_parallel else {}),
        )  # fmt: skip
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


def rotary_dim_of(config) -> int:
    head_dim = head_dim_of(config)
    factor = getattr(config, "partial_rotary_factor", None)
    if factor is None:
        factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim * factor)


class LlamaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        group = current_group()
        if group.is_parallel:
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, group)
        else:
            self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config, rotary_dim_of(config))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        # Gathered once for all layers.
        cos, sin = self.rotary_emb(positions, hidden.dtype, meta.max_seq_len)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, cos, sin, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(PagedCausalLM):
    """Llama-family causal LM over a paged KV cache."""

    supports_tensor_parallel = True

    def __init__(self, config):
        super().__init__(config, LlamaModel(config))

    def stacked_shards(self) -> dict[str, tuple[str, slice]]:
        attn = self.decoder.layers[0].self_attn
        return {
            **qkv_shards(attn.q_size, attn.kv_size),
            **gate_up_shards(self.decoder.layers[0].mlp.intermediate_size),  # this rank's
        }

    def checkpoint_slice(self, hf_name: str) -> CheckpointSlice | None:
        """The part of checkpoint tensor `hf_name` this rank holds (see parallel_layers):
        rows of q/k/v (its heads), of gate/up, of the vocabulary; columns of o/down."""
        tp = self.tp
        if not tp.is_parallel:
            return None
        name = self._canonical(hf_name)
        kind = next((k for k in _SHARDED if f".{k}." in f".{name}"), None)
        if kind is None or (kind in ("o_proj", "down_proj") and name.endswith(".bias")):
            return None  # replicated: norms, row-parallel biases
        if kind in ("embed_tokens", "lm_head"):
            start, stop, _ = vocab_range(self.config.vocab_size, tp.rank, tp.world_size)
            return CheckpointSlice(0, start, stop)
        attn = self.decoder.layers[0].self_attn
        if kind in ("q_proj", "o_proj"):
            first, count = attn.shard.q_start, attn.shard.num_heads
        elif kind in ("k_proj", "v_proj"):
            first, count = attn.shard.kv_start, attn.shard.num_kv_heads
        else:  # gate_proj, up_proj, down_proj
            start, stop = even_range(
                self.config.intermediate_size, tp.rank, tp.world_size, "intermediate_size"
            )
            return CheckpointSlice(int(kind == "down_proj"), start, stop)
        d = attn.head_dim
        return CheckpointSlice(int(kind == "o_proj"), first * d, (first + count) * d)


_SHARDED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
            "embed_tokens", "lm_head")  # fmt: skip
