"""The learner's panels, wired to the engine: the KV cache grid, the batch timeline, the
throughput charts, and the toolbar that pauses, steps and slows the engine down.

Step records and snapshots come from the engine thread through the service's queued
signal. Every record goes to the timeline and the charts (they draw on their own timers);
only the latest snapshot is kept, and the next one is asked for once it has been handed to
the grid, so the engine builds pictures only as fast as they are drawn, and none while the
KV panel is hidden.
"""

from __future__ import annotations

import logging
import re

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QColor

from app.engine_service import EngineService
from ui.batch_timeline_view import BatchTimelineView
from ui.kv_cache_view import KVCacheView
from ui.learner_toolbar import LearnerToolbar
from ui.learner_tour import LearnerTour
from ui.main_window import MainWindow
from ui.panel_types import RequestOwner
from ui.throughput_view import ThroughputView

log = logging.getLogger(__name__)

SESSION_REQUEST = re.compile(r"^session(\d+)-")  # ChatController's request ids


class LearnerController(QObject):
    def __init__(self, window: MainWindow, service: EngineService, app_controller) -> None:
        super().__init__(window)
        self.setObjectName("learnerController")
        self.window, self.service, self.app = window, service, app_controller
        self.kv_view = KVCacheView()
        self.timeline = BatchTimelineView()
        self.throughput = ThroughputView()
        self.toolbar = LearnerToolbar(window)
        self.tour = LearnerTour(window)
        self.tour.hide()
        self.latest_snapshot = None
        self.paused = False
        self.step_delay = 0.0
        self._selected_tokens: tuple[list[int], int] | None = None  # a clicked message
        self._owners: dict[int, RequestOwner] = {}
        self._build_docks()
        self._connect()
        self.toolbar.set_engine_ready(False)

    def _build_docks(self) -> None:
        w = self.window
        w.add_toolbar_below(self.toolbar)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        bottom = Qt.DockWidgetArea.BottomDockWidgetArea
        # The chats keep the middle: the KV cache and the charts on the right, one above the
        # other, and the timeline below the chats (it is wide, not tall).
        w.add_panel("kvCacheDock", "KV cache", self.kv_view, right)
        w.add_panel("throughputDock", "Throughput", self.throughput, right)
        w.add_panel("batchTimelineDock", "Batch timeline", self.timeline, bottom)
        w.splitDockWidget(w.docks["kvCacheDock"], w.docks["throughputDock"],
                          Qt.Orientation.Vertical)  # fmt: skip
        w.resizeDocks([w.docks["kvCacheDock"]], [540], Qt.Orientation.Horizontal)
        w.resizeDocks([w.docks["kvCacheDock"], w.docks["throughputDock"]], [560, 440],
                      Qt.Orientation.Vertical)  # fmt: skip
        w.resizeDocks([w.docks["batchTimelineDock"]], [230], Qt.Orientation.Vertical)

    def _connect(self) -> None:
        s, t = self.service, self.toolbar
        s.statsUpdated.connect(self._on_stats, Qt.ConnectionType.QueuedConnection)
        s.loaded.connect(self._engine_loaded)
        s.restarting.connect(self._engine_restarting)
        t.pauseToggled.connect(self.set_paused)
        t.stepRequested.connect(self.step)
        t.stepDelayChanged.connect(self.set_step_delay)
        t.smallCacheToggled.connect(self.set_small_cache)
        t.resetPrefixCacheRequested.connect(self.reset_prefix_cache)
        t.experimentRequested.connect(self.run_experiment)
        t.tourRequested.connect(self.tour.start)
        for view in (self.kv_view, self.timeline):
            view.set_owner_resolver(self.owner_of)
        self.kv_view.ownerActivated.connect(self._highlight_pane)
        self.window.docks["kvCacheDock"].visibilityChanged.connect(self._kv_visibility)
        self.window.sidebar.list.clicked.connect(self._session_clicked)
        sessions = self.app.sessions
        for signal in (sessions.dataChanged, sessions.rowsInserted, sessions.rowsRemoved,
                       sessions.modelReset):  # fmt: skip
            signal.connect(self._owners.clear)

    # ---------------------------------------------------------------- owners
    def owner_of(self, parent_id: str) -> RequestOwner | None:
        """The session behind a request id (`session3-message7`), with its colour."""
        match = SESSION_REQUEST.match(parent_id)
        if match is None:
            return None
        sid = int(match.group(1))
        if sid not in self._owners:
            session = self.app.sessions.session(sid)
            if session is None:
                return None
            self._owners[sid] = RequestOwner(sid, session.title, QColor(session.color))
        return self._owners[sid]

    def _highlight_pane(self, key) -> None:
        chat = self.app.chats.get(key)
        if chat is not None:
            chat.pane.set_highlighted(True)

    def _session_clicked(self, index) -> None:
        sid = index.data(self.window.sidebar.id_role)
        if sid is not None:
            self.kv_view.select_owner(int(sid))

    def connect_chat(self, chat) -> None:
        """A new pane: clicking one of its messages lights up that message's blocks."""
        chat.messageTokensSelected.connect(self.show_message_blocks)

    def show_message_blocks(self, _session_id: int, token_ids: list[int], start: int) -> None:
        self._selected_tokens = (list(token_ids), start)
        self._highlight_selected()

    def _highlight_selected(self) -> None:
        from engine.kv_locate import locate_tokens

        if self._selected_tokens is None or self.latest_snapshot is None:
            return
        token_ids, start = self._selected_tokens
        self.kv_view.highlight_blocks(locate_tokens(self.latest_snapshot, token_ids, start))

    # ---------------------------------------------------------------- engine → panels
    def _engine_loaded(self, _info) -> None:
        engine = self.service.engine
        tokenizer = self.service.tokenizer
        self.kv_view.set_decoder(lambda ids: tokenizer.decode(list(ids)))
        if self.paused:
            engine.pause()
        engine.set_step_delay(self.step_delay)
        self.toolbar.set_small_cache(self.service.small_cache)
        self.toolbar.set_engine_ready(True)
        engine.request_snapshot()

    def _engine_restarting(self) -> None:
        """A new engine counts its steps from 0: the timeline starts again with it."""
        self.toolbar.set_engine_ready(False)
        self.timeline.clear()
        self.latest_snapshot = None

    def _on_stats(self, records, snapshot) -> None:
        if self.app.closed:
            return
        if records:
            self.timeline.add_records(records)
            self.throughput.add_records(records)
        if snapshot is not None:
            self.latest_snapshot = snapshot
            self.kv_view.set_snapshot(snapshot)
            self._highlight_selected()
            self._ask_for_snapshot()

    def _ask_for_snapshot(self) -> None:
        engine = self.service.engine
        if engine is not None and self.window.docks["kvCacheDock"].isVisible():
            engine.request_snapshot()

    def _kv_visibility(self, visible: bool) -> None:
        if visible:
            self._ask_for_snapshot()

    # ---------------------------------------------------------------- learner controls
    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        engine = self.service.engine
        if engine is not None:
            engine.pause() if paused else engine.resume()
        self.toolbar.set_paused(paused)

    def step(self) -> None:
        """Exactly one scheduler step; its record reaches the panels like any other."""
        engine = self.service.engine
        if engine is not None and not engine.is_dead:
            engine.step_once_async()

    def set_step_delay(self, seconds: float) -> None:
        self.step_delay = seconds
        if self.service.engine is not None:
            self.service.engine.set_step_delay(seconds)

    def set_small_cache(self, on: bool):
        if on == self.service.small_cache or self.service.engine is None:
            return None
        self.window.statusBar().showMessage(
            "Restarting the engine on 64 blocks of 16 tokens…" if on else
            "Restarting the engine on the cache size from the settings…", 5000)  # fmt: skip
        return self.service.set_small_cache(on)

    def reset_prefix_cache(self) -> None:
        engine = self.service.engine
        if engine is not None:
            future = engine.reset_prefix_cache()
            future.add_done_callback(
                lambda f: log.info("prefix cache reset: %s blocks cleared", f.result()))
            engine.request_snapshot()

    def run_experiment(self, key: str):
        from app.experiments import run_experiment

        return run_experiment(self.app, key)
