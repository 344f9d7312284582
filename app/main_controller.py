"""The application controller: sessions, panes, broadcast, settings, server, shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Qt
from PySide6.QtWidgets import QApplication

from app.chat_controller import ChatController
from app.device_info import EngineInfo
from app.engine_service import EngineService
from app.learner_controller import LearnerController
from app.remote_sessions import RemoteSessions
from app.server_control import ServerControl
from app.session_list_model import SessionListModel
from app.settings import AppSettings, save_settings
from app.store import SessionStore
from ui.chat_pane import ChatPane
from ui.main_window import MainWindow
from ui.settings_dialog import SettingsDialog
from ui.theme import apply_theme

log = logging.getLogger(__name__)

OPEN_PANES_KEY = "open_panes"
WINDOW_STATE_KEY = "window/state"  # the docks' places and visibility (QMainWindow.saveState)


class AppController(QObject):
    def __init__(self, window: MainWindow, store: SessionStore, sessions: SessionListModel,
                 service: EngineService, settings: AppSettings, qsettings: QSettings,
                 data_dir: Path):  # fmt: skip
        super().__init__(window)
        self.setObjectName("appController")
        self.window, self.store, self.sessions = window, store, sessions
        self.service, self.settings, self.qsettings = service, settings, qsettings
        self.data_dir = Path(data_dir)
        self.chats: dict[int, ChatController] = {}  # open panes, in order
        self.server = ServerControl(window.server_switch, service, lambda: self.settings, self)
        self.closed = False
        self.learner = LearnerController(window, service, self)
        self.remotes = RemoteSessions(self)  # sessions on remote endpoints (vLLM clusters)
        self._connect()

    def _connect(self) -> None:
        sidebar = self.window.sidebar
        sidebar.newRequested.connect(self.new_session)
        sidebar.newRemoteRequested.connect(self.remotes.show_dialog)
        sidebar.openRequested.connect(self.open_session)
        sidebar.duplicateRequested.connect(self.duplicate_session)
        sidebar.deleteRequested.connect(self.delete_session)
        self.sessions.dataChanged.connect(self._titles_changed)
        self.window.broadcastRequested.connect(self.broadcast)
        self.window.settingsRequested.connect(self.show_settings)
        self.window.modelsRequested.connect(self.show_model_manager)
        self.window.closing.connect(self.shutdown)
        status = self.window.status
        self.service.loadingStarted.connect(status.show_loading)
        self.service.loaded.connect(self._engine_loaded)
        self.service.loadFailed.connect(status.show_failed)
        self.service.switchFailed.connect(
            lambda why: self.window.statusBar().showMessage(why + " The previous model still "
                                                            "serves.", 15000))  # fmt: skip
        self.service.statsUpdated.connect(self._stats, Qt.ConnectionType.QueuedConnection)
        app = QApplication.instance()
        if app is not None:
            app.styleHints().colorSchemeChanged.connect(self._system_theme_changed)

    # ---------------------------------------------------------------- sessions and panes
    def restore(self) -> None:
        """Reopen the panes that were open last time (or start a first chat)."""
        if not self.sessions.sessions:
            self.new_session()
            return
        for session_id in self.store.get_state(OPEN_PANES_KEY, []):
            if self.store.get_session(session_id) is not None:
                self.open_session(session_id)

    def new_session(self) -> ChatController | None:
        session = self.store.create_session()
        self.sessions.add(session)
        self.window.sidebar.select_session(session.id)
        return self.open_session(session.id)

    def open_session(self, session_id: int) -> ChatController | None:
        if session_id in self.chats:
            self.chats[session_id].pane.input.setFocus()
            return self.chats[session_id]
        if not self.window.can_add_pane():
            self.window.statusBar().showMessage("Close a pane first: all slots are in use.", 5000)
            return None
        pane = ChatPane()
        session = self.store.get_session(session_id)
        if session.is_remote:
            chat = self.remotes.make_chat(session, pane)
        else:
            chat = ChatController(session_id, self.store, self.service, pane, self)
        chat.titleChanged.connect(self.sessions.refresh)
        self.learner.connect_chat(chat)
        pane.closeRequested.connect(lambda: self.close_session(session_id))
        self.chats[session_id] = chat
        self.window.add_pane(pane)
        self._save_open_panes()
        return chat

    def close_session(self, session_id: int) -> None:
        chat = self.chats.pop(session_id, None)
        if chat is None:
            return
        chat.close()
        self.remotes.chat_closed(chat)
        self.window.remove_pane(chat.pane)
        chat.deleteLater()
        self._save_open_panes()

    def duplicate_session(self, session_id: int) -> ChatController | None:
        copy = self.store.duplicate_session(session_id)
        self.sessions.add(copy)
        return self.open_session(copy.id)

    def delete_session(self, session_id: int) -> None:
        self.close_session(session_id)
        self.store.delete_session(session_id)
        self.sessions.remove(session_id)

    def _titles_changed(self, top, bottom, _roles=()) -> None:
        for row in range(top.row(), bottom.row() + 1):
            session = self.sessions.sessions[row]
            if session.id in self.chats:
                self.chats[session.id].pane.set_session(session.title, session.color)

    def _save_open_panes(self) -> None:
        if not self.closed:
            self.store.set_state(OPEN_PANES_KEY, list(self.chats))

    def restore_window_state(self) -> None:
        state = self.qsettings.value(WINDOW_STATE_KEY)
        if state is not None:
            self.window.restoreState(state)

    def save_window_state(self) -> None:
        self.qsettings.setValue(WINDOW_STATE_KEY, self.window.saveState())
        self.qsettings.sync()

    def broadcast(self, text: str) -> list[asyncio.Task]:
        """One prompt to every open pane at once: the local ones stream in the same batch,
        remote ones on their servers, all at the same time."""
        tasks = [chat.send(text) for chat in self.chats.values()]
        busy = sum(t is None for t in tasks)
        if busy:
            self.window.statusBar().showMessage(f"{busy} pane(s) busy: not sent there.", 5000)
        return [t for t in tasks if t is not None]

    # ---------------------------------------------------------------- engine
    def _engine_loaded(self, info: EngineInfo) -> None:
        self.window.status.show_ready(info.model_name, info.device, info.attention_backend,
                                      info.kv_tokens, info.max_model_len,
                                      model_path=info.model_path,
                                      ranks=info.tensor_parallel_size)  # fmt: skip

    def _stats(self, records, _snapshot) -> None:
        if not self.closed and records:
            self.window.status.show_stats(records[-1])

    def load_model(self, model: str | None) -> asyncio.Task:
        """Switch the running app to another model (None: the bundled one). The sessions
        stay; on success the choice is saved as the settings' model, on failure the
        previous model keeps serving and the status bar says why."""
        task = self.service.switch_model(model)
        task.add_done_callback(lambda t: self._model_switched(t, model))
        return task

    def _model_switched(self, task: asyncio.Task, model: str | None) -> None:
        if task.cancelled() or task.exception() is not None or not task.result() or self.closed:
            return
        self.settings.model = model or ""
        save_settings(self.qsettings, self.settings)
        self.window.statusBar().showMessage(f"Now serving {self.service.model_label}.", 8000)

    # ---------------------------------------------------------------- model manager
    def show_model_manager(self):
        """The model manager window, made on first use (its Hub code is imported then),
        non-modal; its Load goes through load_model, so the choice is saved."""
        manager = getattr(self, "model_manager", None)
        if manager is None:
            from app.model_manager_controller import ModelManagerController
            from ui.model_manager import ModelManager

            manager = ModelManager(self.window)
            controller = ModelManagerController(
                manager, self.service, qsettings=self.qsettings,
                queue_path=self.data_dir / "downloads.json", load_fn=self.load_model)
            self.window.closing.connect(controller.shutdown)  # running downloads pause
            self.model_manager = manager
        manager.show()
        manager.raise_()
        manager.activateWindow()
        return manager

    # ---------------------------------------------------------------- settings
    def show_settings(self) -> SettingsDialog:
        info = self.service.info
        dialog = SettingsDialog(asdict(self.settings), self.window,
                                gpus=info.gpus if info is not None else ())  # fmt: skip
        dialog.applied.connect(self.apply_settings)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def _system_theme_changed(self, _scheme) -> None:
        if self.settings.theme == "system" and not self.closed:
            apply_theme(QApplication.instance(), "system")

    def apply_settings(self, values: dict) -> None:
        self.settings = AppSettings(**values)
        save_settings(self.qsettings, self.settings)
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, self.settings.theme)

    # ---------------------------------------------------------------- the end
    def shutdown(self) -> None:
        """Save partial replies, stop the server and the engine, close the database."""
        if self.closed:
            return
        self._save_open_panes()
        self.save_window_state()
        self.closed = True
        app = QApplication.instance()
        if app is not None:
            app.styleHints().colorSchemeChanged.disconnect(self._system_theme_changed)
        for chat in self.chats.values():
            chat.close()
        self.server.shutdown()
        self.remotes.shutdown()
        self.service.shutdown()
        self.store.close()
        log.info("pagedesk closed")
