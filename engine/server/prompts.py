"""Requests -> prompt token ids: the chat template for chat, the tokenizer for completions.

Prompts are tokenized here, before the engine sees them, so that a prompt that cannot fit
is refused with a clear 400 (as vLLM and OpenAI do) and usage counts are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.server.errors import APIError, unsupported
from engine.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

# chat_template_kwargs may pass options to the template, never change how it is called.
_RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "chat_template", "tokenize", "return_dict", "return_tensors",
    "add_generation_prompt", "continue_final_message", "tools", "documents", "padding",
    "truncation", "max_length", "tokenizer_kwargs", "return_assistant_tokens_mask",
})


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    text: str | None = None  # what the client sent, for echo


def chat_prompt(tokenizer: Any, request: ChatCompletionRequest) -> Prompt:
    """Render the messages through the tokenizer's chat template (a 400 if it cannot)."""
    if request.add_generation_prompt and request.continue_final_message:
        raise APIError(
            "add_generation_prompt and continue_final_message cannot both be true",
            param="continue_final_message",
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError(
            "this model has no chat template; use /v1/completions with a plain prompt",
            param="messages", code="no_chat_template",
        )
    messages = [_message_dict(i, m) for i, m in enumerate(request.messages)]
    extra = {k: v for k, v in (request.chat_template_kwargs or {}).items()
             if k not in _RESERVED_TEMPLATE_KWARGS}
    try:
        ids = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=False,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message, **extra,
        )
    except Exception as exc:  # noqa: BLE001
        # Templates raise what they like (jinja2's TemplateError from raise_exception for
        # roles that do not alternate, ValueError, TypeError...): all are about this request.
        raise APIError(f"the chat template refused these messages: {exc}", param="messages") from exc
    return Prompt(list(ids))


def _message_dict(index: int, message: ChatMessage) -> dict[str, str]:
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise unsupported(f"messages.[{index}].content", f"content of type {part.type!r}")
            texts.append(part.text)
        content = "".join(texts)
    # Few templates know "developer" (OpenAI's newer name for the system role).
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content or ""}


def completion_prompts(tokenizer: Any, request: CompletionRequest) -> list[Prompt]:
    """One Prompt per prompt in the request (a string, token ids, or a list of either)."""
    raw = request.prompt
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise APIError("prompt is empty", param="prompt")
    return [_one_prompt(tokenizer, item) for item in raw]


def _one_prompt(tokenizer: Any, item: str | list[int]) -> Prompt:
    if isinstance(item, str):
        prompt = Prompt(list(tokenizer.encode(item)) if item else [], item)
    else:
        prompt = Prompt(list(item))
    if not prompt.token_ids:
        raise APIError("prompt is empty", param="prompt")
    return prompt


def check_length(prompt: Prompt, max_tokens: int | None, max_model_len: int, param: str) -> None:
    """Refuse a prompt that leaves no room for its completion in the model's context."""
    n = len(prompt.token_ids)
    if n >= max_model_len:
        raise APIError(
            f"prompt is too long: {n} tokens, but this model's context is {max_model_len} "
            f"tokens (prompt plus at least one generated token)",
            param=param, code="context_length_exceeded",
        )
    if max_tokens is not None and n + max_tokens > max_model_len:
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {n + max_tokens} tokens ({n} in the {param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {param} or completion.",
            param=param, code="context_length_exceeded",
        )
