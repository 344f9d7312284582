"""create_window: build the services and the main window (not shown) on a data dir."""

from __future__ import annotations

from pathlib import Path

from app.engine_service import EngineService
from app.main_controller import AppController
from app.paths import database_path
from app.resources import app_icon
from app.session_list_model import SessionListModel
from app.settings import load_settings, open_qsettings
from app.store import SessionStore
from ui.main_window import MainWindow


def create_window(data_dir: str | Path, model: str | None = None) -> MainWindow:
    """The main window over the sessions in `data_dir`, its model loading in the background.

    Needs a QApplication and a qasync event loop set as the current loop (it need not be
    running yet). `model` overrides the settings' default model. `window.controller` is
    the AppController (sessions, panes, engine service, server)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    qsettings = open_qsettings(data_dir)
    settings = load_settings(qsettings)
    store = SessionStore(database_path(data_dir))
    sessions = SessionListModel(store)
    window = MainWindow(sessions, SessionListModel.IdRole, icon=app_icon())
    sessions.setParent(window)
    service = EngineService(settings.engine_config_fields(model), parent=window)
    controller = AppController(window, store, sessions, service, settings, qsettings, data_dir)
    window.controller = controller
    controller.restore_window_state()
    controller.restore()
    service.start()
    return window
