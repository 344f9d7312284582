"""What goes wrong is shown, never fatal: a model that does not load, an unexpected
exception (a dialog with the traceback and the log path). And the settings dialog."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QLabel

from app.crash_handler import CrashReporter
from app.settings import load_settings, open_qsettings
from kernels import cpu_linear
from app_testing import (  # noqa: F401  (fixtures)
    close_app, open_app, qloop, run, tiny_model, until, write_settings,
)


def test_a_model_that_does_not_load_is_reported_and_the_window_lives_on(qloop, tmp_path):
    from app import create_window

    write_settings(tmp_path)
    window = create_window(tmp_path, model=str(tmp_path / "no-such-model"))
    ctrl = window.controller
    assert "Loading" in window.status.model.text() and not window.status.progress.isHidden()
    chat = next(iter(ctrl.chats.values()))
    task = chat.send("hello?")
    run(qloop, task)
    assert ctrl.service.error and "Model failed to load" in window.status.model.text()
    assert window.status.progress.isHidden()
    reply = chat.store.messages(chat.session_id)[-1]
    assert reply.status == "error" and "did not load" in reply.content
    assert "did not load" in chat.pane.transcript.toPlainText()
    assert chat.pane.send_button.isEnabled()
    close_app(qloop, window)


def test_unexpected_exceptions_show_a_dialog_with_traceback_and_log_path(qloop, tmp_path):
    reporter = CrashReporter(tmp_path / "logs" / "pagedesk.log")
    saved = sys.excepthook, threading.excepthook
    reporter.install(qloop)
    try:
        async def broken() -> None:
            raise RuntimeError("a bug in a controller")

        async def main() -> None:
            asyncio.ensure_future(broken())  # nobody awaits it: the loop's handler sees it
            await until(lambda: reporter.dialogs, 5, "the dialog")
            try:
                raise KeyError("a bug in a slot")
            except KeyError:
                sys.excepthook(*sys.exc_info())
            thread = threading.Thread(target=lambda: 1 / 0)
            thread.start()
            thread.join()
            await until(lambda: len(reporter.dialogs) == 3, 5, "three dialogs")

        run(qloop, main())
    finally:
        sys.excepthook, threading.excepthook = saved
        qloop.set_exception_handler(None)
    texts = [d.details.toPlainText() for d in reporter.dialogs]
    assert "RuntimeError: a bug in a controller" in texts[0]
    assert "KeyError: 'a bug in a slot'" in texts[1] and "ZeroDivisionError" in texts[2]
    assert all(d.isVisible() for d in reporter.dialogs)
    log_label = reporter.dialogs[0].findChild(QLabel, "crashLogPath")
    assert str(tmp_path / "logs" / "pagedesk.log") in log_label.text()
    for dialog in list(reporter.dialogs):
        dialog.close()


def test_settings_dialog_saves_to_qsettings_and_applies_the_theme(qloop, tiny_model, tmp_path):
    window = open_app(qloop, tmp_path, tiny_model)
    dialog = window.controller.show_settings()
    assert dialog.objectName() == "settingsDialog" and dialog.kv_mib.value() == 16
    dialog.kv_mib.setValue(64)
    dialog.block_size.setCurrentIndex(dialog.block_size.findData("32"))
    dialog.max_seqs.setValue(8)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.port.setValue(8123)
    dialog.api_key.setText("k")
    dialog.model.setText("/models/x")
    assert dialog.cpu_weights.currentData() == "auto"
    dialog.cpu_weights.setCurrentIndex(dialog.cpu_weights.findData("bfloat16"))
    dialog.accept()
    saved = load_settings(open_qsettings(tmp_path))
    assert (saved.kv_cache_bytes, saved.block_size, saved.max_num_seqs) == (64 << 20, 32, 8)
    assert saved.engine_config_fields()["cpu_weight_dtype"] == "bfloat16"
    assert (saved.theme, saved.server_port, saved.server_api_key) == ("dark", 8123, "k")
    assert saved.engine_config_fields()["model"] == "/models/x"
    window_color = QApplication.instance().palette().color(QPalette.ColorRole.Window)
    assert window_color.lightness() < 80
    window.controller.apply_settings({**vars_of(saved), "theme": "light"})
    assert QApplication.instance().palette().color(QPalette.ColorRole.Window).lightness() > 180
    close_app(qloop, window)


def vars_of(settings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


@pytest.mark.skipif(cpu_linear.load() is None, reason="packing needs the CPU linear kernel")
def test_the_cpu_weight_storage_setting_reaches_the_engine_and_the_status_bar(qloop, tiny_model,
                                                                            tmp_path):  # fmt: skip
    """The tiny model is a float32 checkpoint: "auto" keeps it float32, the setting can ask
    for bfloat16 (and the engine then gives other logprobs: test_cpu_packed_weights.py)."""
    for setting, storage in (("auto", "float32"), ("bfloat16", "bfloat16")):
        data_dir = tmp_path / setting
        window = open_app(qloop, data_dir, tiny_model, cpu_weight_dtype=setting)
        assert window.controller.service.engine.info().cpu_weight_storage == storage
        assert f"weights in {storage}" in window.status.device.text()
        close_app(qloop, window)
    write_settings(tmp_path / "bad", cpu_weight_dtype="int3")
    assert load_settings(open_qsettings(tmp_path / "bad")).cpu_weight_dtype == "auto"
