"""What the status bar says about the engine: model and the path it runs on, device,
backend, KV capacity.

Called in the loader thread (it reads torch), returns plain strings for the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model_name: str
    device: str  # "NVIDIA H100 80GB HBM3 (79.1 GiB)" or "CPU (reason) · weights in bfloat16"
    attention_backend: str
    kv_tokens: int
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    model_path: str = ""  # "native Llama" or "generic (transformers GraniteForCausalLM)"
    tensor_parallel_size: int = 1  # ranks the model is sharded over (KV blocks are per rank)
    gpus: tuple[str, ...] = ()  # the CUDA devices torch sees, for the settings dialog


def list_gpus() -> tuple[str, ...]:
    """"cuda:0 NVIDIA H100 80GB HBM3 (79.1 GiB)" for each GPU torch sees (none: ())."""
    import torch

    if not torch.cuda.is_available():
        return ()
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.1f} GiB)")
    return tuple(names)


def describe_parallel(device, tensor_parallel_size: int) -> str:
    """"" at TP=1; else "TP=2 over NCCL (cuda:0-1)" or "TP=2: 2 processes over gloo"."""
    n = tensor_parallel_size
    if n <= 1:
        return ""
    if device.type == "cuda":
        return f"TP={n} over NCCL (cuda:0-{n - 1})"
    return f"TP={n}: {n} processes over gloo"


def describe_device(device, requested: str) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"CPU ({cpu_reason(requested)})"


def cpu_reason(requested: str) -> str:
    import torch

    if requested == "cpu":
        return "chosen in the settings"
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU found"
    return "CUDA is available but was not used"


def engine_info(facts, requested_device: str = "auto") -> EngineInfo:
    """The status bar's strings from `AsyncEngine.info()` (engine.async_engine.EngineFacts)."""
    tp = getattr(facts, "tensor_parallel_size", 1)
    parallel = describe_parallel(facts.device, tp)
    storage = getattr(facts, "cpu_weight_storage", "")
    device = describe_device(facts.device, requested_device)
    device += f" · weights in {storage}" if storage else ""  # the CPU's packed linears
    return EngineInfo(
        model_name=facts.model_name,
        device=device + (f" · {parallel}" if parallel else ""),
        attention_backend=facts.attention_backend,
        kv_tokens=facts.num_kv_blocks * facts.block_size,
        num_kv_blocks=facts.num_kv_blocks,
        block_size=facts.block_size,
        max_model_len=facts.max_model_len,
        model_path=facts.model_path,
        tensor_parallel_size=tp,
        gpus=list_gpus(),
    )
