"""The engine's one configuration object."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.checkpoint_precision import CPU_BF16_PRECISIONS

# On CPU the cache gets a fixed byte budget that sits comfortably next to the weights.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30

CPU_WEIGHT_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class EngineConfig:
    """Everything that shapes an engine. `None` model = the bundled SmolLM2-135M-Instruct.

    kv_cache_bytes is the KV budget on CPU; gpu_memory_fraction the share of the GPU's
    memory the engine may use in all (weights + activations + cache) on CUDA.
    enforce_eager: never capture CUDA graphs for decode steps (engine/cuda_graphs.py);
    they are only ever captured on CUDA with the Triton backend.
    pack_cpu_weights: on the CPU, reorder float32 linear weights once into oneDNN's blocked
    layout (engine/models/layers.py `pack_cpu_linears`), and keep a packed copy of a tied LM
    head beside the embedding (as vLLM does; costs the embedding's size again); False keeps
    them plain matrices.
    cpu_weight_dtype: how packed CPU linears of a float32 model keep their weights:
    "float32", or "bfloat16" (half the bytes, read in about half the time at decode;
    activations, products and sums stay float32: kernels/cpu_linear.py). "auto": bfloat16
    where the checkpoint's matrices are bfloat16 or quantized (it loses next to nothing
    they had, engine/checkpoint_precision.py), float32 otherwise.
    tensor_parallel_size: shard the model over N processes (engine/distributed/): on CUDA
    one GPU each (rank r on cuda:r, NCCL), on the CPU N processes over gloo. They meet on
    127.0.0.1 at distributed_port (None: a free port); forming the group, and any one
    collective, fails after distributed_timeout_s rather than waiting forever.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    kv_cache_bytes: int | None = None
    gpu_memory_fraction: float = 0.9
    num_kv_blocks: int | None = None  # overrides both sizes above (tests, the learner's demos)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"
    seed: int = 0
    enforce_eager: bool = False
    pack_cpu_weights: bool = True
    cpu_weight_dtype: str = "auto"
    tensor_parallel_size: int = 1
    distributed_port: int | None = None
    distributed_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            raise ValueError(f"kv_cache_bytes must be > 0, got {self.kv_cache_bytes}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(
                f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.cpu_weight_dtype not in CPU_WEIGHT_DTYPES:
            raise ValueError(
                f"cpu_weight_dtype must be one of {sorted(CPU_WEIGHT_DTYPES)}, got {self.cpu_weight_dtype!r}"
            )
        self._check_tensor_parallel_fields()

    def _check_tensor_parallel_fields(self) -> None:
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {tp!r}")
        port = self.distributed_port
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"distributed_port must be in 0-65535, got {port}")
        if not self.distributed_timeout_s > 0:
            raise ValueError(f"distributed_timeout_s must be > 0, got {self.distributed_timeout_s}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device")
        if device.type == "cuda" and self.tensor_parallel_size > 1:
            # Rank r runs on cuda:r: rank 0 (this process) on cuda:0.
            count = torch.cuda.device_count()
            if self.tensor_parallel_size > count:
                raise ValueError(
                    f"tensor_parallel_size={self.tensor_parallel_size} needs that many GPUs, "
                    f"but torch sees {count}"
                )
            device = torch.device("cuda:0")
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if self.dtype != "auto":
            if self.dtype not in names:
                raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {self.dtype!r}")
            return names[self.dtype]
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU matmuls are fastest and exact in fp32

    def resolve_cpu_weight_dtype(self, checkpoint_precision: str | None) -> torch.dtype:
        """The dtype packed CPU linears keep their weights in (see `cpu_weight_dtype`), for a
        checkpoint of `checkpoint_precision` (engine/checkpoint_precision.py)."""
        chosen = CPU_WEIGHT_DTYPES[self.cpu_weight_dtype]
        if chosen is not None:
            return chosen
        return torch.bfloat16 if checkpoint_precision in CPU_BF16_PRECISIONS else torch.float32
