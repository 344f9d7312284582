"""A session whose replies come from a remote OpenAI-compatible endpoint (a vLLM cluster).

The pane is the same ChatPane and the actions the same ChatController's (send, Stop,
Regenerate, edit-and-resend, export, send to all); only where the reply comes from differs:
/v1/chat/completions streamed with httpx instead of the embedded AsyncEngine. The context
gauge uses the remote's max_model_len and its own token counts (POST /tokenize before a
reply, the usage chunk after it), since the local tokenizer may not be the remote model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from PySide6.QtCore import QObject

from app.chat_controller import SAVE_INTERVAL, ChatController
from app.engine_service import EngineService
from app.remote_backend import RemoteEndpoint, RemoteError, ReplyProgress
from app.store import SessionStore
from ui.chat_pane import ChatPane
from ui.chat_types import ContextUsage

log = logging.getLogger(__name__)


class RemoteChatController(ChatController):
    # Read by the base class's __init__ (it draws the pane) before this one's is done.
    endpoint: RemoteEndpoint | None = None
    model = ""
    max_model_len: int | None = None

    def __init__(self, session_id: int, store: SessionStore, service: EngineService,
                 pane: ChatPane, endpoint: RemoteEndpoint, backend: dict,
                 parent: QObject | None = None):  # fmt: skip
        super().__init__(session_id, store, service, pane, parent)
        self.endpoint = endpoint
        self.model = str(backend["model"])
        self.max_model_len = backend.get("max_model_len")
        self.progress: ReplyProgress | None = None
        self._prompt_tokens: int | None = None  # the last count of the prompt as it stands
        self._count_task: asyncio.Task | None = None
        host = endpoint.base_url.split("://", 1)[-1]
        pane.set_backend_label(f"remote · {self.model} at {host}",
                               f"Replies come from {endpoint.base_url} ({self.model}), "
                               "not from the embedded engine.")  # fmt: skip
        self.update_context()

    # ---------------------------------------------------------------- the context gauge
    def update_context(self, prompt_tokens: int | None = None) -> ContextUsage | None:
        """The remote's context: the last known prompt count (a fresh one is asked for)."""
        if self.closed or not self.max_model_len:
            return None
        if prompt_tokens is None:
            self._count_later()
            prompt_tokens = self._prompt_tokens
        if prompt_tokens is None:
            return None
        usage = ContextUsage(0, prompt_tokens, 0, self.max_model_len)
        self.pane.set_context(usage)
        return usage

    def _count_later(self) -> None:
        if self.endpoint is None or (self._count_task and not self._count_task.done()):
            return
        self._count_task = asyncio.ensure_future(self._count())

    async def _count(self) -> None:
        chat = self._system() + self._history()
        count = await self.endpoint.count_prompt(self.model, chat) if chat else 0
        if count is not None and not self.closed:
            self._prompt_tokens = count
            if not self.busy:
                self.update_context(count)

    def _on_engine_loaded(self, _info) -> None:
        pass  # the embedded engine is not this session's

    def select_message(self, index: int) -> None:
        pass  # a remote's KV blocks cannot be inspected

    # ---------------------------------------------------------------- replies
    async def _reply_if_fits(self) -> None:
        self.pane.set_streaming(True)
        self.pane.show_reply("")
        try:
            chat = self._system() + self._history()
            count = await self.endpoint.count_prompt(self.model, chat)
            if count is not None:
                self._prompt_tokens = count
            if not self._too_long(count):
                await self._stream_remote(chat, count)
        except asyncio.CancelledError:
            pass  # stopped before the reply began, or the pane closed
        finally:
            if not self.closed:
                self.pane.set_streaming(False)
                self.refresh(context=False)

    def _too_long(self, prompt_tokens: int | None) -> bool:
        """Say so when prompt + reply would overflow the remote's context (when both known)."""
        limit, budget = self.max_model_len, self.settings().max_tokens
        if prompt_tokens is None or not limit or prompt_tokens + budget <= limit:
            return False
        self.pane.show_context_warning(
            f"This conversation and a reply of up to {budget:,} tokens need "
            f"{prompt_tokens + budget:,} tokens, more than {self.model}'s context of "
            f"{limit:,} on the remote. Shorten the conversation or max tokens.",
            can_drop=False)  # fmt: skip
        return True

    async def _stream_remote(self, chat: list[dict[str, str]], count: int | None) -> None:
        limit = self.max_model_len
        base = ContextUsage(0, count, 0, limit) if count is not None and limit else None
        message = self.store.add_message(self.session_id, "assistant", "", status="streaming")
        self.reply_id, self.reply_text, self.progress = message.id, "", None
        self.request_id = f"session{self.session_id}-message{message.id}"
        self.pane.show_reply("")
        status, error = "stopped", None
        try:
            await self._consume_remote(chat, base)
            status = "complete"
        except asyncio.CancelledError:
            status = "stopped"  # the stream is closed: the server aborts the request
        except RemoteError as exc:
            log.warning("remote reply for session %d failed: %s", self.session_id, exc)
            status, error = "error", str(exc)
        except Exception as exc:
            log.exception("remote reply for session %d failed", self.session_id)
            status, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._finish(status, error)

    async def _consume_remote(self, chat: list[dict[str, str]], base: ContextUsage | None):
        last_save = time.monotonic()
        stream = self.endpoint.stream_chat(self.model, chat, self.settings().sampling())
        async with contextlib.aclosing(stream):
            async for progress in stream:
                self.progress = progress
                self.reply_text = progress.text
                self.pane.show_reply(progress.text)
                if progress.prompt_tokens is not None and self.max_model_len:
                    base = ContextUsage(0, progress.prompt_tokens, 0, self.max_model_len)
                    self._prompt_tokens = progress.prompt_tokens + progress.tokens
                if base is not None:
                    self.pane.set_context(replace(base, reply=progress.tokens))
                now = time.monotonic()
                if now - last_save >= SAVE_INTERVAL:
                    self.store.update_message(self.reply_id, self.reply_text)
                    last_save = now

    def _reply_stats(self) -> dict:
        return self.progress.stats() if self.progress is not None else {}

    def close(self) -> None:
        if self._count_task is not None:
            self._count_task.cancel()
        super().close()
