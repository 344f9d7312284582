"""The main window: sessions on the left, chat panes side by side, a bar to send one prompt
to every open pane, the server switch, the engine's status at the bottom, and the learner's
panels as docks (right or bottom, tabbed when space is short, shown from the View menu)."""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QIcon
from PySide6.QtWidgets import (
    QDockWidget, QHBoxLayout, QLabel, QLineEdit, QMainWindow, QPushButton, QSplitter,
    QToolBar, QVBoxLayout, QWidget,
)  # fmt: skip

from ui.chat_pane import ChatPane
from ui.engine_status import EngineStatus
from ui.server_switch import ServerSwitch
from ui.session_sidebar import SessionSidebar

MAX_PANES = 6


class MainWindow(QMainWindow):
    broadcastRequested = Signal(str)
    settingsRequested = Signal()
    modelsRequested = Signal()  # the Models… button or a click on the status bar's model
    closing = Signal()

    def __init__(self, session_model: QAbstractItemModel, id_role: int,
                 icon: QIcon | None = None, parent: QWidget | None = None):  # fmt: skip
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("pagedesk")
        if icon is not None:
            self.setWindowIcon(icon)
        self.resize(1400, 860)
        self.sidebar = SessionSidebar(session_model, id_role, self)
        self.panes = QSplitter(Qt.Orientation.Horizontal, self)
        self.panes.setObjectName("paneSplitter")
        self.panes.setChildrenCollapsible(False)
        self.empty_hint = QLabel("Open a session from the list, or make a new one.", self)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.server_switch = ServerSwitch(self)
        self.status = EngineStatus(self.statusBar())
        self.status.model.clicked.connect(self.modelsRequested)
        self.view_menu = self.menuBar().addMenu("&View")
        self.view_menu.setObjectName("viewMenu")
        self.docks: dict[str, QDockWidget] = {}
        self._build_toolbar()
        self._build_central()

    def add_panel(self, name: str, title: str, widget: QWidget,
                  area: Qt.DockWidgetArea = Qt.DockWidgetArea.RightDockWidgetArea,
                  tab_with: str | None = None) -> QDockWidget:  # fmt: skip
        """A learner's panel as a dock; its View menu entry shows or hides it. `name` is
        the dock's objectName, which saveState / restoreState remember it by."""
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setAllowedAreas(Qt.DockWidgetArea.RightDockWidgetArea
                             | Qt.DockWidgetArea.BottomDockWidgetArea)  # fmt: skip
        self.addDockWidget(area, dock)
        if tab_with in self.docks:
            self.tabifyDockWidget(self.docks[tab_with], dock)
        self.docks[name] = dock
        action = dock.toggleViewAction()
        action.setObjectName(f"{name}Action")
        self.view_menu.addAction(action)
        return dock

    def add_toolbar_below(self, toolbar: QToolBar) -> None:
        self.addToolBarBreak()
        self.addToolBar(toolbar)
        self.view_menu.addAction(toolbar.toggleViewAction())

    def _build_toolbar(self) -> None:
        toolbar = QToolBar("Main", self)
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        models = QAction("Models…", self)
        models.setObjectName("modelsAction")
        models.triggered.connect(self.modelsRequested)
        toolbar.addAction(models)
        settings = QAction("Settings…", self)
        settings.setObjectName("settingsAction")
        settings.triggered.connect(self.settingsRequested)
        toolbar.addAction(settings)
        toolbar.addSeparator()
        toolbar.addWidget(self.server_switch)
        self.addToolBar(toolbar)

    def _build_central(self) -> None:
        self.broadcast_input = QLineEdit(self)
        self.broadcast_input.setObjectName("broadcastInput")
        self.broadcast_input.setPlaceholderText("One prompt to every open pane at once…")
        self.broadcast_input.returnPressed.connect(self._broadcast)
        self.broadcast_button = QPushButton("Send to all open panes", self)
        self.broadcast_button.setObjectName("broadcastButton")
        self.broadcast_button.clicked.connect(self._broadcast)
        bar = QHBoxLayout()
        bar.addWidget(self.broadcast_input, 1)
        bar.addWidget(self.broadcast_button)
        right = QWidget(self)
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.empty_hint, 1)
        column.addWidget(self.panes, 1)
        column.addLayout(bar)
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.setObjectName("mainSplitter")
        split.addWidget(self.sidebar)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([240, 1160])
        self.setCentralWidget(split)
        self._update_hint()

    # ---------------------------------------------------------------- panes
    def pane_at(self, index: int) -> ChatPane:
        return self.panes.widget(index)

    def chat_panes(self) -> list[ChatPane]:
        return [self.panes.widget(i) for i in range(self.panes.count())]

    def can_add_pane(self) -> bool:
        return self.panes.count() < MAX_PANES

    def add_pane(self, pane: ChatPane) -> None:
        self.panes.addWidget(pane)
        self.panes.setSizes([1] * self.panes.count())  # share the width evenly
        self._update_hint()

    def remove_pane(self, pane: ChatPane) -> None:
        pane.hide()
        pane.setParent(None)
        pane.deleteLater()
        self._update_hint()

    def _update_hint(self) -> None:
        has_panes = self.panes.count() > 0
        self.empty_hint.setVisible(not has_panes)
        self.panes.setVisible(has_panes)

    def _broadcast(self) -> None:
        text = self.broadcast_input.text().strip()
        if text:
            self.broadcast_input.clear()
            self.broadcastRequested.emit(text)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.closing.emit()
        super().closeEvent(event)
