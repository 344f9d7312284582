"""Remote sessions, wired: the "New remote session" dialog, one HTTP client per endpoint, its
API key from the keyring, and its /metrics polled into the throughput and KV panels while a
pane on it is open.

httpx, keyring and prometheus_client's parser (~0.3 s of imports together) load with the
first remote session or the dialog, not with the window.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject

from app.remote_keys import KeyStore
from app.store import Session
from ui.chat_pane import ChatPane
from ui.remote_types import RemoteMetrics

if TYPE_CHECKING:
    from app.remote_backend import RemoteEndpoint
    from app.remote_chat_controller import RemoteChatController
    from app.remote_metrics import MetricsPoller
    from ui.remote_session_dialog import RemoteSessionDialog

log = logging.getLogger(__name__)


class RemoteSessions(QObject):
    def __init__(self, app_controller, keys: KeyStore | None = None,
                 poll_interval: float | None = None):  # fmt: skip
        """poll_interval: seconds between two reads of a remote's /metrics (None: the
        default, app.remote_metrics.POLL_INTERVAL_S)."""
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
        from app.remote_backend import RemoteEndpoint, normalize_url

        url = normalize_url(url)
        if url not in self.endpoints:
            self.endpoints[url] = RemoteEndpoint(url, self.keys.get(url))
        return self.endpoints[url]

    # ---------------------------------------------------------------- panes
    def make_chat(self, session: Session, pane: ChatPane) -> RemoteChatController:
        """The controller of a remote session's pane; its endpoint's metrics start flowing."""
        from app.remote_chat_controller import RemoteChatController

        endpoint = self.endpoint(session.backend["url"])
        chat = RemoteChatController(session.id, self.app.store, self.app.service, pane,
                                    endpoint, session.backend, self.app)  # fmt: skip
        self._poll(endpoint)
        return chat

    def chat_closed(self, chat) -> None:
        """A pane went away: stop polling its endpoint when no other pane uses it."""
        url = getattr(getattr(chat, "endpoint", None), "base_url", None)
        if url is None:
            return  # a local session
        if any(getattr(getattr(c, "endpoint", None), "base_url", None) == url
               for c in self.app.chats.values()):  # fmt: skip
            return
        poller = self.pollers.pop(url, None)
        if poller is not None:
            poller.stop()
        self.app.learner.throughput.remote.remove(url)
        self.app.learner.kv_view.remote_note.remove(url)

    def _poll(self, endpoint: RemoteEndpoint) -> None:
        from app.remote_metrics import MetricsPoller

        poller = self.pollers.get(endpoint.base_url)
        if poller is None:
            interval = {} if self.poll_interval is None else {"interval": self.poll_interval}
            poller = MetricsPoller(endpoint, self._show_metrics, **interval)
            self.pollers[endpoint.base_url] = poller
        poller.start()

    def _show_metrics(self, metrics: RemoteMetrics) -> None:
        if self.app.closed or metrics.url not in self.pollers:
            return
        self.app.learner.throughput.remote.set_metrics(metrics)
        self.app.learner.kv_view.remote_note.set_metrics(metrics)

    # ---------------------------------------------------------------- the dialog
    def show_dialog(self) -> RemoteSessionDialog:
        from ui.remote_session_dialog import RemoteSessionDialog

        dialog = RemoteSessionDialog(self.keys.describe(), self.app.window)
        dialog.checkRequested.connect(lambda url, key, d=dialog: self.check(url, key, d))
        dialog.createRequested.connect(self.create)
        dialog.finished.connect(dialog.deleteLater)
        self.dialog = dialog
        dialog.open()
        return dialog

    def check(self, url: str, key: str, dialog: RemoteSessionDialog) -> asyncio.Task:
        """List the endpoint's models with this key; the dialog shows them or the error."""
        dialog.show_checking()
        self._check_task = asyncio.ensure_future(self._check(dialog, url, key))
        return self._check_task

    async def _check(self, dialog: RemoteSessionDialog, url: str, key: str) -> None:
        from app.remote_backend import RemoteEndpoint, RemoteError

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
        from app.remote_backend import normalize_url

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
