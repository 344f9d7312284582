"""The building blocks every native family is made of: norms, rotary embeddings, MLPs and
the paged attention layer. A family file states only how it differs.

Parameters are not initialised here (they hold whatever memory held) until the model's
`load_weights`: the loader builds on the meta device, then `to_empty` and loads.
"""

from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.attention import AttentionMetadata
from kernels import cpu_fused_ops, cpu_linear
from kernels.reference import store_kv_torch, unified_attention_torch

KVCache = tuple[torch.Tensor, torch.Tensor]


def _onednn_usable() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = _onednn_usable()

# oneDNN, and ideep (torch's wrapper of it), keep a primitive with its JIT-compiled kernel
# for every matrix shape they meet, up to 1,024 of each by default, at ~0.5 MB apiece. A
# server's steps have every row count from 1 to max_num_batched_tokens, so unbounded they
# grew its RSS by ~10% over a three-minute soak (benchmarks/soak.py). 64 holds the shapes of
# the steps in flight. Read when the first primitive is made, so set before any linear runs;
# a value the user set wins.
ONEDNN_CACHE_CAPACITY = 64
for _name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_name, str(ONEDNN_CACHE_CAPACITY))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN for float32 on the CPU: on the AMD EPYC CPUs of these machines
    its inner product is 1.2-1.8x faster than the MKL GEMM torch picks at 4-256 rows (and
    no slower at one row); see benchmarks/cpu_matmul.py. bf16 on the CPU: one row as it is,
    more rows in float32 through `widening_linear`. Elsewhere, F.linear."""
    if x.device.type == "cpu" and x.dim() == 2:
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            if _ONEDNN:
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        elif x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.shape[0] > 1:
            # torch's bf16 GEMM on a CPU without AVX-512 BF16 is 3-4x slower than fp32 from
            # 4 rows up (its one-row GEMV is fast, and bandwidth-bound: kept for decode).
            return widening_linear(x.float(), weight, bias).to(x.dtype)
    return F.linear(x, weight, bias)


# Small enough to stay in the CPU's cache between being written and being read.
WIDEN_CHUNK_BYTES = 2 << 20


class _Scratch(threading.local):
    buffer: torch.Tensor | None = None


_scratch = _Scratch()


def _scratch_rows(rows: int, cols: int) -> torch.Tensor:
    need = rows * cols
    buf = _scratch.buffer
    if buf is None or buf.numel() < need:
        buf = _scratch.buffer = torch.empty(max(need, WIDEN_CHUNK_BYTES // 4))
    return buf[:need].view(rows, cols)


def widening_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (float32) @ weight (bf16) in float32, a few rows of the weight at a time.

    Each chunk of rows is widened into a small per-thread float32 buffer that stays in
    cache, and multiplied from there by the float32 GEMM: 3x faster than torch's bf16 GEMM
    for a prefill on these AVX2 CPUs, and memory still holds (and reads) bf16 weights."""
    out_features, in_features = weight.shape
    rows = max(1, WIDEN_CHUNK_BYTES // (4 * in_features))
    pieces = []
    for a in range(0, out_features, rows):
        b = min(a + rows, out_features)
        wide = _scratch_rows(b - a, in_features)
        wide.copy_(weight[a:b])
        part = bias[a:b].float() if bias is not None else None
        pieces.append(linear(x, wide, part))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


class Linear(nn.Linear):
    """nn.Linear without random init: `load_weights` overwrites every parameter, and on the
    meta device torch's init ops pull in torch._dynamo (seconds of start-up).

    `packed`: the weight is in a CPU blocked layout (`pack_cpu_linears`), readable only by
    `packed_linear`."""

    packed: bool = False

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return packed_linear(x, self.weight, self.out_features, self.bias)
        return linear(x, self.weight, self.bias)


# The row count oneDNN is told to expect when it picks a weight layout. Measured by
# benchmarks/cpu_matmul.py (onednn-packed16): weights reordered for 16 rows are as fast as
# plain ones at one row and 1.3-1.5x faster at 4-64 rows, as fast as vLLM's own CPU linear.
PACK_ROWS_HINT = 16


def pack_cpu_linears(model: nn.Module, stored: torch.dtype = torch.float32) -> int:
    """Pack, in place, the weight of every float32 CPU `Linear` of `model` once, as vLLM's CPU
    build prepacks its linears at load: into pagedesk's blocks of 16 outputs
    (kernels/cpu_linear.py), kept in `stored` (float32, or bfloat16 at half the bytes), or,
    where that kernel does not load, into oneDNN's blocked layout (float32 only). A weight
    another module shares (a tied LM head is the embedding's) is left plain, and packing twice
    is a no-op. Returns how many were packed."""
    if not packing_available(stored):
        return 0
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    packed = 0
    for m in model.modules():
        if not isinstance(m, Linear):
            continue
        w = m.weight
        if m.packed:
            # A model shared by engines (LLMEngine(loaded=...)) is packed by the first: a
            # second asking for other storage would silently get the first's.
            if w.dtype != stored and not w.is_mkldnn:
                raise ValueError(f"this model's CPU linears are already packed in {w.dtype}, "
                                 f"not {stored}: load it again for other weight storage")
            continue
        if owners[id(w)] > 1 or not packable(w):
            continue
        m.weight = nn.Parameter(packed_weight(w, stored), requires_grad=False)
        m.packed = True
        packed += 1
    return packed


def packed_storage(model: nn.Module) -> torch.dtype | None:
    """The dtype `model`'s packed CPU linears keep their weights in; None where none is packed
    (a model shared by engines is packed by the first)."""
    for m in model.modules():
        if isinstance(m, Linear) and m.packed:
            return torch.float32 if m.weight.is_mkldnn else m.weight.dtype
    return None


def packing_available(stored: torch.dtype = torch.float32) -> bool:
    """Whether CPU weights can be packed to be kept in `stored`: pagedesk's kernel for float32
    and bfloat16, oneDNN's reorder for float32."""
    if cpu_linear.load() is not None:
        return stored in cpu_linear.DTYPES
    onednn = _ONEDNN and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    return onednn and stored == torch.float32


def packable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2


def packed_weight(weight: torch.Tensor, stored: torch.dtype = torch.float32) -> torch.Tensor:
    """`weight` ([out, in], float32, CPU) packed once: pagedesk's [ceil(out/16), in, 16]
    blocks in `stored` where its kernel loads, else oneDNN's opaque layout for
    PACK_ROWS_HINT rows. Only `packed_linear` reads either."""
    if not packing_available(stored):
        raise ValueError(f"CPU weights cannot be packed as {stored} here (see packing_available)")
    if cpu_linear.load() is not None:
        return cpu_linear.pack(weight, stored)
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def packed_linear(
    x: torch.Tensor, weight: torch.Tensor, out_features: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] @ a `packed_weight` (+ bias) -> [..., out_features]."""
    if not weight.is_mkldnn:
        return cpu_linear.linear(x, weight, bias, out_features)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


def unpacked_weight(weight: torch.Tensor, out_features: int) -> torch.Tensor:
    """The plain [out, in] matrix of a `packed_weight` (as stored: bf16 stays bf16)."""
    if weight.is_mkldnn:
        return weight.to_dense()
    return cpu_linear.unpack(weight, out_features)


class Embedding(nn.Embedding):
    """nn.Embedding without random init (see `Linear`)."""

    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm without init (see `Linear`)."""

    def reset_parameters(self) -> None:
        pass


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def activation(name: str):
    """transformers' own activation for a config's `hidden_act` / `activation_function`."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"Unsupported activation {name!r}.")
    return ACT2FN[name]


def fused_cpu_ops(x: torch.Tensor):
    """The compiled fused ops (kernels/cpu_fused_ops.py) where they serve x: float32 or
    bfloat16 on the CPU, and the build loaded. None: use torch's ops."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    return cpu_fused_ops.load()


# ---------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """RMSNorm with the residual add fused in: returns (normed, new residual).

    `zero_centred` (Gemma): the weight is stored minus one and the product is taken in
    fp32 before rounding; otherwise (Llama) normalise in fp32, round, then scale, as
    transformers does for each.
    """

    def __init__(self, size: int, eps: float, *, zero_centred: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.zero_centred = zero_centred

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = None if self.zero_centred else fused_cpu_ops(x)
        if ops is not None and x.dim() == 2 and x.is_contiguous() and self.weight.dtype == x.dtype:
            return tuple(ops.add_rms_norm(x, residual, self.weight, self.eps))
        if residual is not None:
            x = x + residual
        return self.norm(x), x

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm alone, over the last dimension (also used per head for q/k norms)."""
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.zero_centred:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return normed.to(x.dtype).mul_(self.weight)


# ---------------------------------------------------------------------------- rotary
def rope_parameters(config, layer_type: str | None = None) -> dict:
    """The RoPE parameters of a config (of one layer type where they differ per type, as in
    Gemma 3), in transformers 5's form: {"rope_type", "rope_theta", ...}."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    params = dict(params or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    elif params and all(isinstance(v, dict) for v in params.values()):
        params = dict(params.get("full_attention") or next(iter(params.values())))
    params.setdefault("rope_type", params.pop("type", "default"))
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def _inv_freq(
    config, rotary_dim: int, layer_type: str | None, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (CPU) and the cos/sin scale, as transformers computes them
    (for contexts of `seq_len` where that matters: longrope's long factors)."""
    params = rope_parameters(config, layer_type)
    rope_type = params["rope_type"]
    if rope_type in ("default", "dynamic"):
        # "dynamic" (NTK) changes frequencies only past the original context, which the
        # engine does not serve (see `max_model_len_of`): up to it, they are the default.
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device="cpu") / rotary_dim
        return 1.0 / (params["rope_theta"] ** exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"Unknown RoPE scaling type {rope_type!r}.")
    with torch.device("cpu"):  # real numbers even while the model is built on "meta"
        fn, cpu = ROPE_INIT_FUNCTIONS[rope_type], torch.device("cpu")
        if layer_type is None:
            inv_freq, scaling = fn(config, cpu, seq_len=seq_len)
        else:
            inv_freq, scaling = fn(config, cpu, seq_len=seq_len, layer_type=layer_type)
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """cos/sin for every position, computed once per (device, dtype) and gathered per step.

    `rotary_dim` < head_dim rotates only the first rotary_dim lanes of each head (Phi,
    StableLM's `partial_rotary_factor`). longrope (Phi-3) has two sets of frequencies:
    short up to `original_max_position_embeddings`, long past it. Like transformers (for one
    sequence) and vLLM (for a batch), a step whose longest context passes that length uses
    the long set for all its tokens.
    """

    def __init__(self, config, rotary_dim: int, *, layer_type: str | None = None):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.max_positions = config.max_position_embeddings
        params = rope_parameters(config, layer_type)
        self._inv_freqs = [_inv_freq(config, rotary_dim, layer_type)]
        self.long_after: int | None = None
        if params["rope_type"] == "longrope":
            self.long_after = params["original_max_position_embeddings"]
            self._inv_freqs.append(_inv_freq(config, rotary_dim, layer_type, self.long_after + 1))
        self._tables: dict[tuple, torch.Tensor] = {}  # (set, device, dtype) -> [pos, cos|sin]

    def _get_table(self, which: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (which, device, dtype)
        table = self._tables.get(key)
        if table is None:
            inv_freq, scaling = self._inv_freqs[which]
            pos = torch.arange(self.max_positions, dtype=torch.float32)
            freqs = torch.outer(pos, inv_freq)
            # fp32 first, then the compute dtype: the order transformers uses.
            table = torch.cat((freqs.cos(), freqs.sin()), dim=-1) * scaling
            self._tables[key] = table = table.to(device=device, dtype=dtype)
        return table

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype, max_seq_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [T, 1, rotary_dim // 2], ready to broadcast over heads.
        `max_seq_len`: the step's longest context (host int), for longrope's choice."""
        which = 0
        if self.long_after is not None:
            longest = max_seq_len if max_seq_len is not None else int(positions.max()) + 1
            which = int(longest > self.long_after)
        rows = self._get_table(which, positions.device, dtype)[positions]
        cos, sin = rows.unsqueeze(1).chunk(2, dim=-1)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox / HF "rotate_half" RoPE on x: [T, heads, head_dim] -> a new contiguous tensor.
    Lanes past 2 * cos.shape[-1] (partial rotary) pass through unchanged."""
    ops = fused_cpu_ops(x)
    if ops is not None and x.dim() == 3 and cos.dtype == x.dtype and x.stride(-1) == 1:
        return ops.rope_neox(x, cos, sin)
    rot = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x_pass), dim=-1)


