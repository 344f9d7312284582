"""Remote sessions, wired: the "New remote session" dialog, one HTTP client per endpoint, its
API key from the keyring, and its /metrics polled into the throughput and KV panels while a
pane on it is open.
"""

from __future__ import annotations

import asyncio
import logging

from PySide6.QtCore import QObject

from app.remote_backend import RemoteEndpoint, RemoteError, normalize_url
from app.remote_chat_controller import RemoteChatController
from app.remote_keys import KeyStore
from app.remote_metrics import POLL_INTERVAL_S, MetricsPoller
from app.store import Session
from ui.chat_pane import ChatPane
from ui.remote_session_dialog import RemoteSessionDialog
from ui.remote_types import RemoteMetrics

log = logging.getLogger(__name__)


class RemoteSessions(QObject):
    def __init__(self, app_controller, keys: KeyStore | None = None,
                 poll_interval: float = POLL_INTERVAL_S):  # fmt: skip
        super().__init__(app_controller)
        self.setObjectName("remoteSessions")
        self.app = app_controller
        self.keys = keys if keys is not None else KeyStore()
        self.poll_interval = poll_interval
        self.endpoints: dict[str, RemoteEndpoint] = {}
        self.pollers: dict[str, MetricsPoller] = {}
        self.dialog: RemoteSessionDialog | None = None
        self._check_task: asyncio.Task | None = None

    # ---------------------------------------------------------------- endpoints
    def endpoint(self, url: str) -> RemoteEndpoint:
        """The client for `url`, with the key the keyring (or this run's memory) holds."""
        url = normalize_url(url)
        if url not in self.endpoints:
            self.endpoints[url] = RemoteEndpoint(url, self.keys.get(url))
        return self.endpoints[url]

    # ---------------------------------------------------------------- panes
    def make_chat(self, session: Session, pane: ChatPane) -> RemoteChatController:
        """The controller of a remote session's pane; its endpoint's metrics start flowing."""
        endpoint = self.endpoint(session.backend["url"])
        chat = RemoteChatController(session.id, self.app.store, self.app.service, pane,
                                    endpoint, session.backend, self.app)  # fmt: skip
        self._poll(endpoint)
        return chat

    def chat_closed(self, chat) -> None:
        """A pane went away: stop polling its endpoint when no other pane uses it."""
        if not isinstance(chat, RemoteChatController):
            return
        url = chat.endpoint.base_url
        if any(isinstance(c, RemoteChatController) and c.endpoint.base_url == url
               for c in self.app.chats.values()):  # fmt: skip
            return
        poller = self.pollers.pop(url, None)
        if poller is not None:
            poller.stop()
        self.app.learner.throughput.remote.remove(url)
        self.app.learner.kv_view.remote_note.remove(url)

    def _poll(self, endpoint: RemoteEndpoint) -> None:
        poller = self.pollers.get(endpoint.base_url)
        if poller is None:
            poller = MetricsPoller(endpoint, self._show_metrics, self.poll_interval)
            self.pollers[endpoint.base_url] = poller
        poller.start()

    def _show_metrics(self, metrics: RemoteMetrics) -> None:
        if self.app.closed or metrics.url not in self.pollers:
            return
        self.app.learner.throughput.remote.set_metrics(metrics)
        self.app.learner.kv_view.remote_note.set_metrics(metrics)

    # ---------------------------------------------------------------- the dialog
    def show_dialog(self) -> RemoteSessionDialog:
        dialog = RemoteSessionDialog(self.keys.describe(), self.app.window)
        dialog.checkRequested.connect(self.check)
        dialog.createRequested.connect(self.create)
        dialog.finished.connect(dialog.deleteLater)
        self.dialog = dialog
        dialog.open()
        return dialog

    def check(self, url: str, key: str) -> asyncio.Task:
        """List the endpoint's models with this key; the dialog shows them or the error."""
        dialog = self.dialog
        dialog.show_checking()
        self._check_task = asyncio.ensure_future(self._check(dialog, url, key))
        return self._check_task

    async def _check(self, dialog: RemoteSessionDialog, url: str, key: str) -> None:
        try:
            endpoint = RemoteEndpoint(url, key)
        except RemoteError as exc:
            dialog.show_error(str(exc))
            return
        try:
            models = await endpoint.list_models()
        except RemoteError as exc:
            dialog.show_error(str(exc))
        else:
            dialog.show_models([(m.id, m.max_model_len) for m in models])
        finally:
            await endpoint.aclose()

    def create(self, url: str, key: str, model: str, max_model_len: int):
        """A new session on (url, model); the key goes to the keyring, never to the store."""
        url = normalize_url(url)
        self.keys.set(url, key)
        self.endpoint(url).set_api_key(key)  # the sessions already open on it too
        backend = {"kind": "remote", "url": url, "model": model,
                   "max_model_len": max_model_len or None}  # fmt: skip
        session = self.app.store.create_session(title=f"{model} (remote)", backend=backend)
        self.app.sessions.add(session)
        self.app.window.sidebar.select_session(session.id)
        return self.app.open_session(session.id)

    def shutdown(self) -> None:
        for poller in self.pollers.values():
            poller.stop()
        self.pollers.clear()
        for endpoint in self.endpoints.values():
            try:
                asyncio.ensure_future(endpoint.aclose())
            except RuntimeError:  # no loop any more: the process is ending
                pass
        self.endpoints.clear()
