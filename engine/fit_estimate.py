"""Will a model fit? Weights + KV cache for one context + an overhead, against free memory.

    needed = weights + kv_bytes_per_token × context + overhead
    kv_bytes_per_token = layers × kv_heads × head_dim × 2 (K and V) × dtype bytes
    overhead = OVERHEAD_FIXED_BYTES + OVERHEAD_FRACTION × weights

The fixed part is what a process pays before any tensor (CUDA context, allocator pools,
the tokenizer); the fraction covers activations and the logits of a prefill chunk, which
grow with the model. Levels, like LM Studio's "full GPU offload possible / likely fits /
likely too large": "fits" when needed ≤ FITS_FRACTION × free, "tight" when needed ≤ free,
"too_large" above. Pure Python: no torch or Qt import, except inside `free_memory`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.checkpoint_precision import CPU_BF16_PRECISIONS

GiB = 2**30
MiB = 2**20
OVERHEAD_FIXED_BYTES = 512 * MiB
OVERHEAD_FRACTION = 0.10
FITS_FRACTION = 0.85  # leave 15% of the free memory to everything else on the machine
DEFAULT_CONTEXT = 8192

__all__ = [
    "FitEstimate", "estimate_fit", "kv_bytes_per_token", "weights_bytes", "parameter_count",
    "free_memory", "engine_dtype_bytes", "cpu_weights_bytes", "cpu_stored_bytes",
    "format_bytes", "context_label", "default_context",
]  # fmt: skip


@dataclass(frozen=True)
class FitEstimate:
    needed_bytes: int
    free_bytes: int
    level: str  # "fits" | "tight" | "too_large"
    sentence: str  # one plain sentence, ready to show


# config.json names some families use for the standard fields (transformers maps them).
_ALIASES = {
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer",),
    "num_attention_heads": ("n_head",),
    "max_position_embeddings": ("n_positions",),
    "intermediate_size": ("n_inner", "ffn_dim"),
}


def _get(config: Any, name: str, default: Any = None) -> Any:
    """A field of a config dict or of a transformers PretrainedConfig."""
    if isinstance(config, Mapping):
        value = config.get(name)
        for alias in _ALIASES.get(name, ()):
            value = config.get(alias) if value is None else value
    else:
        value = getattr(config, name, default)
    return default if value is None else value


def _head_dim(config: Any) -> int:
    heads = int(_get(config, "num_attention_heads", 0))
    explicit = _get(config, "head_dim")
    if explicit:
        return int(explicit)
    return int(_get(config, "hidden_size", 0)) // heads if heads else 0


def kv_bytes_per_token(config: Any, dtype_bytes: int = 2) -> int:
    """K and V bytes one token takes in the cache over all layers; 0 when the config lacks
    the sizes (a Hub listing gives only the architecture)."""
    layers = int(_get(config, "num_hidden_layers", 0))
    kv_heads = int(_get(config, "num_key_value_heads", _get(config, "num_attention_heads", 0)))
    return layers * kv_heads * _head_dim(config) * 2 * dtype_bytes


def parameter_count(config: Any) -> int:
    """Parameters of a Llama-family model (Llama, Mistral, Qwen2) from its config."""
    hidden, layers = int(_get(config, "hidden_size", 0)), int(_get(config, "num_hidden_layers", 0))
    vocab, inter = int(_get(config, "vocab_size", 0)), int(_get(config, "intermediate_size", 0))
    heads = int(_get(config, "num_attention_heads", 0))
    kv_heads = int(_get(config, "num_key_value_heads", heads))
    head_dim = _head_dim(config)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o; k, v
    layer = attention + 3 * hidden * inter + 2 * hidden  # gate/up/down, two norms
    embeddings = vocab * hidden * (1 if _get(config, "tie_word_embeddings", False) else 2)
    return embeddings + layers * layer + hidden  # the final norm


def weights_bytes(
    config: Any = None, *, num_parameters: int | None = None, dtype_bytes: int = 2
) -> int:
    """Bytes the weights take in memory as the engine holds them (every tensor in one
    dtype: a GGUF is dequantised on load, so its file size does not count here)."""
    if num_parameters is None:
        num_parameters = parameter_count(config) if config is not None else 0
    return int(num_parameters) * dtype_bytes


def cpu_weights_bytes(config: Any, stored_bytes: int = 4) -> int:
    """Bytes a natively run model's weights take in the CPU engine (engine/model_runner.py):
    the embedding and norms plain in float32 (lookups and norms read them so), every linear,
    an untied head included, packed with `stored_bytes` a weight (4, or 2 for bfloat16
    storage: EngineConfig.cpu_weight_dtype), and a tied head's packed copy beside the
    embedding (engine/models/base.py pack_tied_head)."""
    hidden, layers = int(_get(config, "hidden_size", 0)), int(_get(config, "num_hidden_layers", 0))
    embedding = int(_get(config, "vocab_size", 0)) * hidden
    plain = embedding + (2 * layers + 1) * hidden  # two norms a layer, the final norm
    tied = bool(_get(config, "tie_word_embeddings", False))
    linears = parameter_count(config) - plain + (embedding if tied else 0)
    return plain * 4 + linears * stored_bytes


def cpu_stored_bytes(precision: str | None, cpu_weight_dtype: str = "auto") -> int:
    """Bytes a packed CPU linear keeps a weight in under EngineConfig.cpu_weight_dtype, for a
    checkpoint of `precision` (engine/checkpoint_precision.py matrix_precision)."""
    chosen = {"float32": 4, "bfloat16": 2}.get(cpu_weight_dtype)
    return chosen or (2 if precision in CPU_BF16_PRECISIONS else 4)


def engine_dtype_bytes(device_name: str) -> int:
    """The engine's dtype="auto": float32 on the CPU, bfloat16/float16 on a GPU."""
    return 4 if device_name.startswith("CPU") else 2


