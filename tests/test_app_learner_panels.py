"""The learner's panels in the real window, on a real (tiny, random) engine: the grid is the
engine's cache, sessions' colours and shared prefixes show, pause / step / resume, the small
cache preempts and every chat still completes as without preemption, message ↔ block links,
and the docks' layout is remembered."""

from __future__ import annotations

import asyncio
import html
import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest

from app_testing import (  # noqa: F401  (fixtures)
    close_app, long_replies, open_app, qloop, run, tiny_model, until,
)
from engine.kv_snapshot import BlockState

LONG_SYSTEM = "You are a careful assistant who answers questions about caches. " * 3


def greedy_reference(tiny_model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """The same prompt on a separate engine with a big cache: no preemption, no restart."""
    from engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=str(tiny_model), device="cpu", dtype="float32",
                                    kv_cache_bytes=16 << 20))  # fmt: skip
    engine.add_request("ref", prompt_ids, SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                         ignore_eos=True))  # fmt: skip
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                return out.outputs[0].token_ids
    raise AssertionError("the reference engine produced nothing")


def open_shown(loop, data_dir, model):
    """The app with its window shown: the panels draw (and ask for pictures) only then."""
    window = open_app(loop, data_dir, model)
    window.show()
    return window


async def fresh_snapshot(learner, after_step: int):
    """Wait for a snapshot taken at or after this engine step."""
    learner.service.engine.request_snapshot()
    def fresh() -> bool:
        snap = learner.latest_snapshot
        return snap is not None and snap.step >= after_step

    await until(fresh, what="a fresh snapshot")
    return learner.latest_snapshot


def test_grid_is_the_engines_cache_with_session_colours_and_shared_prefixes(
        qloop, tiny_model, tmp_path):  # fmt: skip
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, learner = window.controller, window.controller.learner
    first = next(iter(ctrl.chats.values()))
    second = ctrl.new_session()
    for chat in (first, second):
        chat.store.update_settings(chat.session_id, LONG_SYSTEM,
                                   {"temperature": 0.0, "max_tokens": 400, "ignore_eos": True})
        chat.pane.set_settings(chat.settings())
    grid = learner.kv_view.grid
    engine = ctrl.service.engine.engine
    run(qloop, until(lambda: grid.cell_count() == engine.num_kv_blocks, what="the first picture"))

    async def both_running():
        first.send("What is a block?")
        await until(lambda: first.last_output is not None, what="the first reply to start")
        second.send("What is a page?")
        await until(lambda: second.last_output is not None, what="the second reply to start")
        ctrl.service.engine.pause(wait=True)
        return await fresh_snapshot(learner, engine.num_steps - 1)

    snap = run(qloop, both_running())
    tables = {snap.parent_of(r): t for r, t in snap.block_tables.items()}
    a, b = tables[first.request_id], tables[second.request_id]
    shared = set(a) & set(b)
    assert len(shared) >= 3, "the long system prompt was not shared"
    for block in shared:
        assert snap.ref_counts[block] == 2
        assert "ref count 2" in grid.tooltip_for(block).lower().replace(":", "")
    colours = {first.session_id: QColor(first.store.get_session(first.session_id).color),
               second.session_id: QColor(second.store.get_session(second.session_id).color)}
    own_a = next(x for x in a if x not in shared)
    own_b = next(x for x in b if x not in shared)
    assert grid.cell_color(own_a).rgb() == colours[first.session_id].rgb()
    assert grid.cell_color(own_b).rgb() == colours[second.session_id].rgb()
    # The hover text of a prompt block holds its tokens, decoded (the byte tokenizer).
    block = a[2]  # inside the system prompt's words
    text = ctrl.service.tokenizer.decode(list(snap.block_tokens(block)))
    assert len(text) == 16 and text in LONG_SYSTEM
    assert text in html.unescape(grid.tooltip_for(block))
    # Clicking one of the second chat's own blocks frames its pane and shows its table.
    learner.kv_view.set_snapshot(snap)
    learner.kv_view.refresh()
    QTest.mouseClick(grid, Qt.MouseButton.LeftButton, pos=grid.cell_rect(own_b).center())
    assert second.pane.highlighted and not first.pane.highlighted
    assert learner.kv_view.selected_request == second.request_id
    # Clicking the first session in the sidebar shows its block table instead.
    sidebar = window.sidebar
    row = next(r for r in range(sidebar.proxy.rowCount())
               if sidebar.proxy.index(r, 0).data(sidebar.id_role) == first.session_id)
    sidebar.list.clicked.emit(sidebar.proxy.index(row, 0))
    assert learner.kv_view.selected_request == first.request_id
    ctrl.service.engine.resume()
    run(qloop, asyncio.gather(first.task, second.task), 120)
    close_app(qloop, window)


