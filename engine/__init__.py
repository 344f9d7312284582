"""pagedesk's inference engine: PagedAttention over a paged KV cache, continuous batching.

    from engine import LLM, SamplingParams
    llm = LLM()                         # the bundled SmolLM2-135M-Instruct
    outs = llm.generate(["Hello, my name is"], SamplingParams(temperature=0.8, top_p=0.95))

Names are imported on first use, so `import engine.kv_cache_manager` (or a widget that
only needs the snapshot types) does not pay for loading transformers. The learner's panels
also use the pure modules `engine.kv_metrics`, `engine.kv_events`, `engine.kv_locate` and
`engine.static_batching` (`from engine import kv_metrics`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load on first use
    from engine.async_engine import AsyncEngine, EngineDeadError
    from engine.config import EngineConfig
    from engine.kv_events import KVEvent
    from engine.kv_snapshot import BlockState, KVSnapshot
    from engine.llm import LLM
    from engine.llm_engine import LLMEngine
    from engine.model_loader import hf_folder_of
    from engine.models import ModelPath, UnsupportedModelError
    from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
    from engine.sampling_params import RequestOutputKind, SamplingParams
    from engine.stats import ScheduledEntry, StepKind, StepStats
    from engine.structured_outputs import StructuredOutputsParams

_EXPORTS = {
    "LLM": "engine.llm",
    "AsyncEngine": "engine.async_engine",
    "EngineDeadError": "engine.async_engine",
    "UnsupportedModelError": "engine.models",
    "ModelPath": "engine.models",
    "LLMEngine": "engine.llm_engine",
    "hf_folder_of": "engine.model_loader",
    "EngineConfig": "engine.config",
    "SamplingParams": "engine.sampling_params",
    "RequestOutputKind": "engine.sampling_params",
    "StructuredOutputsParams": "engine.structured_outputs",
    "RequestOutput": "engine.outputs",
    "CompletionOutput": "engine.outputs",
    "RequestMetrics": "engine.outputs",
    "StepStats": "engine.stats",
    "StepKind": "engine.stats",
    "ScheduledEntry": "engine.stats",
    "KVSnapshot": "engine.kv_snapshot",
    "BlockState": "engine.kv_snapshot",
    "KVEvent": "engine.kv_events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
