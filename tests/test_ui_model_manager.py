"""The model manager window over the fake Hub: local list, search, a chosen model's files,
a download whose bars reach 100 %, cancel (partial bytes kept) and resume, a gated repo's
sentence, the queue restored after a restart, and Load turned into switch_model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_testing import qloop, tiny_model  # noqa: F401 (fixtures)
from hub_testing import (  # noqa: F401 (fixtures)
    GATED_TOKEN, TINY, WEIGHTS, fake_hub, hf_home, tiny_gguf_file, tiny_model_dir,
)  # fmt: skip
from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QAction

from app.model_manager_controller import ModelManagerController
from ui.download_queue_view import STEPS
from ui.hub_login import NOT_LOGGED_IN
from ui.model_manager import ModelManager

GIB = 2**30


class StubService(QObject):
    """What the controller uses of EngineService: switch_model and two signals."""

    loaded = Signal(object)
    switchFailed = Signal(str)

    def __init__(self):
        super().__init__()
        self.switched: list[str | None] = []

    def switch_model(self, model: str | None):
        self.switched.append(model)


@pytest.fixture
def manager(qtbot, tmp_path):
    window = ModelManager()
    qtbot.addWidget(window)
    service = StubService()
    controller = ModelManagerController(window, service, queue_path=tmp_path / "queue.json",
                                        memory=(8 * GIB, "RTX Test"))  # a fixed yardstick
    window.show()
    yield window, controller, service
    controller.shutdown()


def cell(table, row: int, column: int) -> str:
    return table.item(row, column).text()


def column_of(table, repo_id: str) -> int:
    rows = [r for r in range(table.rowCount()) if cell(table, r, 0) == repo_id]
    assert rows, f"{repo_id} not listed"
    return rows[0]


def search(qtbot, window, text: str = "") -> None:
    window.search.query.setText(text)
    window.search.button.click()
    qtbot.waitUntil(lambda: window.search.button.isEnabled(), timeout=10_000)


def test_local_list_shows_the_bundled_model(qtbot, manager):
    window, _controller, service = manager
    table = window.local.table
    qtbot.waitUntil(lambda: table.rowCount() >= 1, timeout=10_000)
    assert cell(table, 0, 0) == "SmolLM2-135M-Instruct (bundled)"
    assert cell(table, 0, 3) == "llama" and cell(table, 0, 4) == "8,192"
    assert cell(table, 0, 6) == "native Llama"  # the path it runs on
    # Its fit before loading, by hand: SmolLM2-135M has 134,515,008 parameters (tied head);
    # bf16 on a GPU; K and V of 30 layers x 3 heads x 64 per token; an 8k context; the stated
    # overhead of 512 MiB + 10% of the weights.
    weights = 134_515_008 * 2
    needed = weights + 30 * 3 * 64 * 2 * 2 * 8192 + 512 * 2**20 + int(0.1 * weights)
    assert cell(table, 0, 5) == "Fits"
    assert table.item(0, 5).toolTip() == (f"Needs {needed / 2**20:.0f} MiB with an 8k context; "
                                          "8.0 GiB free on the RTX Test: fits.")
    window.local.select(0)
    assert not window.local.delete_button.isEnabled()  # the bundled model cannot be deleted
    window.local.load_button.click()
    assert service.switched == [None]  # the engine's default
    assert "GiB free on the" in window.memory.text()


def test_search_lists_the_hubs_repos_with_support_and_fit(qtbot, manager, fake_hub):
    window, _controller, _service = manager
    search(qtbot, window)
    table = window.search.table
    names = {cell(table, r, 0) for r in range(table.rowCount())}
    assert {TINY, "org/gated", "org/tiny-gguf", "bigorg/Llama-Big-70B-Instruct",
            "someone/Mamba-Odd-1B"} <= names
    big = column_of(table, "bigorg/Llama-Big-70B-Instruct")
    assert cell(table, big, 1) == "70.0B" and cell(table, big, 3) == "llama3"
    assert cell(table, big, 4) == "gated" and cell(table, big, 7) == "yes"
    assert cell(table, big, 8) == "Too large"  # 70e9 x 2 bytes against 8 GiB
    mamba = column_of(table, "someone/Mamba-Odd-1B")
    assert cell(table, mamba, 7) == "no" and cell(table, mamba, 8) == "Fits"  # 1B in bf16
    # Its "mamba" tag is a transformers model_type: the engine's registry gives the reason.
    assert "MambaForCausalLM" in table.item(mamba, 7).toolTip()
    assert cell(table, column_of(table, TINY), 3) == "apache-2.0"
    # the fake Hub sorts by downloads, best first
    assert cell(table, 0, 0) == "bigorg/Llama-Big-70B-Instruct"


def choose(qtbot, window, repo_id: str) -> None:
    search(qtbot, window, repo_id.split("/")[1])
    window.search.table.selectRow(column_of(window.search.table, repo_id))
    qtbot.waitUntil(lambda: window.files.chosen is not None or bool(window.files.support.text()),
                    timeout=10_000)  # fmt: skip


def test_choosing_a_model_shows_its_files_sizes_and_fit(qtbot, manager, fake_hub,
                                                        tiny_model_dir):  # noqa: F811
    window, _controller, _service = manager
    choose(qtbot, window, TINY)
    files = window.files.table
    shown = {cell(files, r, 0): cell(files, r, 1) for r in range(files.rowCount())}
    on_disk = {p.name: p.stat().st_size for p in tiny_model_dir.iterdir()}
    assert set(shown) == set(on_disk)  # config, tokenizer, chat template, safetensors
    assert shown[WEIGHTS] == f"{on_disk[WEIGHTS] / 2**20:.1f} MiB"
    assert window.files.chosen.total_bytes == sum(on_disk.values())
    assert f"{len(on_disk)} files" in window.files.total.text()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert window.files.fit.text().startswith("Fits: Needs ")
    assert config["max_position_embeddings"] == 1024
    assert " with a 1k context; " in window.files.fit.text()
    assert "8.0 GiB free on the RTX Test: fits." in window.files.fit.text()
    assert not window.files.picker.isVisible()  # one weights format, no quantisation choice


def test_download_moves_the_bars_to_100_and_offers_load(qtbot, manager, fake_hub):
    window, controller, service = manager
    fake_hub.rate_bps = 2_000_000  # slow enough to see the bars move (~0.7 s)
    choose(qtbot, window, TINY)
    window.files.download.click()
    row = window.downloads.rows[TINY]
    assert window.tabs.currentWidget() is window.downloads
    qtbot.waitUntil(lambda: 0 < row.total_bar.value() < STEPS, timeout=10_000)
    qtbot.waitUntil(lambda: row.state == "done", timeout=20_000)
    assert row.total_bar.value() == row.total_bar.maximum() == STEPS
    assert row.buttons["load"].isVisible() and not row.buttons["cancel"].isVisible()
    assert controller.queue.get(TINY).state == "done"
    row.buttons["load"].click()
    assert service.switched == [TINY]
    table = window.local.table
    qtbot.waitUntil(lambda: any(cell(table, r, 0) == TINY for r in range(table.rowCount())),
                    timeout=10_000)  # fmt: skip
    assert cell(table, column_of(table, TINY), 6) == "native Llama"


def test_cancel_keeps_the_partial_bytes_and_resume_finishes(qtbot, manager, fake_hub, hf_home):
    window, controller, _service = manager
    release = fake_hub.stall(WEIGHTS, after_bytes=300_000)
    choose(qtbot, window, TINY)
    window.files.download.click()
    row = window.downloads.rows[TINY]
    qtbot.waitUntil(lambda: row.file_label.text().startswith(WEIGHTS) and
                    row.file_bar.value() > 0, timeout=10_000)  # fmt: skip
    # stalled: the speed readout falls to 0 instead of freezing on the last number
    qtbot.waitUntil(lambda: row.speed.text().startswith("0 B/s"), timeout=8_000)
    row.buttons["cancel"].click()
    qtbot.waitUntil(lambda: row.state == "cancelled", timeout=10_000)
    assert controller.queue.get(TINY).state == "cancelled"
    partial = list((hf_home / "hub").rglob("*.pagedesk-partial"))
    assert partial and partial[0].stat().st_size >= 300_000
    release.set()
    row.buttons["resume"].click()
    qtbot.waitUntil(lambda: row.state == "done", timeout=20_000)
    assert row.total_bar.value() == STEPS
    resumed = fake_hub.file_requests(WEIGHTS)[-1]
    assert resumed["range"].startswith("bytes=") and int(resumed["range"][6:].split("-")[0]) \
        >= 300_000  # resumed from the kept bytes, not restarted  # fmt: skip


def test_a_gated_repo_says_why(qtbot, manager, fake_hub):
    window, _controller, _service = manager
    choose(qtbot, window, "org/gated")
    qtbot.waitUntil(lambda: window.message.isVisible(), timeout=10_000)
    text = window.message.text()
    assert text.startswith("org/gated needs a Hugging Face login") and "HF_TOKEN" in text
    assert window.files.support.text() == text and not window.files.download.isEnabled()


def test_a_failed_download_shows_its_sentence_and_retry(qtbot, manager, fake_hub):
    window, controller, _service = manager
    controller.download("org/does-not-exist")
    row = window.downloads.rows["org/does-not-exist"]
    qtbot.waitUntil(lambda: row.state == "failed", timeout=10_000)
    assert "was not found on the Hub" in row.error.text() and row.error.isVisible()
    assert row.buttons["retry"].isVisible()
    assert controller.queue.get("org/does-not-exist").error == row.error.text()
    assert window.message.text() == row.error.text()


def test_the_queue_is_restored_after_a_restart(qtbot, tmp_path, hf_home):
    queue = tmp_path / "queue.json"
    jobs = [{"repo_id": "org/a", "state": "downloading", "done": 500, "total": 1000},
            {"repo_id": "org/b", "state": "failed", "error": "org/b was not found on the Hub."},
            {"repo_id": "org/c", "state": "done", "done": 10, "total": 10}]
    queue.write_text(json.dumps({"version": 1, "jobs": jobs}))
    window = ModelManager()
    qtbot.addWidget(window)
    controller = ModelManagerController(window, None, queue_path=queue)
    rows = window.downloads.rows
    assert rows["org/a"].state == "paused" and rows["org/a"].total_bar.value() == STEPS // 2
    assert rows["org/b"].state == "failed" and "not found" in rows["org/b"].error.text()
    done = rows["org/c"]
    assert done.state == "done" and done.buttons["load"].isVisibleTo(done)
    rows["org/b"].buttons["remove"].click()
    assert "org/b" not in window.downloads.rows and controller.queue.get("org/b") is None
    controller.shutdown()


def test_delete_asks_first_then_frees_the_repo(qtbot, manager, fake_hub, hf_home):
    window, controller, _service = manager
    controller.download(TINY)
    qtbot.waitUntil(lambda: window.downloads.rows[TINY].state == "done", timeout=20_000)
    table = window.local.table
    qtbot.waitUntil(lambda: any(cell(table, r, 0) == TINY for r in range(table.rowCount())),
                    timeout=10_000)  # fmt: skip
    window.local.select(column_of(table, TINY))
    window.local.delete_button.click()
    box = window.local.confirm
    assert box is not None and box.isVisible() and TINY in box.text()
    assert (hf_home / "hub" / "models--org--tiny").exists()  # nothing deleted before the answer
    box.button(box.StandardButton.Yes).click()
    qtbot.waitUntil(lambda: not (hf_home / "hub" / "models--org--tiny" / "snapshots").exists(),
                    timeout=10_000)  # fmt: skip
    qtbot.waitUntil(lambda: all(cell(table, r, 0) != TINY for r in range(table.rowCount())),
                    timeout=10_000)  # fmt: skip
    assert window.message.text().startswith(f"Deleted {TINY}: ")


def test_grab_renders(qtbot, manager, fake_hub, tmp_path):
    window, _controller, _service = manager
    choose(qtbot, window, TINY)
    image = window.grab()
    assert not image.isNull() and image.width() > 500
    image.save(str(Path(tmp_path) / "model_manager.png"))


def test_opened_from_the_main_window_and_load_switches_the_engine(qloop, tmp_path, tiny_model):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app_testing import close_app, open_app, run, until

    window = open_app(qloop, tmp_path / "data", tiny_model)
    try:
        ctrl = window.controller
        window.findChild(QAction, "modelsAction").trigger()
        manager = ctrl.model_manager
        assert manager.objectName() == "modelManager" and manager.isVisible()
        assert not manager.isModal()
        manager.hide()
        QTest.mouseClick(window.status.model, Qt.MouseButton.LeftButton)
        assert manager.isVisible() and ctrl.show_model_manager() is manager  # one window
        local = manager.local
        run(qloop, until(lambda: local.table.rowCount() >= 1, 20, "the local list"))
        local.addRequested.emit(str(tiny_model))  # as the file dialog would
        run(qloop, until(lambda: any(m.kind == "folder" for m in local.models), 20, "folder"))
        local.select(next(i for i, m in enumerate(local.models) if m.kind == "folder"))
        local.load_button.click()
        run(qloop, until(lambda: ctrl.service.is_ready and ctrl.settings.model == str(tiny_model),
                         60, "the switch"))  # fmt: skip
        assert ctrl.qsettings.value("models/extra_paths") == [str(tiny_model)]
    finally:
        close_app(qloop, window)


# ---------------------------------------------------------------- Hugging Face login
def log_in(qtbot, window, token: str) -> None:
    bar = window.hub_login
    assert bar.token_input.echoMode() == bar.token_input.EchoMode.Password
    bar.token_input.setText(token)
    bar.login_button.click()
    qtbot.waitUntil(lambda: bar.login_button.isEnabled() and not window.message.isHidden(),
                    timeout=10_000)  # fmt: skip


def stored_files(hf_home: Path) -> list[Path]:
    return [p for p in hf_home.rglob("*") if p.is_file() and "token" in p.name]


def test_a_wrong_token_says_so_and_stores_nothing(qtbot, manager, fake_hub, hf_home):
    from huggingface_hub import get_token

    window, _controller, _service = manager
    bar = window.hub_login
    assert bar.status.text() == NOT_LOGGED_IN and not bar.logout_button.isEnabled()
    log_in(qtbot, window, "hf_wrong_token")
    assert window.message.text().startswith("Hugging Face did not accept that token")
    assert bar.status.text() == NOT_LOGGED_IN
    assert get_token() is None and stored_files(hf_home) == []


def test_log_in_then_a_gated_download_then_log_out(qtbot, tmp_path, fake_hub, hf_home):
    from huggingface_hub import get_token

    settings_file = tmp_path / "settings.ini"
    qsettings = QSettings(str(settings_file), QSettings.Format.IniFormat)
    window = ModelManager()
    qtbot.addWidget(window)
    controller = ModelManagerController(window, None, queue_path=tmp_path / "queue.json",
                                        qsettings=qsettings, memory=(8 * GIB, "RTX Test"))
    bar = window.hub_login
    try:
        log_in(qtbot, window, GATED_TOKEN)
        assert bar.status.text() == "Logged in to Hugging Face as tester"
        assert window.message.text().startswith("Logged in to Hugging Face as tester")
        assert get_token() == GATED_TOKEN and bar.token_input.text() == ""
        controller.add_path(str(tmp_path))  # so the settings file has something in it
        qsettings.sync()
        assert settings_file.exists() and GATED_TOKEN not in settings_file.read_text()
        # downloads pass token=None: huggingface_hub's stored token, read at each request
        controller.download("org/gated")
        row = window.downloads.rows["org/gated"]
        qtbot.waitUntil(lambda: row.state in ("done", "failed"), timeout=20_000)
        assert row.state == "done", row.error.text()
        assert all(r["auth"] == f"Bearer {GATED_TOKEN}" for r in fake_hub.requests
                   if r["path"].startswith("/org/gated/resolve/"))  # fmt: skip
        # a new window finds the stored token and asks whoami who it is
        again = ModelManager()
        qtbot.addWidget(again)
        other = ModelManagerController(again, None, queue_path=tmp_path / "queue2.json",
                                       memory=(8 * GIB, "RTX Test"))  # fmt: skip
        qtbot.waitUntil(lambda: "tester" in again.hub_login.status.text(), timeout=10_000)
        other.shutdown()
        bar.logout_button.click()
        qtbot.waitUntil(lambda: bar.status.text() == NOT_LOGGED_IN, timeout=10_000)
        assert get_token() is None and not bar.logout_button.isEnabled()
        assert window.message.text().startswith("Logged out of Hugging Face")
    finally:
        controller.shutdown()


def test_the_public_login_is_used_when_it_asks_the_same_hub(qtbot, manager, fake_hub,
                                                           monkeypatch):  # fmt: skip
    import huggingface_hub
    from huggingface_hub import get_token, hf_api

    calls = []
    real_login = huggingface_hub.login
    monkeypatch.setattr(huggingface_hub, "login",
                        lambda **kw: (calls.append(kw), real_login(**kw)))
    monkeypatch.setattr(hf_api.api, "endpoint", fake_hub.url)  # as if it were the default Hub
    window, _controller, _service = manager
    log_in(qtbot, window, GATED_TOKEN)
    assert window.hub_login.status.text() == "Logged in to Hugging Face as tester"
    assert calls == [{"token": GATED_TOKEN, "add_to_git_credential": False}]
    assert get_token() == GATED_TOKEN


def test_a_stored_token_is_not_checked_offline(qtbot, tmp_path, hf_home, monkeypatch):
    from huggingface_hub import constants

    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_some_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    window = ModelManager()
    qtbot.addWidget(window)
    controller = ModelManagerController(window, None, queue_path=tmp_path / "queue.json",
                                        memory=(8 * GIB, "RTX Test"))  # fmt: skip
    assert window.hub_login.status.text() == ("A Hugging Face token is stored "
                                              "(not checked: offline)")  # fmt: skip
    assert window.hub_login.logout_button.isEnabled()
    controller.shutdown()