def test_pause_step_and_resume_from_the_toolbar(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, learner = window.controller, window.controller.learner
    chats = [next(iter(ctrl.chats.values())), ctrl.new_session()]
    for chat in chats:
        long_replies(chat, max_tokens=120)
    engine = ctrl.service.engine

    async def scenario():
        for chat, text in zip(chats, ("first question", "second question")):
            chat.send(text)
        await until(lambda: all(c.last_output is not None for c in chats), what="streams")
        QTest.mouseClick(learner.toolbar.pause_button, Qt.MouseButton.LeftButton)
        assert engine.is_paused and learner.toolbar.step_button.isEnabled()
        engine.pause(wait=True)  # the step in flight, if any, ends
        await asyncio.sleep(0.2)
        tokens = [len(c.last_output.outputs[0].token_ids) for c in chats]
        steps, columns = engine.engine.num_steps, learner.timeline.column_count()
        await asyncio.sleep(0.4)
        assert [len(c.last_output.outputs[0].token_ids) for c in chats] == tokens
        for k in range(1, 4):
            QTest.mouseClick(learner.toolbar.step_button, Qt.MouseButton.LeftButton)
            await until(lambda: learner.timeline.column_count() == columns + k,
                        what="the step's column")  # fmt: skip
            assert engine.engine.num_steps == steps + k
            await until(lambda: [len(c.last_output.outputs[0].token_ids) for c in chats]
                        == [t + k for t in tokens], what="one token each")  # fmt: skip
        QTest.mouseClick(learner.toolbar.pause_button, Qt.MouseButton.LeftButton)
        assert not engine.is_paused
        await asyncio.gather(*(c.task for c in chats))

    run(qloop, scenario(), 120)
    for chat, text in zip(chats, ("first question", "second question")):
        prompt = chat.prompt_ids
        assert chat.last_output.outputs[0].token_ids == greedy_reference(tiny_model, prompt, 120)
        assert chat.store.messages(chat.session_id)[-1].status == "complete"
    close_app(qloop, window)


def test_small_cache_preempts_and_every_chat_still_completes(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, learner = window.controller, window.controller.learner
    first = next(iter(ctrl.chats.values()))
    long_replies(first, max_tokens=300)

    async def scenario():
        first.send("A chat that is running when the cache is made small")
        await until(lambda: first.last_output is not None
                    and len(first.last_output.outputs[0].token_ids) > 20, what="a long stream")
        QTest.mouseClick(learner.toolbar.small_cache_button, Qt.MouseButton.LeftButton)
        await ctrl.service.wait_ready()
        assert ctrl.service.engine.engine.num_kv_blocks == 64
        assert learner.kv_view.grid.cell_count() == 64 or await until(
            lambda: learner.kv_view.grid.cell_count() == 64, what="the small grid") is None
        task = learner.run_experiment("fill_small_cache")
        await task
        await first.task

    run(qloop, scenario(), 240)
    engine = ctrl.service.engine.engine
    records = list(engine.stats_history)
    preempted = {rid for r in records for rid in r.preempted}
    assert preempted, "the small cache never preempted"
    assert any(e.kind == "preempt" for e in engine.kv_manager.events)
    log = learner.kv_view.event_log
    assert any(e.kind == "preempt" for e in log.visible_events()), "no preempt in the event log"
    victim = next(iter(preempted))
    step = next(r.step for r in records if victim in r.preempted)
    assert learner.timeline.cell_kind(victim, step) == "preempted"
    later = [learner.timeline.cell_kind(victim, r.step) for r in records if r.step > step]
    assert "recompute" in later
    for chat in ctrl.chats.values():  # the running chat carried on across the restart too
        reply = chat.store.messages(chat.session_id)[-1]
        assert reply.status == "complete", reply
        expected = greedy_reference(tiny_model, chat.prompt_ids, chat.settings().max_tokens)
        assert chat.last_output.outputs[0].token_ids == expected
    close_app(qloop, window)


def test_numbers_beside_the_grid_match_the_snapshot(qloop, tiny_model, tmp_path):
    from PySide6.QtWidgets import QLabel

    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, learner = window.controller, window.controller.learner
    chat = next(iter(ctrl.chats.values()))
    long_replies(chat, max_tokens=200)

    async def scenario():
        chat.send("count my blocks")
        await until(lambda: chat.last_output is not None
                    and len(chat.last_output.outputs[0].token_ids) > 10, what="a stream")
        ctrl.service.engine.pause(wait=True)
        snap = await fresh_snapshot(learner, ctrl.service.engine.engine.num_steps - 1)
        learner.kv_view.set_snapshot(snap)
        return snap

    snap = run(qloop, scenario())
    (rid, table), = snap.block_tables.items()
    held = len(snap.request_token_ids[rid])
    waste = len(table) * snap.block_size - held
    per_token = 2 * 2 * 32 * 2 * 4  # layers x KV heads x head size x (K, V) x fp32 bytes
    paged = len(table) * snap.block_size * per_token
    contiguous = (len(chat.prompt_ids) + 200) * per_token
    waste_text = learner.kv_view.findChild(QLabel, "kvWasteLabel").text()
    shown = re.match(r"([\d,]+) tokens?\b", waste_text)
    assert shown and int(shown.group(1).replace(",", "")) == waste, waste_text
    figure = learner.kv_view.findChild(QLabel, "kvContiguousLabel").text()
    assert f"paged: {paged / 2**20:.1f} MiB" in figure
    assert f"contiguous: {contiguous / 2**20:.1f} MiB" in figure
    assert f"{contiguous / paged:.1f}× more sequences fit" in figure
    ctrl.service.engine.resume()
    run(qloop, chat.task, 60)
    close_app(qloop, window)


def test_clicking_a_message_lights_its_blocks_and_a_block_its_pane(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, learner = window.controller, window.controller.learner
    chat = next(iter(ctrl.chats.values()))
    long_replies(chat, max_tokens=100)
    run(qloop, chat.send("Light up my blocks, please, all of them"), 60)

    async def clicked():
        snap = await fresh_snapshot(learner, ctrl.service.engine.engine.num_steps - 1)
        chat.select_message(0)  # the user's message, as a click in the transcript says
        return snap

    snap = run(qloop, clicked())
    whole, start = chat.message_tokens(0)
    user_ids = ctrl.service.tokenizer.encode("Light up my blocks, please, all of them")
    assert whole[start:].count(user_ids[0]) >= 1 and len(whole) - start >= len(user_ids)
    cached = {b for b in range(snap.num_blocks) if snap.state(b) is BlockState.CACHED_FREE}
    lit = learner.kv_view.grid.highlighted()
    assert lit and lit <= cached  # the finished chat's blocks sit in the prefix cache
    bs = snap.block_size
    assert len(lit) == len(whole) // bs - start // bs  # its full blocks (the tail is shared)
    learner.kv_view.ownerActivated.emit(chat.session_id)  # as a click on one of its blocks
    assert chat.pane.highlighted
    close_app(qloop, window)


def test_the_docks_layout_is_remembered(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    assert all(window.docks[n].isVisible() for n in ("kvCacheDock", "batchTimelineDock",
                                                      "throughputDock"))  # fmt: skip
    window.docks["throughputDock"].toggleViewAction().trigger()
    assert not window.docks["throughputDock"].isVisible()
    close_app(qloop, window)
    again = open_app(qloop, tmp_path, tiny_model)
    again.show()
    assert not again.docks["throughputDock"].isVisible()
    assert again.docks["kvCacheDock"].isVisible()
    close_app(qloop, again)
