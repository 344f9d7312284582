"""Remote sessions against a real server: `pagedesk serve` in a subprocess on 127.0.0.1,
standing in for a vLLM deployment (same API, same /metrics names). Local and remote panes
streaming at once with "send to all", Stop aborting the remote request (the server's own
running count drops), 401, an unreachable host, TLS, a model that is gone, the server
killed mid-stream, the metrics in the panels, /v1/models with max_model_len, and the key
kept out of every file the app writes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PySide6.QtWidgets import QLabel, QProgressBar
from keyring.backend import KeyringBackend
from prometheus_client.parser import text_string_to_metric_families

from app_testing import (  # noqa: F401  (fixtures)
    close_app, long_replies, open_app, qloop, run, tiny_model, until,
)

KEY = "sk-remote-test-5f2c9e"  # looked for, byte for byte, in every file the app writes
SERVED_NAME = "tiny-remote"
CONTEXT = 4096  # tiny_model's max_position_embeddings: the server's max_model_len
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedProcess:
    """`pagedesk serve` on a free port, restarted when a test has killed it."""

    def __init__(self, model: Path, log_path: Path):
        self.model, self.log_path = model, log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def alive(self) -> ServedProcess:
        """The server, up: started now if it is not running, and /health answered."""
        if self.proc is None or self.proc.poll() is not None:
            self.launch()
        self._wait()
        return self

    def launch(self) -> None:
        """Start it without waiting (it loads while the test opens its app)."""
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "app", "serve", "--model", str(self.model), "--port",
               str(port), "--api-key", KEY, "--served-model-name", SERVED_NAME, "--device",
               "cpu", "--dtype", "float32", "--block-size", "8", "--log-level", "warning"]
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{port}"

    def _wait(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pagedesk serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("pagedesk serve did not answer /health within 90 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def gauge(self, name: str) -> float:
        """One of the server's own /metrics gauges, read independently of the app."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise KeyError(name)


@pytest.fixture(scope="module")
def remote_server(tiny_model, tmp_path_factory):
    server = ServedProcess(tiny_model, tmp_path_factory.mktemp("serve") / "serve.log")
    server.launch()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_os_keyring():
    """As on CI: no keyring backend works, whatever this machine has (a developer's own
    keyring must not receive test keys; keyring would even pick MemoryKeyring below, since
    it registers every KeyringBackend subclass)."""
    import keyring
    from keyring.backends import fail

    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(before)


class MemoryKeyring(KeyringBackend):
    """An OS keyring stand-in: proves keys go through keyring's API, not to files."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.secrets.get((service, username))

    def set_password(self, service, username, password):
        self.secrets[(service, username)] = password

    def delete_password(self, service, username):
        self.secrets.pop((service, username), None)


def remote_chat(window, url: str, key: str = KEY, model: str = SERVED_NAME):
    """A remote session as the dialog's Create makes it."""
    return window.controller.remotes.create(url, key, model, CONTEXT)


def last_reply(chat):
    return chat.store.messages(chat.session_id)[-1]


def send_and_wait(loop, chat, text: str, timeout: float = 60):
    task = chat.send(text)
    assert task is not None
    run(loop, task, timeout)
    return last_reply(chat)


def failed_reply(loop, window, chat) -> str:
    """Send to a session set up to fail; return the reply's text (as the pane shows it once),
    then close the pane (the window holds a few panes at most)."""
    reply = send_and_wait(loop, chat, "Hello")
    assert reply.status == "error"
    assert chat.pane.transcript.toPlainText().count(reply.content.strip("*")[:40]) == 1
    window.controller.close_session(chat.session_id)
    return reply.content


# ---------------------------------------------------------------- the dialog and /v1/models
def test_dialog_lists_models_with_max_model_len_and_shows_a_401(qloop, tiny_model, tmp_path,
                                                                remote_server):  # fmt: skip
    from ui.remote_session_dialog import RemoteSessionDialog

    window = open_app(qloop, tmp_path, tiny_model)
    server = remote_server.alive()
    remotes = window.controller.remotes
    dialog = remotes.show_dialog()
    assert isinstance(dialog, RemoteSessionDialog) and dialog.isVisible()
    # CI has no keyring backend: the dialog says the key is kept for this run only
    assert not remotes.keys.persistent and "this run only" in dialog.key_note.text()
    dialog.url.setText(server.url + "/v1/")  # a pasted URL with /v1 works as well
    dialog.key.setText("wrong-key")
    dialog.check_button.click()
    run(qloop, remotes._check_task)
    assert "401" in dialog.status.text() and "key" in dialog.status.text()
    assert not dialog.create_button.isEnabled()
    dialog.key.setText(KEY)
    dialog.check_button.click()
    run(qloop, remotes._check_task)
    assert dialog.model.count() == 1 and dialog.model.currentText() == SERVED_NAME
    assert dialog.context.text() == f"{CONTEXT:,} tokens (max_model_len)"
    dialog.create_button.click()
    chat = next(c for c in window.controller.chats.values() if getattr(c, "model", None))
    assert chat.max_model_len == CONTEXT and chat.endpoint.base_url == server.url
    assert chat.pane.backend_label.isVisibleTo(chat.pane)
    unreachable = "http://127.0.0.1:%d" % free_port()
    dialog = remotes.show_dialog()
    dialog.url.setText(unreachable)
    dialog.check_button.click()
    run(qloop, remotes._check_task)
    assert f"cannot reach {unreachable}" in dialog.status.text()
    dialog.reject()
    close_app(qloop, window)


