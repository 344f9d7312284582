"""Switching the running app to another model: the old model and its cache are freed, the
sessions and their messages stay, the server switch follows, a reply streaming at the time
stops where it was, and a model that fails to load leaves the previous one serving."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import urllib.request

import pytest
from PySide6.QtWidgets import QCheckBox

from app_testing import (  # noqa: F401  (fixtures)
    close_app, long_replies, open_app, qloop, run, tiny_model, until,
)
from model_factory import make_random_llama
from test_app_server import free_port, post


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second tiny model of another shape, so a switch is visible in the engine."""
    return make_random_llama(tmp_path_factory.mktemp("other") / "other-llama", num_heads=2,
                             num_kv_heads=1, head_dim=32, num_layers=3, seed=7,
                             max_position_embeddings=2048)  # fmt: skip


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def switch(loop, ctrl, model) -> bool:
    return run(loop, ctrl.load_model(str(model)), 120)


def test_switching_keeps_sessions_frees_the_old_model_and_follows_with_the_server(
        qloop, tiny_model, other_model, tmp_path):  # fmt: skip
    port = free_port()
    window = open_app(qloop, tmp_path, tiny_model, server_port=port)
    ctrl = window.controller
    chat = next(iter(ctrl.chats.values()))
    run(qloop, chat.send("before the switch"), 60)
    window.findChild(QCheckBox, "serverSwitch").click()
    run(qloop, until(lambda: ctrl.server.url is not None, 30, "the server to start"))
    first_engine = ctrl.service.engine
    assert switch(qloop, ctrl, other_model)
    assert ctrl.service.engine is not first_engine and first_engine.engine.loaded is None
    assert ctrl.service.info.model_name == "other-llama"
    assert ctrl.service.engine.engine.loaded.hf_config.num_hidden_layers == 3
    assert ctrl.settings.model == str(other_model)  # remembered for the next start
    assert [m.content for m in chat.store.messages(chat.session_id)][0] == "before the switch"
    assert chat.pane.gauge.label.text().endswith("2,048 tokens")  # the new model's context
    run(qloop, chat.send("after the switch"), 60)
    assert chat.store.messages(chat.session_id)[-1].status == "complete"

    async def ask_server():
        await until(lambda: ctrl.server._engine is ctrl.service.engine, 30, "the server")
        loop = asyncio.get_running_loop()
        body = {"model": "other-llama", "max_tokens": 3, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        return await loop.run_in_executor(None, post, f"{ctrl.server.url}/v1/chat/completions",
                                          body, None)  # fmt: skip

    status, reply = run(qloop, ask_server(), 60)
    assert status == 200 and reply["usage"]["completion_tokens"] == 3
    with urllib.request.urlopen(f"{ctrl.server.url}/v1/models", timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["other-llama"]
    # Back and forth: memory does not grow with each switch.
    gc.collect()
    before = rss_mib()
    for model in (tiny_model, other_model, tiny_model):
        assert switch(qloop, ctrl, model)
    gc.collect()
    assert rss_mib() - before < 60, f"RSS grew {rss_mib() - before:.0f} MiB over 3 switches"
    close_app(qloop, window)


def test_a_reply_streaming_during_a_switch_stops_where_it_was(qloop, tiny_model, other_model,
                                                              tmp_path):  # fmt: skip
    window = open_app(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    chat = next(iter(ctrl.chats.values()))
    long_replies(chat, max_tokens=3000)

    async def scenario():
        chat.send("a long reply, cut by a switch")
        await until(lambda: len(chat.reply_text) > 20, what="the reply to stream")
        switched = await ctrl.load_model(str(other_model))
        await chat.task
        return switched

    assert run(qloop, scenario(), 120)
    reply = chat.store.messages(chat.session_id)[-1]
    assert reply.status == "stopped" and len(reply.content) > 20
    close_app(qloop, window)


def test_a_model_that_fails_to_load_leaves_the_previous_one_serving(qloop, tiny_model, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                    "model_type": "llama"}))  # fmt: skip
    window = open_app(qloop, tmp_path / "data", tiny_model)
    ctrl = window.controller
    engine = ctrl.service.engine
    reasons: list[str] = []
    ctrl.service.switchFailed.connect(reasons.append)
    assert not switch(qloop, ctrl, broken)
    assert len(reasons) == 1 and "broken-model did not load" in reasons[0]
    assert "previous model still serves" in window.statusBar().currentMessage()
    assert ctrl.service.engine is engine and not engine.is_dead
    assert ctrl.settings.model == ""  # the failed choice is not saved
    chat = next(iter(ctrl.chats.values()))
    run(qloop, chat.send("still there?"), 60)
    assert chat.store.messages(chat.session_id)[-1].status == "complete"
    info = ctrl.service.info
    assert window.status.model.text() == f"Model: {info.model_name} · native Llama"
    assert info.model_path == "native Llama"
    close_app(qloop, window)
