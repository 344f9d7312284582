"""The request fields this server knows of but does not implement: one table, checked for
chat and completion requests (and /tokenize) before anything reaches the engine.

Each field maps to the values that change nothing (vLLM's default, which some clients
always send, e.g. `use_beam_search: false`). Any other value is refused with a 400 naming
the field: a request is never answered as if the field had been honoured. Fields that only
describe the caller (user, metadata, store, request_id...) are in IGNORED: accepted and
ignored, as vLLM and OpenAI do. Fields other parts of the server implement (structured
outputs, logit_bias, allowed_token_ids, bad_words, prompt_logprobs) are in neither.
tests/test_server_vllm_compat.py checks that every request field of vLLM's is accounted for.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine.server.errors import unsupported

# field -> the values that change nothing (None: the field is absent or null)
BOTH: dict[str, tuple[Any, ...]] = {
    # vLLM's sampling extras
    "use_beam_search": (None, False),
    "length_penalty": (None, 1.0),
    "watermarking": (None, False),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "logprob_token_ids": (None,),
    "repetition_detection": (None,),
    "thinking_token_budget": (None,),
    # older vLLMs' request fields, still sent by client code written for them
    "logits_processors": (None, []),
    "early_stopping": (None, False),
    # vLLM's serving extras
    "priority": (None, 0),  # vLLM too refuses it without priority scheduling
    "stream_interval": (None, 1),
    "return_tokens_as_token_ids": (None, False),
    "return_token_ids": (None, False),
    "return_prompt_text": (None, False),
    "cache_salt": (None,),  # a salt the prefix cache would ignore would promise isolation falsely
    "kv_transfer_params": (None,),
    "ec_transfer_params": (None,),
    "vllm_xargs": (None,),
    "mm_processor_kwargs": (None,),
    "media_io_kwargs": (None,),
    "routed_experts_prompt_start": (None, 0),
}

CHAT: dict[str, tuple[Any, ...]] = {
    **BOTH,
    "echo": (None, False),  # vLLM's chat echo (the last message again)
    "add_special_tokens": (None, False),
    "chat_template": (None,),  # a template from the request runs code the server did not choose
    "documents": (None,),
    "reasoning_effort": (None,),
    "include_reasoning": (None, True),
    "verbosity": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None, []),  # the deprecated form of tools
    "function_call": (None, "none"),
}

COMPLETION: dict[str, tuple[Any, ...]] = {
    **BOTH,
    "suffix": (None, ""),
    "prompt_embeds": (None,),
    "add_special_tokens": (None, True),
}


# Accepted and ignored on purpose: they describe the caller, or do nothing on the
# generation routes (vLLM ignores them there too), or only qualify a refused field.
IGNORED = frozenset({
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
    "request_id", "session_id", "parallel_tool_calls", "return_token_offsets", "mm_payload",
    "return_mm_kwargs", "truncation_side",
})


def refuse_unsupported(request: BaseModel, table: dict[str, tuple[Any, ...]]) -> None:
    """A 400 "`field` is not supported" for the first listed field set to a value that
    would change the answer."""
    for name, harmless in table.items():
        value = getattr(request, name, None)  # declared or extra (model_extra) fields alike
        if not any(_same(value, ok) for ok in harmless):
            raise unsupported(name, f"{name}={_json(value)}")


def _same(value: Any, harmless: Any) -> bool:
    # 0 == False and 1 == True in Python: a bool only matches a bool.
    if isinstance(value, bool) != isinstance(harmless, bool):
        return False
    return value == harmless


def _json(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
