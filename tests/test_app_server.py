"""The window's server switch: the OpenAI-compatible server on the running engine, on
127.0.0.1 with the port and API key from the settings, while a chat streams."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

from PySide6.QtWidgets import QCheckBox, QLineEdit

from app_testing import (  # noqa: F401  (fixtures)
    close_app, long_replies, open_app, qloop, run, tiny_model, until,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def test_server_switch_serves_the_running_engine_beside_the_chats(qloop, tiny_model, tmp_path):
    port = free_port()
    window = open_app(qloop, tmp_path, tiny_model, server_port=port, server_api_key="sesame")
    ctrl = window.controller
    chat = next(iter(ctrl.chats.values()))
    long_replies(chat, max_tokens=1500)
    switch = window.findChild(QCheckBox, "serverSwitch")
    address = window.findChild(QLineEdit, "serverAddress")
    assert switch.isEnabled()
    switch.click()
    run(qloop, until(lambda: ctrl.server.url is not None, 30, "the server to start"))
    assert address.text() == f"http://127.0.0.1:{port}" and switch.isChecked()
    window.server_switch.copy_button.click()
    assert window.server_switch.address.text() == address.text()

    async def chat_and_call() -> tuple:
        chat.send("a long one")
        await until(lambda: len(chat.reply_text) > 5, what="the pane to stream")
        loop = asyncio.get_running_loop()
        url = f"{address.text()}/v1/chat/completions"
        body = {"model": ctrl.service.info.model_name, "max_tokens": 5, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        ok = await loop.run_in_executor(None, post, url, body, "sesame")
        refused = await loop.run_in_executor(None, post, url, body, None)
        busy = chat.busy
        chat.stop()
        return ok, refused, busy

    (status, reply), (refused, _), pane_still_streaming = run(qloop, chat_and_call(), 90)
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] == 5
    assert refused == 401
    assert pane_still_streaming
    stats = ctrl.service.engine.engine.stats_history
    assert max(s.batch_size for s in stats) == 2  # the server's request joined the pane's batch
    switch.click()
    run(qloop, until(lambda: address.text() == "" and not switch.isChecked(), 30, "the stop"))
    assert ctrl.server.handle is None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    close_app(qloop, window)
