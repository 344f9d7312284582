"""OpenAI request fields -> the engine's SamplingParams (vLLM's names).

Only the fields a request sets are passed on, so SamplingParams keeps its own defaults.
Features the engine lacks are refused with a 400 that names the field, never ignored.
"""

from __future__ import annotations

from typing import Any

from engine.sampling_params import SamplingParams
from engine.server.errors import APIError, unsupported
from engine.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from engine.server.structured import structured_outputs_of
from engine.server.unsupported import CHAT, COMPLETION, refuse_unsupported

# Request fields whose name and meaning are the engine's own.
_PASS_THROUGH = (
    "n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "stop", "stop_token_ids", "seed", "min_tokens", "ignore_eos",
    "skip_special_tokens", "include_stop_str_in_output",
    "logit_bias", "allowed_token_ids", "bad_words",  # JSON's string keys become ints there
)

# Caps on what one request may ask for, each refused with a 400 naming the field. vLLM has
# no hard cap on n; 128 samples of one prompt is far beyond any real use on one machine.
MAX_N = 128
MAX_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's top_logprobs limit


def chat_sampling_params(
    request: ChatCompletionRequest, max_model_len: int | None = None
) -> SamplingParams:
    """SamplingParams for a chat request. No max_tokens = until the context is full;
    more than the context (`max_model_len`, when given) is a 400."""
    _refuse_unsupported_chat(request)
    refuse_unsupported(request, CHAT)
    fields = _common_fields(request)
    max_tokens = request.max_completion_tokens or request.max_tokens
    fields["max_tokens"] = max_tokens  # None (OpenAI's default for chat): up to the context
    _check_max_tokens(max_tokens, "max_completion_tokens" if request.max_completion_tokens
                      else "max_tokens", max_model_len)
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError("top_logprobs requires logprobs to be true", param="top_logprobs")
    if request.top_logprobs is not None and not 0 <= request.top_logprobs <= MAX_LOGPROBS:
        raise APIError(f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], got "
                       f"{request.top_logprobs}", param="top_logprobs")
    if request.logprobs:
        fields["logprobs"] = request.top_logprobs or 0
    _add_prompt_logprobs(fields, request, request.prompt_logprobs)
    return _build(fields)


def completion_sampling_params(
    request: CompletionRequest, max_model_len: int | None = None
) -> SamplingParams:
    """SamplingParams for a (legacy) completion request; max_tokens defaults to 16, and
    more than the context (`max_model_len`, when given) is a 400."""
    refuse_unsupported(request, COMPLETION)
    if request.best_of is not None and request.best_of != request.n:
        raise unsupported("best_of", "best_of other than n")
    fields = _common_fields(request)
    fields["max_tokens"] = request.max_tokens
    _check_max_tokens(request.max_tokens, "max_tokens", max_model_len)
    if request.logprobs is not None:
        fields["logprobs"] = request.logprobs
    # echo with logprobs returns the prompt's too (vLLM's rule: as many as `logprobs`).
    echoed = request.logprobs if request.echo else None
    _add_prompt_logprobs(fields, request, request.prompt_logprobs if request.prompt_logprobs
                         is not None else echoed)  # fmt: skip
    return _build(fields)


def _common_fields(request: SamplingRequest) -> dict[str, Any]:
    _check_stream_options(request)
    if request.n > MAX_N:
        raise APIError(f"n must be at most {MAX_N}, got {request.n}", param="n")
    fields = {}
    for name in _PASS_THROUGH:
        value = getattr(request, name)
        if value is not None:
            fields[name] = [value] if name == "stop" and isinstance(value, str) else value
    structured = structured_outputs_of(request)  # response_format, structured_outputs, guided_*
    if structured is not None:
        fields["structured_outputs"] = structured
    return fields


def _add_prompt_logprobs(fields: dict[str, Any], request: SamplingRequest, top_n: int | None) -> None:
    # vLLM's rule and words: a stream has nowhere to put top-N prompt logprobs (only
    # an echo's, which are in the completion's own logprobs).
    asked = request.prompt_logprobs
    if request.stream and isinstance(asked, int) and asked > 0:
        raise APIError("`prompt_logprobs` are not available when `stream=True`.",
                       param="prompt_logprobs")
    if top_n is not None:
        fields["prompt_logprobs"] = top_n


def _check_stream_options(request: SamplingRequest) -> None:
    # vLLM's rule and words: an empty {} or null passes, any option without a stream does not.
    options = request.stream_options
    if options is not None and options.model_fields_set and not request.stream:
        raise APIError("Stream options can only be defined when `stream=True`.",
                       param="stream_options")


def _check_max_tokens(max_tokens: int | None, param: str, max_model_len: int | None) -> None:
    # A completion longer than the whole context cannot be, whatever the prompt (OpenAI's
    # "max_tokens is too large"); one that does not fit beside its prompt is check_length's.
    if max_tokens is not None and max_model_len is not None and max_tokens >= max_model_len:
        raise APIError(f"{param} is too large: {max_tokens}. This model's context is "
                       f"{max_model_len} tokens, so a completion has at most "
                       f"{max_model_len - 1} tokens.", param=param)


def _refuse_unsupported_chat(request: ChatCompletionRequest) -> None:
    if request.tools and request.tool_choice != "none":
        raise unsupported("tools", "tool calling")
    if request.tool_choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", "tool_choice")


def _build(fields: dict[str, Any]) -> SamplingParams:
    known = SamplingParams.__dataclass_fields__
    for name in fields:
        if name not in known:  # an engine older than this server
            raise unsupported(name, name)
    try:
        return SamplingParams(**fields)
    except (ValueError, TypeError) as exc:
        raise APIError.from_value_error(ValueError(str(exc))) from exc
