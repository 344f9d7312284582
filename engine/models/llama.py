"""A compact Llama-family decoder whose attention reads and writes a paged KV cache.

Covers Llama 2/3, SmolLM2, Mistral and Qwen2 (same shape; Qwen2 adds a q/k/v bias).
Parameter names follow Hugging Face's, except that q/k/v and gate/up are each merged into
one matrix (`qkv_proj`, `gate_up_proj`): fewer, larger matmuls are faster, on a CPU most of
all. `load_weights` takes Hugging Face names and writes each shard into its rows.

Parameters are not initialised (they hold whatever memory held) until `load_weights`, and
the module builds on the meta device: the loader does `with torch.device("meta"): cls(cfg)`,
then `to_empty(device=...)` and `load_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.attention import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]


class _Linear(nn.Linear):
    """nn.Linear without random init: `load_weights` overwrites every parameter, and on the
    meta device torch's init ops pull in torch._dynamo (seconds of start-up)."""

    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    """nn.Embedding without random init (see `_Linear`)."""

    def reset_parameters(self) -> None:
        pass


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope_parameters(config) -> dict:
    # transformers 5 normalises to `rope_parameters`; older configs say `rope_scaling`.
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def _inv_freq(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (CPU) and the cos/sin scale, as transformers computes them."""
    params = _rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type == "default":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
        return 1.0 / (params["rope_theta"] ** exponents), 1.0
    if rope_type == "dynamic":
        # Its frequencies change with the sequence length: not one table for all positions.
        raise ValueError("RoPE scaling type 'dynamic' is not supported.")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"Unknown RoPE scaling type {rope_type!r}.")
    with torch.device("cpu"):  # real numbers even while the model is built on "meta"
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """cos/sin for every position, computed once per (device, dtype) and gathered per step."""

    def __init__(self, config, head_dim: int):
        super().__init__()
        self.inv_freq, self.scaling = _inv_freq(config, head_dim)
        self.max_positions = config.max_position_embeddings
        self._table: torch.Tensor | None = None  # [max_positions, head_dim]: cos half | sin half

    def _get_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        table = self._table
        if table is None or table.device != device or table.dtype != dtype:
            pos = torch.arange(self.max_positions, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)
            # fp32 first, then the compute dtype: the order transformers uses.
            table = torch.cat((freqs.cos(), freqs.sin()), dim=-1) * self.scaling
            self._table = table = table.to(device=device, dtype=dtype)
        return table

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [T, 1, head_dim // 2], ready to broadcast over heads."""
        rows = self._get_table(positions.device, dtype)[positions]
        cos, sin = rows.unsqueeze(1).chunk(2, dim=-1)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox / HF "rotate_half" RoPE on x: [T, heads, head_dim] -> a new contiguous tensor."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm with the residual add fused in: returns (normed, new residual)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        # Like transformers: normalise in fp32, round to the model dtype, then scale.
        return normed.to(x.dtype).mul_(self.weight), x


class LlamaAttention(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = _head_dim(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = _Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias
        )
        self.o_proj = _Linear(self.q_size, config.hidden_size, bias=o_bias)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], -1)
        q = apply_rope(q.view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping, backend=meta.backend)
        out = torch.empty_like(q)
        kernels.unified_attention(
            q, k_cache, v_cache, meta.cu_query_lens, meta.seq_lens, meta.block_tables,
            self.scale, out=out, backend=meta.backend,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len,
        )  # fmt: skip
        return self.o_proj(out.view(n, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"Unsupported MLP activation {act!r}: only 'silu' is implemented.")
        bias = bool(getattr(config, "mlp_bias", False))
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = _Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = _Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        act = F.silu(gate_up[:, : self.intermediate_size])
        return self.down_proj(act.mul_(gate_up[:, self.intermediate_size :]))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.self_attn = LlamaAttention(config, qkv_bias, o_bias)
        self.mlp = LlamaMLP(config)
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


def _biases(config) -> tuple[bool, bool]:
    """(q/k/v bias, o_proj bias): Llama's `attention_bias` covers all four projections;
    Qwen2 biases q/k/v only."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


class LlamaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        qkv_bias, o_bias = _biases(config)
        self.embed_tokens = _Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, qkv_bias, o_bias) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config, _head_dim(config))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(positions, hidden.dtype)  # gathered once for all layers
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, cos, sin, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    def key(t: torch.Tensor) -> tuple:
        return t.device, t.dtype, t.data_ptr(), t.stride()

    return key(a) == key(b)


# Hugging Face weight name fragment -> (our merged parameter, shard).
_STACKED = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaForCausalLM(nn.Module):
    """Llama-family causal LM over a paged KV cache (the model runner's interface)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        # Tied: no lm_head at all, compute_logits reuses the embedding (no shared Parameter
        # to keep tied through meta -> to_empty).
        self.lm_head = (
            None
            if self.tie_word_embeddings
            else _Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: int64 [T]; kv_caches: per layer (k_cache, v_cache), each
        [num_blocks, block_size, num_kv_heads, head_dim]. Returns hidden states [T, hidden]."""
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the (merged) parameters.

        A tensor that already is its destination (`param_view(name)`, which a loader may
        read straight into) is not copied. Raises ValueError on a shape mismatch, an unknown
        name, or a parameter left unloaded.
        """
        expected = self._expected_hf_names()
        seen: set[str] = set()
        with torch.no_grad():
            for name, tensor in weights:
                dst = self.param_view(name)
                if dst is None:
                    continue
                if dst.shape != tensor.shape:
                    raise ValueError(
                        f"Weight {name!r} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(dst.shape)}."
                    )
                if not _same_memory(tensor, dst):
                    dst.copy_(tensor)
                seen.add(name)
        missing = sorted(expected - seen)
        if missing:
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            names = ", ".join(missing[:8])
            raise ValueError(f"Weights missing from the checkpoint: {names}{more}.")

    def param_view(self, hf_name: str) -> torch.Tensor | None:
        """The part of our parameters that the Hugging Face tensor `hf_name` fills (rows of a
        merged matrix are contiguous), or None for a tensor we do not need (recomputed RoPE
        frequencies, a tied lm_head). ValueError for a name this model does not have."""
        if hf_name.endswith("rotary_emb.inv_freq") or (
            hf_name == "lm_head.weight" and self.lm_head is None
        ):
            return None
        target, rows = self._locate(hf_name)
        try:
            param = self.get_parameter(target).detach()
        except AttributeError:
            raise ValueError(f"Unexpected weight {hf_name!r} for {type(self).__name__}.") from None
        return param if rows is None else param[rows]

    def _locate(self, hf_name: str) -> tuple[str, slice | None]:
        """Our parameter name and the rows of it that `hf_name` fills (None: all of it)."""
        for fragment, (merged, shard) in _STACKED.items():
            if fragment in hf_name:
                return hf_name.replace(fragment, merged), self._shard_rows(merged, shard)
        return hf_name, None

    def _shard_rows(self, merged: str, shard: str | int) -> slice:
        if merged == ".gate_up_proj.":
            size = self.config.intermediate_size
            return slice(shard * size, (shard + 1) * size)
        attn = self.model.layers[0].self_attn
        start = {"q": 0, "k": attn.q_size, "v": attn.q_size + attn.kv_size}[shard]
        return slice(start, start + (attn.q_size if shard == "q" else attn.kv_size))

    def _expected_hf_names(self) -> set[str]:
        names: set[str] = set()
        for name, _ in self.named_parameters():
            shards = [
                name.replace(merged, hf) for hf, (merged, _) in _STACKED.items() if merged in name
            ]
            names.update(shards or [name])
        return names