# ---------------------------------------------------------------- streaming, side by side
def test_local_and_remote_panes_stream_at_once_with_send_to_all(qloop, tiny_model, tmp_path,
                                                                remote_server):  # fmt: skip
    server = remote_server.alive()
    window = open_app(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    local = next(iter(ctrl.chats.values()))
    remote = remote_chat(window, server.url)
    reply_tokens = 300  # long enough that both are still streaming when both have text
    long_replies(local, max_tokens=reply_tokens)
    long_replies(remote, max_tokens=reply_tokens)
    tasks = ctrl.broadcast("Tell me about paged attention")
    assert len(tasks) == 2

    async def both_streaming():
        await until(lambda: len(local.reply_text) > 5 and len(remote.reply_text) > 5, 60,
                    "both replies to stream")  # fmt: skip
        return local.busy and remote.busy

    assert run(qloop, both_streaming())  # both have text, neither has finished
    run(qloop, asyncio.gather(*tasks), 90)
    for chat in (local, remote):
        reply = last_reply(chat)
        assert reply.status == "complete", reply.content
        assert reply.stats["tokens"] == reply_tokens  # remote: the usage chunk's count
        assert reply.stats["time_to_first_token"] > 0 and reply.stats["tokens_per_second"] > 0
        assert f"{reply_tokens} tokens" in chat.pane.transcript.toPlainText()
    # Both serve the same model: greedy (temperature 0, ignore_eos, max_tokens mapped to the
    # request's fields) gives the embedded engine's own reply, token for token
    assert last_reply(remote).content == last_reply(local).content
    # The gauge: the remote's max_model_len, its prompt count, the reply's tokens; the same
    # prompt counted by the local tokenizer (the same one) gives the same number
    usage, mine = remote.pane.gauge.bar.usage, local.pane.gauge.bar.usage
    assert (usage.limit, usage.reply) == (CONTEXT, reply_tokens)
    assert usage.system + usage.history == mine.system + mine.history > 0
    # Seeded sampling maps too: temperature, top_p, top_k and seed give the local engine's
    # own sampled reply
    for chat in (local, remote):
        long_replies(chat, max_tokens=40, temperature=1.0, top_p=0.9, top_k=20, seed=7)
    run(qloop, asyncio.gather(*ctrl.broadcast("Now something random")), 60)
    assert last_reply(remote).content == last_reply(local).content
    assert last_reply(remote).stats["tokens"] == 40
    # Regenerate on the remote gives a fresh reply in place of the old one
    before = len(remote.store.messages(remote.session_id))
    run(qloop, remote.regenerate(), 60)
    assert len(remote.store.messages(remote.session_id)) == before
    assert last_reply(remote).status == "complete"
    # The throughput panel shows the remote's /metrics; the KV panel says what it cannot show
    view = ctrl.learner.throughput.remote
    generated = _counter(server, "vllm:generation_tokens")  # the server's own, all done
    assert generated >= reply_tokens + 40 + 40
    run(qloop, until(lambda: (view.latest.get(server.url) is not None
                              and view.latest[server.url].generation_tokens == generated), 10,
                     "the remote's metrics"))  # fmt: skip
    shown = view.latest[server.url]
    assert shown.running == 0 and shown.kv_usage is not None
    assert "running 0" in view.rows[server.url].text() and view.isVisibleTo(view.parent())
    _, rates = view.curve_data(server.url)  # the chart: generation tok/s, >0 while it streamed
    assert len(rates) >= 2 and np.nanmax(rates) > 0
    note = ctrl.learner.kv_view.remote_note
    assert "cannot be inspected" in note.rows[server.url].findChild(
        QLabel, "remoteKVNoteLabel").text()
    assert note.rows[server.url].findChild(QProgressBar).format().startswith("remote KV")
    # The session's backend survives a restart; its key is in no file the app wrote
    remote_id = remote.session_id
    close_app(qloop, window)
    assert_key_in_no_file(tmp_path)
    window = open_app(qloop, tmp_path, tiny_model)
    again = window.controller.chats[remote_id]
    assert type(again).__name__ == "RemoteChatController"
    assert (again.endpoint.base_url, again.model, again.max_model_len) == (
        server.url, SERVED_NAME, CONTEXT)
    close_app(qloop, window)


def _counter(server: ServedProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name + "_total")  # fmt: skip


def assert_key_in_no_file(data_dir: Path) -> None:
    written = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ini" for p in written) and any("sqlite" in p.name or p.suffix
                                                            == ".db" for p in written), written
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"the API key was written to {path}"


