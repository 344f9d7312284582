"""The main window with stand-ins (a plain item model, no engine): object names, panes
side by side, the broadcast bar, the server switch, the status bar, the theme."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QPalette, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QApplication, QListView, QPushButton, QSplitter

from engine import StepStats
from ui.chat_pane import ChatPane
from ui.main_window import MAX_PANES, MainWindow
from ui.theme import apply_theme

ID_ROLE = Qt.ItemDataRole.UserRole + 1


def stand_in_model() -> QStandardItemModel:
    model = QStandardItemModel()
    for i, title in enumerate(["One", "Two"], start=1):
        item = QStandardItem(title)
        item.setData(i, ID_ROLE)
        model.appendRow(item)
    return model


def make_window(qtbot) -> MainWindow:
    window = MainWindow(stand_in_model(), ID_ROLE)
    qtbot.addWidget(window)
    return window


def test_object_names_and_the_pane_splitter(qtbot):
    window = make_window(qtbot)
    assert window.objectName() == "mainWindow"
    assert window.findChild(QListView, "sessionList").model().rowCount() == 2
    assert window.findChild(QPushButton, "newSessionButton") is not None
    assert window.panes.isHidden() and not window.empty_hint.isHidden()
    panes = []
    while window.can_add_pane():
        panes.append(ChatPane())
        window.add_pane(panes[-1])
    assert len(window.chat_panes()) == MAX_PANES >= 4
    assert window.findChild(QSplitter, "paneSplitter").orientation() == Qt.Orientation.Horizontal
    window.remove_pane(panes[0])
    assert len(window.chat_panes()) == MAX_PANES - 1 and window.can_add_pane()


def test_broadcast_bar_sends_one_prompt(qtbot):
    window = make_window(qtbot)
    window.broadcast_input.setText("  to everyone ")
    with qtbot.waitSignal(window.broadcastRequested) as sent:
        window.broadcast_button.click()
    assert sent.args == ["to everyone"] and window.broadcast_input.text() == ""
    with qtbot.assertNotEmitted(window.broadcastRequested):
        window.broadcast_button.click()


def test_server_switch_states_and_copy(qtbot):
    window = make_window(qtbot)
    switch = window.server_switch
    with qtbot.waitSignal(switch.toggled) as toggled:
        switch.switch.click()
    assert toggled.args == [True]
    switch.set_running("http://127.0.0.1:8000")
    assert switch.switch.isChecked() and switch.copy_button.isEnabled()
    switch.copy_button.click()
    assert QGuiApplication.clipboard().text() == "http://127.0.0.1:8000"
    with qtbot.assertNotEmitted(switch.toggled):
        switch.set_stopped("failed: port in use")
    assert not switch.switch.isChecked() and switch.address.text() == "failed: port in use"
    switch.set_available(False, "no server here")
    assert not switch.switch.isEnabled() and switch.switch.toolTip() == "no server here"


def test_status_bar_shows_loading_then_the_engine(qtbot):
    window = make_window(qtbot)
    status = window.status
    status.show_loading("SmolLM2")
    assert not status.progress.isHidden() and "Loading SmolLM2" in status.model.text()
    status.show_ready("SmolLM2", "CPU (no CUDA GPU found)", "torch", 23_552, 8192,
                      model_path="native Llama")
    assert status.progress.isHidden()
    assert [status.model.text(), status.device.text(), status.backend.text(), status.kv.text()] == [
        "Model: SmolLM2 · native Llama", "Device: CPU (no CUDA GPU found)", "Attention: torch",
        "KV cache: 23,552 tokens"]  # fmt: skip
    status.show_stats(StepStats(step=3, prefill_tokens=0, decode_tokens=4, batch_size=4,
                                step_seconds=0.02, num_running=4, num_waiting=1,
                                num_preemptions=0, prefix_cache_hit_tokens=0, kv_usage=0.25,
                                finished_time=0.0, **extra_stats_fields()))  # fmt: skip
    assert status.activity.text() == "batch 4 · running 4 · waiting 1 · 200 tok/s · KV 25.0%"


def extra_stats_fields() -> dict:
    """StepStats fields added since (with the values a test does not care about)."""
    from dataclasses import MISSING, fields

    known = {"step", "prefill_tokens", "decode_tokens", "batch_size", "step_seconds",
             "num_running", "num_waiting", "num_preemptions", "prefix_cache_hit_tokens",
             "kv_usage", "finished_time"}  # fmt: skip
    extra = {}
    for f in fields(StepStats):
        if f.name not in known and f.default is MISSING and f.default_factory is MISSING:
            extra[f.name] = "" if f.type in ("str", str) else 0
    return extra


def test_themes_switch_the_palette(qapp):
    assert apply_theme(qapp, "dark") == "dark"
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() < 80
    assert apply_theme(qapp, "light") == "light"
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() > 180
    assert apply_theme(qapp, "system") in ("light", "dark")
