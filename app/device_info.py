"""What the status bar says about the engine: model and the path it runs on, device,
backend, KV capacity.

Called in the loader thread (it reads torch), returns plain strings for the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model_name: str
    device: str  # "NVIDIA H100 80GB HBM3 (79.1 GiB)" or "CPU (reason)"
    attention_backend: str
    kv_tokens: int
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    model_path: str = ""  # "native Llama" or "generic (transformers GraniteForCausalLM)"


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


def engine_info(llm_engine, requested_device: str = "auto") -> EngineInfo:
    block_size = llm_engine.config.block_size
    return EngineInfo(
        model_name=llm_engine.model_name,
        device=describe_device(llm_engine.device, requested_device),
        attention_backend=str(llm_engine.attention_backend),
        kv_tokens=llm_engine.num_kv_blocks * block_size,
        num_kv_blocks=llm_engine.num_kv_blocks,
        block_size=block_size,
        max_model_len=llm_engine.max_model_len,
        model_path=llm_engine.model_path.label,
    )
