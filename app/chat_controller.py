"""One session in one pane: send, stream, stop, regenerate, edit-and-resend, fit the context.

Replies stream from the shared AsyncEngine in a coroutine per pane, so every open pane is
one request in the same continuous batch. A reply is written to the store while it streams
(every SAVE_INTERVAL seconds), so a killed app loses at most that much text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.context_budget import TokenCounter, plan_fit
from app.engine_service import EngineLoadError, EngineService
from app.export import session_to_json, session_to_markdown
from app.store import Message, SessionStore
from ui.chat_pane import ChatPane
from ui.chat_types import ChatMessage, ChatSettings, ContextUsage, ReplyStats

log = logging.getLogger(__name__)

SAVE_INTERVAL = 0.5  # seconds between saves of a streaming reply
DEFAULT_TITLE = "New chat"


def reply_stats(out, now: float | None = None) -> dict:
    """tokens, time to first token and decode speed of a (possibly unfinished) reply."""
    m = out.metrics
    tokens = len(out.outputs[0].token_ids)
    stats: dict = {"tokens": tokens}
    if m.first_token_time is not None:
        stats["time_to_first_token"] = round(m.first_token_time - m.arrival_time, 4)
        end = m.finished_time or now or time.monotonic()
        if tokens > 1 and end > m.first_token_time:
            stats["tokens_per_second"] = round((tokens - 1) / (end - m.first_token_time), 2)
    return stats


class ModelSwitched(Exception):
    """The model was switched while a reply streamed: the reply stops where it was."""


def _params_left(params, done: int):
    """The same sampling for the rest of a reply that already has `done` tokens."""
    if params.max_tokens is None:
        return params
    return replace(params, max_tokens=max(1, params.max_tokens - done),
                   min_tokens=max(0, params.min_tokens - done))  # fmt: skip


def to_view(m: Message) -> ChatMessage:
    stats = None
    if "tokens" in m.stats:
        stats = ReplyStats(m.stats["tokens"], m.stats.get("time_to_first_token"),
                           m.stats.get("tokens_per_second"))  # fmt: skip
    return ChatMessage(m.role, m.content, m.status, stats, m.in_context)


class ChatController(QObject):
    titleChanged = Signal(int)  # session id
    # a clicked message's tokens: (session id, token ids of the chat up to its end, where
    # the message starts); the learner's KV panel lights up the blocks that hold them
    messageTokensSelected = Signal(int, object, int)

    def __init__(self, session_id: int, store: SessionStore, service: EngineService,
                 pane: ChatPane, parent: QObject | None = None):  # fmt: skip
        super().__init__(parent)
        self.session_id = session_id
        self.store = store
        self.service = service
        self.pane = pane
        self.task: asyncio.Task | None = None
        self.reply_id: int | None = None  # the message being streamed
        self.reply_text = ""
        self.request_id: str | None = None
        self.last_output = None  # the latest RequestOutput of the running reply
        self.prompt_ids: list[int] = []  # what the running reply was asked with
        self.closed = False
        self._drop_plan = 0
        self._system_cache: tuple[str | None, int] = (None, 0)
        pane.sendRequested.connect(self.send)
        pane.editedResendRequested.connect(self.resend_edited)
        pane.stopRequested.connect(self.stop)
        pane.regenerateRequested.connect(self.regenerate)
        pane.settingsChanged.connect(self._save_settings)
        pane.dropOldestRequested.connect(self.drop_oldest_and_send)
        pane.exportRequested.connect(self.export)
        pane.messageSelected.connect(self.select_message)
        service.loaded.connect(self._on_engine_loaded)
        self.load()

    # ---------------------------------------------------------------- state
    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def settings(self) -> ChatSettings:
        session = self.store.get_session(self.session_id)
        return ChatSettings.from_stored(session.system_prompt, session.sampling)

    def load(self) -> None:
        session = self.store.get_session(self.session_id)
        self.pane.set_session(session.title, session.color)
        self.pane.set_settings(self.settings())
        self.refresh()

    def refresh(self, context: bool = True) -> None:
        self.pane.set_messages([to_view(m) for m in self.store.messages(self.session_id)])
        if context:
            self.update_context()

    def _system(self) -> list[dict[str, str]]:
        prompt = self.settings().system_prompt.strip()
        return [{"role": "system", "content": prompt}] if prompt else []

    def _history(self) -> list[dict[str, str]]:
        """What the model sees: in-context messages, partial replies included, errors not."""
        return [
            {"role": m.role, "content": m.content}
            for m in self.store.messages(self.session_id)
            if m.in_context and m.role in ("user", "assistant") and m.status != "error"
            and m.content
        ]

    def _on_engine_loaded(self, _info) -> None:
        self.update_context()

    def update_context(self, prompt_tokens: int | None = None) -> ContextUsage | None:
        """Show (and return) the context's use by the prompt as it stands."""
        if self.closed or self.service.tokenizer is None:
            return None
        system = self._system()
        if prompt_tokens is None:
            chat = system + self._history()
            prompt_tokens = self._counter().count(chat) if chat else 0
        usage = ContextUsage(self._system_tokens(system), 0, 0, self.service.info.max_model_len)
        usage = replace(usage, history=max(0, prompt_tokens - usage.system))
        self.pane.set_context(usage)
        return usage

    def _counter(self) -> TokenCounter:
        return TokenCounter(self.service.tokenizer)

    def _system_tokens(self, system: list[dict[str, str]]) -> int:
        key = system[0]["content"] if system else ""
        if self._system_cache[0] != key:
            self._system_cache = (key, self._counter().count(system, generation_prompt=False))
        return self._system_cache[1]

    # ---------------------------------------------------------------- actions
    def send(self, text: str) -> asyncio.Task | None:
        """Add the user's message and stream a reply (None when a reply is running)."""
        if self.busy or not text.strip():
            return None
        return self._start(self._send(text.strip()))

    async def _send(self, text: str) -> None:
        self._add_user(text)
        await asyncio.sleep(0)  # let other panes and the UI run between the steps of a send
        await self._reply_if_fits()

    def resend_edited(self, text: str) -> asyncio.Task | None:
        """Replace the last user message (and what followed it) with `text`, and send."""
        if self.busy:
            return None
        messages = self.store.messages(self.session_id)
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last_user is not None:
            self.store.delete_messages(m.id for m in messages[last_user:])
        return self.send(text)

    def regenerate(self) -> asyncio.Task | None:
        """Drop the replies after the last user message and ask again."""
        if self.busy:
            return None
        messages = self.store.messages(self.session_id)
        tail = []
        for m in reversed(messages):
            if m.role == "user":
                break
            tail.append(m.id)
        if len(tail) == len(messages):
            return None  # no user message to answer
        self.store.delete_messages(tail)
        self.refresh()
        return self._start(self._reply_if_fits())

    def stop(self) -> None:
        """Abort the running reply now; what it wrote so far stays."""
        if self.busy:
            self.task.cancel()

    def drop_oldest_and_send(self) -> asyncio.Task | None:
        """The person agreed: take the oldest turns out of the context, then reply."""
        if self.busy or self._drop_plan <= 0:
            return None
        in_context = [m for m in self.store.messages(self.session_id) if m.in_context]
        starts = [i for i, m in enumerate(in_context) if m.role == "user"]
        cut = starts[self._drop_plan] if self._drop_plan < len(starts) else len(in_context)
        self.store.set_in_context((m.id for m in in_context[:cut]), False)
        self._drop_plan = 0
        self.pane.hide_context_warning()
        self.refresh()
        return self._start(self._reply_if_fits())

    def _save_settings(self, settings: ChatSettings) -> None:
        self.store.update_settings(self.session_id, settings.system_prompt, settings.sampling())
        if not self.busy:
            self.update_context()

    def export(self, fmt: str, path: str) -> None:
        session = self.store.get_session(self.session_id)
        messages = self.store.messages(self.session_id)
        text = session_to_json(session, messages) if fmt == "json" else session_to_markdown(
            session, messages
        )
        Path(path).write_text(text, encoding="utf-8")
        log.info("exported session %d to %s", self.session_id, path)

    def close(self) -> None:
        """The pane goes away (or the app quits): save the partial reply, stop it."""
        self.closed = True
        self.service.loaded.disconnect(self._on_engine_loaded)
        if self.reply_id is not None:
            self.store.update_message(self.reply_id, self.reply_text, status="stopped")
        if self.busy:
            self.task.cancel()

    # ---------------------------------------------------------------- the work
    def _start(self, coro) -> asyncio.Task:
        self.task = asyncio.ensure_future(coro)
        return self.task

    def _add_user(self, text: str) -> None:
        session = self.store.get_session(self.session_id)
        if session.title == DEFAULT_TITLE and not self.store.messages(self.session_id):
            self.store.rename_session(self.session_id, text.splitlines()[0][:48])
            self.pane.set_session(self.store.get_session(self.session_id).title, session.color)
            self.titleChanged.emit(self.session_id)
        self.store.add_message(self.session_id, "user", text)
        self.pane.hide_context_warning()
        self.refresh(context=False)  # measured when the reply starts

    async def _reply_if_fits(self) -> None:
        self.pane.set_streaming(True)  # waiting for the model counts as busy
        self.pane.show_reply("")  # "thinking…" until the first words arrive
        streamed = False
        try:
            await self.service.wait_ready()
            prompt = self._counter().prompt_ids(self._system() + self._history())
            await asyncio.sleep(0)
            if not self._warn_if_too_long(len(prompt)):
                streamed = True
                await self._stream_reply(prompt)
        except EngineLoadError as exc:
            self.store.add_message(self.session_id, "assistant", f"*The model did not load: "
                                   f"{exc}*", status="error")  # fmt: skip
        except asyncio.CancelledError:
            pass  # stopped before the reply began, or the pane closed
        finally:
            if not self.closed:
                self.pane.set_streaming(False)
                # The gauge keeps prompt + reply as streamed: no re-count of the whole chat
                # here, when several panes may finish in the same engine step.
                self.refresh(context=not streamed)

    def _warn_if_too_long(self, prompt_tokens: int) -> bool:
        """Say so (and offer to drop the oldest turns) when prompt + reply would overflow."""
        limit = self.service.info.max_model_len
        budget = self.settings().max_tokens
        need = prompt_tokens + budget
        if need <= limit:
            return False
        plan = plan_fit(self._counter(), self._system(), self._history(), budget, limit)
        if not plan:
            self.pane.show_context_warning(
                f"Your last message and a reply of up to {budget:,} tokens need {need:,} "
                f"tokens, more than the model's context of {limit:,}. Shorten the message, "
                "the system prompt or max tokens.", can_drop=False)  # fmt: skip
            return True
        self._drop_plan = plan
        turns = "turn" if plan == 1 else "turns"
        self.pane.show_context_warning(
            f"This conversation and a reply of up to {budget:,} tokens need {need:,} tokens, "
            f"more than the model's context of {limit:,}. Drop the oldest {plan} {turns} "
            "from what the model sees? (They stay in the transcript.)", can_drop=True)  # fmt: skip
        return True

    async def _stream_reply(self, prompt: list[int]) -> None:
        from engine import SamplingParams

        try:
            params = SamplingParams(**self.settings().sampling())
        except (TypeError, ValueError) as exc:
            self.store.add_message(self.session_id, "assistant",
                                   f"*Bad sampling settings: {exc}*", status="error")  # fmt: skip
            return
        base = self.update_context(len(prompt))
        message = self.store.add_message(self.session_id, "assistant", "", status="streaming")
        self.reply_id, self.reply_text, self.last_output = message.id, "", None
        self.request_id = f"session{self.session_id}-message{message.id}"
        self.pane.show_reply("")
        status, error = "stopped", None
        try:
            await self._consume(prompt, params, base)
            status = "complete"
        except (asyncio.CancelledError, ModelSwitched):
            status = "stopped"
        except Exception as exc:  # the engine died, or refused the request
            log.exception("reply for session %d failed", self.session_id)
            status, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._finish(status, error)

    async def _consume(self, prompt: list[int], params, base: ContextUsage | None) -> None:
        """Stream the reply into the pane, saving it every SAVE_INTERVAL seconds. If the
        engine is replaced meanwhile (the learner's cache size), carry on where it stopped:
        the new engine gets the prompt and the tokens so far, as a preempted request is
        recomputed, and goes on writing."""
        from engine.async_engine import EngineDeadError

        self.prompt_ids, done_ids, done_text = list(prompt), [], ""
        while True:
            engine = self.service.engine
            try:
                await self._stream_part(engine, prompt + done_ids, params, base, done_ids,
                                        done_text)  # fmt: skip
                return
            except EngineDeadError:
                replaced = self.service.is_restarting or self.service.engine is not engine
                if not replaced:
                    raise
                if not self.service.restart_keeps_weights:
                    raise ModelSwitched from None  # another model's tokens would not fit
            await self.service.wait_ready()
            out = self.last_output.outputs[0] if self.last_output is not None else None
            if out is not None:
                done_ids, done_text = list(out.token_ids), self.reply_text
            params = _params_left(params, len(done_ids))

    async def _stream_part(self, engine, prompt: list[int], params, base: ContextUsage | None,
                           done_ids: list[int], done_text: str) -> None:  # fmt: skip
        last_save = time.monotonic()
        async for out in engine.generate(prompt, params, request_id=self.request_id):
            if done_ids:  # a part after a restart: the reply is what came before and this
                first = out.outputs[0]
                out = replace(out, prompt_token_ids=self.prompt_ids, outputs=[replace(
                    first, text=done_text + first.text, token_ids=done_ids + first.token_ids)])
            self.last_output = out
            self.reply_text = out.outputs[0].text
            self.pane.show_reply(self.reply_text)
            if base is not None:
                self.pane.set_context(replace(base, reply=len(out.outputs[0].token_ids)))
            now = time.monotonic()
            if now - last_save >= SAVE_INTERVAL:
                self.store.update_message(self.reply_id, self.reply_text)
                last_save = now

    # ---------------------------------------------------------------- the KV panel's link
    def select_message(self, index: int) -> None:
        """Say which tokens the clicked message is, so its KV blocks can be shown."""
        if self.service.tokenizer is None:
            return
        found = self.message_tokens(index)
        if found is not None:
            self.messageTokensSelected.emit(self.session_id, *found)

    def message_tokens(self, index: int) -> tuple[list[int], int] | None:
        """(token ids of the chat up to the end of message `index`, where it starts), as the
        engine saw them; None for a message that is not sent to the model."""
        messages = self.store.messages(self.session_id)
        if index >= len(messages) or messages[index].id == self.reply_id:
            if self.last_output is None:
                return None
            return self.prompt_ids + list(self.last_output.outputs[0].token_ids), len(
                self.prompt_ids)
        m = messages[index]
        if not m.in_context or m.status == "error" or m.role not in ("user", "assistant"):
            return None
        chat = self._system() + [
            {"role": x.role, "content": x.content} for x in messages[: index + 1]
            if x.in_context and x.role in ("user", "assistant") and x.status != "error"
            and x.content
        ]  # fmt: skip
        start = len(self._template_ids(chat[:-1])) if len(chat) > 1 else 0
        return self._template_ids(chat), start

    def _template_ids(self, chat: list[dict[str, str]]) -> list[int]:
        return list(self.service.tokenizer.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=False, return_dict=False))

    def _finish(self, status: str, error: str | None) -> None:
        """Write the reply's final text, status and numbers (unless the pane has closed)."""
        reply_id, self.reply_id, self.request_id = self.reply_id, None, None
        if self.closed or reply_id is None:
            return
        stats = self._reply_stats()
        text = self.reply_text
        if error:
            stats["error"] = error
            text = f"{text}\n\n*{error}*" if text else f"*{error}*"
        self.store.update_message(reply_id, text, status=status, stats=stats)

    def _reply_stats(self) -> dict:
        """The finished reply's numbers (a remote session counts them from its stream)."""
        return reply_stats(self.last_output) if self.last_output is not None else {}