# ---------------------------------------------------------------------------- attention
def layer_types_of(config) -> list[str]:
    """"sliding_attention" / "full_attention" for each layer, as transformers 5 states it
    (`layer_types`); without it, every layer slides when the config has a window."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    windowed = bool(getattr(config, "sliding_window", None)) and getattr(
        config, "use_sliding_window", True
    )
    kind = "sliding_attention" if windowed else "full_attention"
    return [kind] * config.num_hidden_layers


def sliding_window_of(config, layer_idx: int) -> int | None:
    """The window of layer `layer_idx` (a query sees its last W positions), or None."""
    if layer_types_of(config)[layer_idx] != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None) or None


class PagedAttention(nn.Module):
    """Writes this step's K/V into the paged cache and attends over it: the one place a
    model touches the cache. q: [T, heads, d], k/v: [T, kv_heads, d] -> [T, heads * d]."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        *,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.softcap = softcap or None
        # Passed only when set: the kernels' default call stays exactly as it was.
        self._options = {
            k: v for k, v in (("sliding_window", sliding_window), ("softcap", self.softcap)) if v
        }

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        out = torch.empty_like(q)
        plan = meta.plan
        if plan is not None:  # the torch backend, with the step's plan made once for all layers
            store_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping, plan.all_slots_valid)
            unified_attention_torch(
                q, k_cache, v_cache, meta.cu_query_lens, meta.seq_lens, meta.block_tables,
                self.scale, out, plan=plan, **self._options,
            )  # fmt: skip
            return out.view(q.shape[0], self.num_heads * self.head_dim)
        kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping, backend=meta.backend)
        kernels.unified_attention(
            q, k_cache, v_cache, meta.cu_query_lens, meta.seq_lens, meta.block_tables,
            self.scale, out=out, backend=meta.backend,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len, **self._options,
        )  # fmt: skip
        return out.view(q.shape[0], self.num_heads * self.head_dim)


# ---------------------------------------------------------------------------- MLPs
class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up merged into one matmul (`gate_up_proj`):
    SwiGLU (Llama, act "silu") and GeGLU (Gemma, "gelu_pytorch_tanh")."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.act = activation(act)
        self.silu = act in ("silu", "swish")  # SwiGLU: a fused op on the CPU
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        ops = fused_cpu_ops(gate_up) if self.silu else None
        if ops is not None and gate_up.dim() == 2 and gate_up.stride(-1) == 1:
            return self.down_proj(ops.silu_and_mul(gate_up))
        act = self.act(gate_up[:, : self.intermediate_size])
        return self.down_proj(act.mul_(gate_up[:, self.intermediate_size :]))
