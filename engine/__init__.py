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
from typing import Any

_EXPORTS = {
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "EngineConfig": "engine.config",
    "SamplingParams": "engine.sampling_params",
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
