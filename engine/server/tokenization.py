"""vLLM's POST /tokenize and POST /detokenize: the served model's tokenizer, over HTTP.

/tokenize takes a `prompt` (the tokenizer alone; `add_special_tokens` defaults to true) or
chat `messages` (rendered by the chat template, as /v1/chat/completions would; vLLM's
`add_generation_prompt`, `continue_final_message`, `chat_template_kwargs`) and answers
`{"count", "max_model_len", "tokens", "token_strs"}` (`token_strs` with
`return_token_strs: true`, else null). /detokenize takes `tokens` and answers `{"prompt"}`.
The tokenizer runs in a worker thread: a long prompt does not hold up other clients.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.server.errors import APIError, model_not_found, unsupported
from engine.server.prompts import chat_prompt
from engine.server.protocol import ChatCompletionRequest, ChatMessage
from engine.server.unsupported import CHAT, refuse_unsupported

TokenId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest and TokenizeChatRequest in one body: exactly one
    of `prompt` and `messages`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # vLLM's defaults: true for a prompt, false for messages (the template adds them)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    return_token_strs: bool | None = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class Tokenization:
    """/tokenize and /detokenize over one engine's tokenizer."""

    def __init__(self, engine: Any, served_model_names: list[str]):
        self.engine = engine
        self.model_names = served_model_names

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        self._check_model(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise APIError("give exactly one of `prompt` and `messages`", param="prompt")
        if request.messages is not None:
            ids = await asyncio.to_thread(self._chat_ids, request)
        else:
            ids = await asyncio.to_thread(self._prompt_ids, request)
        tokenizer = self.engine.tokenizer
        strs = list(tokenizer.convert_ids_to_tokens(ids)) if request.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.engine.max_model_len,
                                tokens=ids, token_strs=strs)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self._check_model(request.model)
        vocab = self.engine.info().vocab_size
        bad = [t for t in request.tokens if t >= vocab]
        if bad:
            raise APIError(f"tokens holds ids outside the vocabulary [0, {vocab}): {bad[:5]}",
                           param="tokens")
        text = await asyncio.to_thread(self.engine.tokenizer.decode, request.tokens)
        return DetokenizeResponse(prompt=text)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_names:
            raise model_not_found(model)

    def _prompt_ids(self, request: TokenizeRequest) -> list[int]:
        special = True if request.add_special_tokens is None else request.add_special_tokens
        return list(self.engine.tokenizer.encode(request.prompt, add_special_tokens=special))

    def _chat_ids(self, request: TokenizeRequest) -> list[int]:
        refuse_unsupported(request, CHAT)  # add_special_tokens, chat_template, documents...
        if request.tools:
            raise unsupported("tools", "tool calling")
        chat = ChatCompletionRequest(
            messages=request.messages, add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            chat_template_kwargs=request.chat_template_kwargs,
        )
        return chat_prompt(self.engine.tokenizer, chat).token_ids