def default_context(config: Any) -> int:
    """The context the estimate assumes: 8k, or less where the model's limit is lower."""
    # A sliding window does not cap the context (the kernels apply it; every block stays cached).
    limit = int(_get(config, "max_position_embeddings", DEFAULT_CONTEXT))
    return min(limit, DEFAULT_CONTEXT)


def format_bytes(n: int) -> str:
    """E.g. 9.1 GiB, or 540 MiB under a GiB (a 135M model is not "0.5 GiB")."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def context_label(tokens: int) -> str:
    """E.g. "an 8k context", "a 4k context", "a 1,000-token context"."""
    text = f"{tokens // 1024}k" if tokens % 1024 == 0 else f"{tokens:,}-token"
    spoken_vowel = text.startswith("8") or text.startswith(("11k", "18k"))
    return f"{'an' if spoken_vowel else 'a'} {text} context"


def _level(needed: int, free: int) -> str:
    if needed <= FITS_FRACTION * free:
        return "fits"
    return "tight" if needed <= free else "too_large"


def _needed(weights: int, kv_per_token: int, context: int) -> int:
    overhead = OVERHEAD_FIXED_BYTES + int(OVERHEAD_FRACTION * weights)
    return weights + kv_per_token * context + overhead


_VERDICTS = {"fits": "fits", "tight": "may fit, with little room to spare",
             "too_large": "will not fit"}  # fmt: skip


def estimate_fit(
    weights_bytes: int,
    config: Any,
    context_len: int,
    free_bytes: int,
    device_name: str,
    alternatives: Sequence[tuple[str, int]] = (),
    dtype_bytes: int = 2,
) -> FitEstimate:
    """The estimate and its sentence: "needs 9.1 GiB with an 8k context; 6.0 GiB free on the
    RTX 4090: will not fit. Try the Q4_K_M file (4.8 GiB)." `alternatives` are other files
    of the same model, (name, weights bytes in memory); the largest that fits is offered."""
    kv = kv_bytes_per_token(config, dtype_bytes)
    needed = _needed(weights_bytes, kv, context_len)
    level = _level(needed, free_bytes)
    context = f"with {context_label(context_len)}" if kv else "for the weights alone"
    sentence = (
        f"needs {format_bytes(needed)} {context}; {format_bytes(free_bytes)} free on the "
        f"{device_name}: {_VERDICTS[level]}."
    )
    if level == "too_large":
        sentence += _suggestion(weights_bytes, kv, context_len, free_bytes, alternatives)
    return FitEstimate(needed, free_bytes, level, sentence)


def _suggestion(weights: int, kv: int, context: int, free: int,
                alternatives: Sequence[tuple[str, int]]) -> str:  # fmt: skip
    """What would fit instead: a smaller file (the largest that fits), else a shorter
    context (halving down to 1k), else nothing."""
    fitting = [(size, name) for name, size in alternatives
               if _level(_needed(size, kv, context), free) != "too_large"]  # fmt: skip
    if fitting:
        size, name = max(fitting)
        return f" Try the {name} file ({format_bytes(size)})."
    shorter = context // 2
    while kv and shorter >= 1024:
        if _level(_needed(weights, kv, shorter), free) != "too_large":
            return f" It would fit with {context_label(shorter)}."
        shorter //= 2
    return ""


def free_memory(device: str = "auto") -> tuple[int, str]:
    """(free bytes, device name) on the GPU the engine would use, else available RAM.
    torch is imported here only: the rest of this module stays import-light."""
    if device != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(device if device.startswith("cuda") else "cuda").index or 0
                free, _total = torch.cuda.mem_get_info(index)
                return int(free), _short_gpu_name(torch.cuda.get_device_name(index))
        except (ImportError, RuntimeError):
            pass  # no usable CUDA: fall back to RAM, as the engine does
    return _available_ram(), "CPU (RAM)"


def _short_gpu_name(name: str) -> str:
    """"NVIDIA GeForce RTX 4090" -> "RTX 4090"."""
    for prefix in ("NVIDIA GeForce ", "NVIDIA "):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
