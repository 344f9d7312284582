"""The batch timeline against hand-built step records: columns, cell kinds, tooltips,
owner colours, following the newest step, bounds and the static-batching line."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QToolTip
from test_static_batching import entry, record, scenario

from engine.stats import StepKind
from ui import timeline_canvas
from ui.batch_timeline_view import BatchTimelineView
from ui.panel_types import RequestOwner
from ui.timeline_canvas import NEUTRAL

RED, BLUE = QColor("#d62728"), QColor("#1f77b4")
OWNERS = {"A": RequestOwner("s1", "Rust chat", RED), "B": RequestOwner("s2", "Poem", BLUE)}


@pytest.fixture
def view(qtbot) -> BatchTimelineView:
    v = BatchTimelineView()
    qtbot.addWidget(v)
    v.resize(700, 300)
    v.show()
    qtbot.waitExposed(v)
    return v


def decodes(first: int, count: int, rid: str = "R") -> list:
    return [record(s, [entry(rid, StepKind.DECODE, 1, 10 + s, True)]) for s in
            range(first, first + count)]  # fmt: skip


def test_object_names_and_one_column_per_step(view):
    assert view.objectName() == "batchTimelineView"
    assert view.static_batching_label.objectName() == "staticBatchingLabel"
    assert view.column_count() == 0
    view.add_records(decodes(0, 3))
    assert view.column_count() == 3
    view.add_records(decodes(3, 5))
    view.add_records([])
    assert view.column_count() == 8
    view.clear()
    assert (view.column_count(), view.row_count()) == (0, 0)


def test_cell_kinds_of_a_hand_built_scenario(view):
    view.add_records(scenario())
    expected = {
        "A": ["prefill", "decode", "finished", None, None, None, None],
        "B": ["waiting", "chunked_prefill", "chunked_prefill", "decode", "finished", None, None],
        "C": ["waiting", "waiting", "waiting", "prefill", "preempted", "recompute", "finished"],
    }
    for rid, kinds in expected.items():
        assert [view.cell_kind(rid, step) for step in range(7)] == kinds, rid
    assert view.row_count() == 3
    assert view.cell_kind("A", 99) is None and view.cell_kind("nobody", 0) is None


def test_column_tooltip_lists_the_batch(view):
    view.set_owner_resolver(OWNERS.get)
    view.add_records(scenario())
    tip = view.column_tooltip(1)
    assert "step 1" in tip and "10.0 ms" in tip
    assert "A (Rust chat)" in tip and "decode" in tip and "1 tok → 1 token" in tip
    assert "B (Poem)" in tip and "chunked prefill" in tip and "3 tok<" in tip
    assert "waiting: C" in tip
    assert "preempted: C" in view.column_tooltip(4) and "finished: B" in view.column_tooltip(4)
    assert "recompute" in view.column_tooltip(5)
    assert view.column_tooltip(42) == ""


def test_rows_take_their_owners_colours(view, qtbot):
    view.set_owner_resolver(OWNERS.get)
    view.add_records(scenario())
    assert view.row_color("A") == RED and view.row_color("B") == BLUE
    assert view.row_color("C") == NEUTRAL  # no owner: a neutral colour
    # And the drawn image: A's prefill cell is A's colour (beside its token count).
    canvas = view.canvas
    image = canvas.viewport().grab().toImage()
    corner = canvas.cell_rect("A", 0).topLeft() + QPoint(1, 3)
    assert QColor(image.pixel(corner)) == RED
    assert QColor(image.pixel(canvas.cell_rect("C", 4).center())).red() > 200  # red mark
    assert QColor(image.pixel(canvas.cell_rect("C", 0).center())) != NEUTRAL  # light tint


def test_follows_the_latest_step_unless_scrolled_back(view, qtbot):
    bar = view.canvas.horizontalScrollBar()
    view.add_records(decodes(0, 300))
    assert view.is_following() and bar.value() == bar.maximum() > 0
    view.add_records(decodes(300, 5))
    assert bar.value() == bar.maximum()
    view.scroll_to_step(20)
    assert not view.is_following() and bar.value() == 20
    view.add_records(decodes(305, 10))
    assert bar.value() == 20 and bar.maximum() > 20  # it stays where the learner looks
    bar.setValue(bar.maximum())  # back at the end: following again
    view.add_records(decodes(315, 10))
    assert view.is_following() and bar.value() == bar.maximum()


def test_steps_and_rows_are_bounded(qtbot):
    view = BatchTimelineView(max_steps=50)
    qtbot.addWidget(view)
    early = [record(0, [entry("old", StepKind.PREFILL, 5, 0, True)], finished=("old",))]
    view.add_records(early + decodes(1, 119))
    assert view.column_count() == 50
    assert view.cell_kind("R", 119) == "decode" and view.cell_kind("R", 69) is None
    assert view.row_count() == 1  # "old" finished long before the kept window


def test_clicking_a_row_names_its_request(view, qtbot):
    view.add_records(scenario())
    rect = view.canvas.cell_rect("B", 3)
    with qtbot.waitSignal(view.requestClicked) as clicked:
        qtbot.mouseClick(view.canvas.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert clicked.args == ["B"]


def test_static_batching_line(view):
    assert "no finished request" in view.static_batching_label.text()
    view.add_records(scenario())
    # Largest batch 2: static [A, B] -> 3 steps, [C] -> 3; continuous: steps 0..6.
    assert view.static_batching_label.text() == (
        "continuous batching: 7 steps · static batches of 2 padded to the longest: "
        "6 steps (0.9× fewer)")
    assert "largest batch seen" in view.static_batching_label.toolTip()
    view.set_static_batch_size(1)
    assert "static batches of 1" in view.static_batching_label.text()


def test_hovering_a_column_shows_its_batch(view, qtbot, monkeypatch):
    view.add_records(scenario())
    viewport = view.canvas.viewport()
    # What the canvas asks Qt to show is recorded on its way to the real QToolTip: Qt
    # hides a shown tip on any window activation, focus change or close anywhere in the
    # app (a window of an earlier test, this view's own activation), so whether it is
    # still up when the test looks was what flaked, not the canvas.
    shown: list[tuple[str, object]] = []

    class RecordingToolTip:
        @staticmethod
        def showText(pos, text, widget=None):  # noqa: N802
            shown.append((text, widget))
            QToolTip.showText(pos, text, widget)

        hideText = staticmethod(QToolTip.hideText)  # noqa: N815

    monkeypatch.setattr(timeline_canvas, "QToolTip", RecordingToolTip)
    qtbot.waitActive(view)
    # Qt drops a move to where the cursor already is, so the cursor goes elsewhere first.
    qtbot.mouseMove(viewport, QPoint(1, 1))  # the row labels: no column, no tip
    assert view.canvas.column_at(1) is None and shown == []
    qtbot.mouseMove(viewport, view.canvas.cell_rect("B", 1).center())
    assert shown == [(view.column_tooltip(1), viewport)]
    if QToolTip.isVisible():
        assert QToolTip.text() == view.column_tooltip(1)