def test_key_goes_to_the_keyring_when_one_works(qloop, tiny_model, tmp_path, remote_server):
    from app.remote_keys import SERVICE, KeyStore

    server = remote_server.alive()
    keyring = MemoryKeyring()
    window = open_app(qloop, tmp_path, tiny_model)
    remotes = window.controller.remotes
    remotes.keys = KeyStore(keyring)
    assert remotes.keys.persistent and "OS keyring" in remotes.keys.describe()
    chat = remote_chat(window, server.url)
    assert keyring.secrets == {(SERVICE, server.url): KEY}
    assert "api_key" not in chat.store.get_session(chat.session_id).backend
    close_app(qloop, window)
    assert_key_in_no_file(tmp_path)


# ---------------------------------------------------------------- Stop and failures
def test_stop_aborts_the_remote_request_and_failures_show_in_the_pane(qloop, tiny_model,
                                                                      tmp_path, remote_server):
    server = remote_server.alive()
    window = open_app(qloop, tmp_path, tiny_model)
    remote = remote_chat(window, server.url)
    long_replies(remote, max_tokens=3000)
    remote.send("Write a long story")
    run(qloop, until(lambda: len(remote.reply_text) > 20, 60, "some remote text"))
    assert server.gauge("vllm:num_requests_running") == 1
    remote.pane.stop_button.click()
    run(qloop, until(lambda: not remote.busy, 10, "the reply to stop"))
    deadline = time.monotonic() + 10
    while server.gauge("vllm:num_requests_running") != 0:  # the server aborted it
        assert time.monotonic() < deadline, "the remote request kept running after Stop"
        time.sleep(0.1)
    reply = last_reply(remote)
    assert reply.status == "stopped" and len(reply.content) > 20
    assert reply.stats["tokens"] < 3000
    # 401: a wrong key entered for this server (it replaces the key for the URL)
    wrong = remote_chat(window, server.url + "/", key="wrong-key")
    assert remote.endpoint is wrong.endpoint  # one client and one key per URL
    text = failed_reply(qloop, window, wrong)
    assert "401" in text and "refused the API key" in text
    # no key at all (as after a restart without a keyring): the message says what to do
    text = failed_reply(qloop, window, remote_chat(window, server.url, key=""))
    assert "401" in text and "none is stored" in text
    # a model that is gone (404); the right key entered with it is the URL's key again
    text = failed_reply(qloop, window, remote_chat(window, server.url, model="retired-model"))
    assert "retired-model" in text and "404" in text
    # an unreachable host, and TLS spoken to a plain-HTTP server
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert f"cannot reach {nowhere}" in failed_reply(qloop, window, remote_chat(window, nowhere))
    tls = remote_chat(window, server.url.replace("http://", "https://"))
    assert "TLS failed" in failed_reply(qloop, window, tls)
    # and after all that, the first remote session still replies (with the right key)
    long_replies(remote, max_tokens=8)
    assert send_and_wait(qloop, remote, "Again").status == "complete"
    close_app(qloop, window)


def test_server_killed_mid_stream_keeps_the_partial_and_the_app_works(qloop, tiny_model,
                                                                      tmp_path, remote_server):
    server = remote_server.alive()
    window = open_app(qloop, tmp_path, tiny_model)
    local = next(iter(window.controller.chats.values()))
    remote = remote_chat(window, server.url)
    long_replies(remote, max_tokens=3000)
    remote.send("Write a long story")
    run(qloop, until(lambda: len(remote.reply_text) > 20, 60, "some remote text"))
    server.kill()
    run(qloop, until(lambda: not remote.busy, 15, "the reply to end"))
    reply = last_reply(remote)
    assert reply.status == "error" and "dropped mid-reply" in reply.content
    partial = reply.content.split("\n\n*")[0]
    assert len(partial) > 20 and remote.pane.transcript.toPlainText().count("dropped") == 1
    view = window.controller.learner.throughput.remote
    run(qloop, until(lambda: "cannot reach" in view.rows[server.url].text(), 10,
                     "the throughput panel to say the remote is gone"))  # fmt: skip
    long_replies(local, max_tokens=16)
    assert send_and_wait(qloop, local, "Still there?").status == "complete"
    assert last_reply(local).stats["tokens"] == 16
    close_app(qloop, window)


def test_the_store_refuses_a_backend_that_holds_a_key(tmp_path):
    from app.store import SessionStore

    store = SessionStore(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="api_key"):
        store.create_session(backend={"kind": "remote", "url": "http://x", "api_key": KEY})
    session = store.create_session(backend={"kind": "remote", "url": "http://x", "model": "m"})
    with pytest.raises(ValueError, match="keyring"):
        store.set_backend(session.id, {**session.backend, "token": KEY})
    assert store.get_session(session.id).is_remote
    store.close()
