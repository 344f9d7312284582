"""The learner's one-click experiments, the slow-motion slider, reset prefix cache and the
guided tour, in the real window on a real (tiny, random) engine."""

from __future__ import annotations

import asyncio

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QPushButton, QWidget

from app_testing import (  # noqa: F401  (fixtures)
    close_app, open_app, qloop, run, tiny_model, until,
)
from ui.learner_tour import TOUR


def open_shown(loop, data_dir, model):
    window = open_app(loop, data_dir, model)
    window.show()
    return window


def test_shared_system_prompt_experiment_shares_the_prompt_blocks(qloop, tiny_model, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    from app import experiments

    # The random model may end a reply at once; the first must still run when B arrives.
    monkeypatch.setattr(experiments, "SHARED_SAMPLING",
                        {"temperature": 0.0, "max_tokens": 200, "ignore_eos": True})
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    run(qloop, ctrl.learner.run_experiment("shared_system_prompt"), 120)
    engine = ctrl.service.engine.engine
    shared = [e for e in engine.kv_manager.events if e.kind == "share"]
    assert shared, "the second chat did not share the first one's blocks"
    # The shared blocks hold the system prompt: they came from the first chat's request.
    first, second = [c for c in ctrl.chats.values() if "Shared prompt" in
                     c.store.get_session(c.session_id).title]  # fmt: skip
    hits = [e for e in engine.kv_manager.events if e.kind == "prefix_hit"
            and e.request_id.startswith(f"session{second.session_id}-")]  # fmt: skip
    assert hits and len(hits[0].block_ids) >= 3
    assert sum(r.prefix_cache_hit_tokens for r in engine.stats_history) >= 3 * 16
    for chat in (first, second):
        assert chat.store.messages(chat.session_id)[-1].status == "complete"
    close_app(qloop, window)


def test_n_samples_experiment_shares_the_prompt_four_ways(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl = window.controller
    learner = ctrl.learner
    refs: list[int] = []
    learner.service.statsUpdated.connect(
        lambda _r, snap: snap is not None and refs.append(int(snap.ref_counts.max())))
    run(qloop, learner.run_experiment("n_samples"), 120)
    assert 4 in refs, f"no snapshot showed a block held by all four samples: {set(refs)}"
    chat = next(c for c in ctrl.chats.values()
                if c.store.get_session(c.session_id).title == "n = 4 samples")
    replies = [m for m in chat.store.messages(chat.session_id) if m.role == "assistant"]
    assert [m.content.split(":*")[0] for m in replies] == [
        f"*Sample {i} of 4" for i in range(1, 5)]
    close_app(qloop, window)


def test_slow_motion_slider_and_reset_prefix_cache(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    ctrl, toolbar = window.controller, window.controller.learner.toolbar
    toolbar.delay_slider.setValue(250)
    assert ctrl.service.engine.step_delay == 0.25
    assert "250 ms" in toolbar.delay_label.text()
    toolbar.delay_slider.setValue(0)
    chat = next(iter(ctrl.chats.values()))
    run(qloop, chat.send("something to cache, long enough to fill a few blocks"), 60)
    kv = ctrl.service.engine.engine.kv_manager
    assert kv.snapshot().num_cached_free > 0
    QTest.mouseClick(toolbar.reset_button, Qt.MouseButton.LeftButton)

    async def cleared():
        await until(lambda: any(e.kind == "AllBlocksCleared" for e in kv.events), what="reset")

    run(qloop, cleared())
    assert kv.snapshot().num_cached_free == 0
    close_app(qloop, window)


def test_the_tour_points_at_each_panel_in_turn(qloop, tiny_model, tmp_path):
    window = open_shown(qloop, tmp_path, tiny_model)
    learner = window.controller.learner
    QTest.mouseClick(learner.toolbar.tour_button, Qt.MouseButton.LeftButton)
    tour = learner.tour
    seen = []
    for i, stop in enumerate(TOUR):
        assert tour.isVisible() and tour.title.text() == stop.title
        target = window.findChild(QWidget, stop.target)
        assert target is not None and target.isVisible(), stop.target
        seen.append(stop.target)
        QTest.mouseClick(tour.findChild(QPushButton, "tourNext"), Qt.MouseButton.LeftButton)
    assert not tour.isVisible()
    assert {"kvCacheView", "batchTimelineView", "throughputView"} <= set(seen)
    run(qloop, asyncio.sleep(0))
    close_app(qloop, window)
