"""The KV cache panel against independent references: a real KVCacheManager driven without
a model, and counts, colours and pixels worked out here rather than by the panel's code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, Qt
from PySide6.QtGui import QColor, QHelpEvent, QPalette
from PySide6.QtWidgets import QLabel, QToolTip

from engine import KVEvent, KVSnapshot
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams
from ui.kv_cache_view import KVCacheView
from ui.kv_grid import SHARED_OUTLINE
from ui.panel_types import RequestOwner

BS = 4
OWNERS = {
    "A": RequestOwner("A", "Chat A", QColor(200, 40, 40)),
    "B": RequestOwner("B", "Chat B", QColor(40, 90, 200)),
}


def resolve(parent_id: str) -> RequestOwner | None:
    return OWNERS.get(parent_id.split("-")[0])


def decode(ids) -> str:
    return "".join(chr(65 + i % 26) for i in ids)


def make_request(rid: str, tokens: list[int], max_tokens: int = 8) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return Request(rid, list(tokens), params, arrival_time=0.0)


def admit(kv: KVCacheManager, rid: str, tokens: list[int]) -> Request:
    """Admit a request as the scheduler would: prefix hits first, then compute the rest."""
    r = make_request(rid, tokens)
    cached = kv.find_cached_prefix(r)
    assert kv.allocate_slots(r, len(tokens) - len(cached) * BS, cached)
    r.num_computed_tokens = len(tokens)
    kv.cache_full_blocks(r)
    return r


@pytest.fixture
def cache():
    """A-1: 10 tokens (3 blocks, the last half full); B-1: 6 tokens; A-2 shares A-1's first
    two blocks (a prefix hit while A-1 holds them); X-1 finished: its full block is cached."""
    kv = KVCacheManager(num_blocks=32, block_size=BS)
    prompt = list(range(1, 11))
    reqs = {
        "A-1": admit(kv, "A-1", prompt),
        "B-1": admit(kv, "B-1", list(range(100, 106))),
        "A-2": admit(kv, "A-2", prompt[:8] + [50, 51, 52]),
        "X-1": admit(kv, "X-1", [300, 301, 302, 303, 304]),
    }
    kv.free(reqs.pop("X-1"), "finish")
    return kv, reqs


@pytest.fixture
def view(qtbot):
    v = KVCacheView()
    qtbot.addWidget(v)
    v.set_owner_resolver(resolve)
    v.set_decoder(decode)
    v.resize(1000, 700)
    v.show()
    qtbot.waitExposed(v)
    return v


def show(view: KVCacheView, snap: KVSnapshot) -> None:
    view.set_snapshot(snap)
    view.refresh()


def pixel(view: KVCacheView, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in view.grid.render_array()[y, x, :3])


def bottom_pixel(view: KVCacheView, block: int) -> tuple[int, int, int]:
    r = view.grid.cell_rect(block)
    return pixel(view, r.center().x(), r.bottom())


def rgb(color: QColor) -> tuple[int, int, int]:
    return (color.red(), color.green(), color.blue())


def test_one_cell_per_block_and_owner_colours(view, cache):
    kv, reqs = cache
    show(view, kv.snapshot())
    assert view.grid.cell_count() == 32
    assert view.grid.mode == "cells"
    for rid, owner in (("A-1", "A"), ("B-1", "B")):
        for block in kv.block_table(rid):
            assert view.grid.cell_color(block) == OWNERS[owner].color
            assert bottom_pixel(view, block) == rgb(OWNERS[owner].color)
    # A-1's last block holds 2 of 4 tokens: its upper half is lighter, its lower half full.
    last = kv.block_table("A-1")[-1]
    r = view.grid.cell_rect(last)
    assert pixel(view, r.center().x(), r.top() + 1) != rgb(OWNERS["A"].color)


def test_shared_prefix_block_is_drawn_shared(view, cache):
    kv, _ = cache
    snap = kv.snapshot()
    shared = set(kv.block_table("A-1")) & set(kv.block_table("A-2"))
    assert len(shared) == 2
    show(view, snap)
    own = kv.block_table("B-1")[0]
    for block in shared:
        tip = view.grid.tooltip_for(block)
        assert "ref count 2" in tip and "shared" in tip
        assert "A-1" in tip and "A-2" in tip and "Chat A" in tip
        r = view.grid.cell_rect(block)
        assert pixel(view, r.left() + 1, r.center().y()) == SHARED_OUTLINE
    r = view.grid.cell_rect(own)
    assert pixel(view, r.left() + 1, r.center().y()) != SHARED_OUTLINE
    assert "ref count 1" in view.grid.tooltip_for(own)


def test_hover_decodes_only_the_hovered_block(view, cache, qtbot):
    kv, reqs = cache
    calls = []
    view.set_decoder(lambda ids: calls.append(list(ids)) or decode(ids))
    show(view, kv.snapshot())
    view.grid.render_array()
    assert calls == []  # nothing is decoded until a block is hovered
    block = kv.block_table("B-1")[1]  # B-1's tokens 104, 105
    expected = "".join(chr(65 + t % 26) for t in (104, 105))
    center = view.grid.cell_rect(block).center()
    event = QHelpEvent(QEvent.Type.ToolTip, center, view.grid.mapToGlobal(center))
    view.grid.event(event)
    assert calls == [[104, 105]]
    assert expected in view.grid.tooltip_for(block)
    assert "fill 2 / 4" in view.grid.tooltip_for(block)
    if QToolTip.isVisible():  # the offscreen platform may not show it; the text is what counts
        assert expected in QToolTip.text()
    assert view.grid.block_at(center) == block


def test_free_and_cached_free_look_different(view, cache):
    kv, _ = cache
    snap = kv.snapshot()
    cached = [b for b in range(32) if snap.states[b] == 2]
    free = [b for b in range(32) if snap.states[b] == 0]
    assert cached and free
    show(view, snap)
    assert view.grid.cell_color(cached[0]) != view.grid.cell_color(free[0])
    assert view.grid.cell_color(free[0]) == view.grid.cell_color(free[-1])
    assert "cached free" in view.grid.tooltip_for(cached[0])
    assert decode([300, 301, 302, 303]) in view.grid.tooltip_for(cached[0])


def changed_cells(view: KVCacheView, before: np.ndarray, after: np.ndarray) -> set[int]:
    diff = (before != after).any(axis=2)
    changed = set()
    for b in range(view.grid.cell_count()):
        r = view.grid.cell_rect(b)
        cell = diff[r.top() : r.bottom() + 1, r.left() : r.right() + 1]
        if cell.any():
            changed.add(b)
        diff[r.top() : r.bottom() + 1, r.left() : r.right() + 1] = False
    assert not diff.any(), "pixels outside every cell changed"
    return changed


def test_highlight_changes_exactly_those_cells(view, cache):
    kv, _ = cache
    show(view, kv.snapshot())
    before = view.grid.render_array().copy()
    view.highlight_blocks([3, 17])
    assert changed_cells(view, before, view.grid.render_array().copy()) == {3, 17}
    view.highlight_blocks([])
    assert (view.grid.render_array() == before).all()


def test_evicted_and_preempted_blocks_flash_then_fade(view, cache):
    kv, _ = cache
    now = [100.0]
    view.grid.clock = lambda: now[0]
    snap = kv.snapshot()
    show(view, snap)
    before = view.grid.render_array().copy()
    seq = max(e.seq for e in snap.events)
    old = KVEvent(seq, "BlockRemoved", None, (9,))  # already seen: must not flash
    new = (KVEvent(seq + 1, "BlockRemoved", None, (20,)), KVEvent(seq + 2, "preempt", "B-1",
                                                                   (21,)))  # fmt: skip
    show(view, dataclasses.replace(snap, events=snap.events[:-1] + (old,) + new))
    assert changed_cells(view, before, view.grid.render_array().copy()) == {20, 21}
    now[0] += 0.6
    view.grid._tick_flash()
    assert (view.grid.render_array() == before).all()


def random_big_snapshot(n: int = 100_000) -> KVSnapshot:
    """Blocks [0, n/2) held by A-1, the rest free: the heat map's colours are known."""
    half = n // 2
    states = np.zeros(n, np.int8)
    states[:half] = 1
    ref = states.astype(np.int32)
    filled = np.where(states == 1, BS, 0).astype(np.int32)
    table = tuple(range(half))
    return KVSnapshot(n, BS, states, ref, filled, (None,) * n, (None,) * n,
                      {"A-1": table}, {"A-1": tuple(range(half * BS))})  # fmt: skip


def test_heat_map_for_a_gpu_sized_cache_and_zoom_back_to_cells(view):
    snap = random_big_snapshot()
    show(view, snap)
    grid = view.grid
    assert grid.cell_count() == 100_000
    assert grid.mode == "heatmap"
    shown = grid.grab().toImage()  # the heat map is painted scaled: read the screen
    assert rgb(shown.pixelColor(0, 0)) == rgb(OWNERS["A"].color)
    geo = grid.geometry_now()
    last = grid.cell_rect(99_999)
    assert rgb(shown.pixelColor(last.topLeft())) == rgb(grid.cell_color(99_999))
    assert grid.cell_color(99_999) != OWNERS["A"].color
    assert grid.block_at(QPoint(0, 0)) == 0
    assert grid.block_at(QPoint(last.left(), last.top())) % geo.per_cell == 0
    assert "heat map" in view.zoom_label.text()
    for _ in range(12):
        if grid.mode == "cells":
            break
        grid.zoom_in(60_000)
    assert grid.mode == "cells"
    start, count = grid.visible_range()
    assert start <= 60_000 < start + count < 100_000
    assert grid.block_at(QPoint(1, 1)) == start
    grid.reset_zoom()
    assert grid.mode == "heatmap" and grid.visible_range() == (0, 100_000)


def independent_numbers(snap: KVSnapshot) -> dict[str, object]:
    """Counted block by block from the block tables, not with kv_metrics."""
    bs = snap.block_size
    filled: dict[int, int] = {}
    for rid, table in snap.block_tables.items():
        n = len(snap.request_token_ids[rid])
        for i, b in enumerate(table):
            filled[b] = max(filled.get(b, 0), min(bs, max(0, n - i * bs)))
    states = snap.states.tolist()
    waste = sum(len(t) * bs - len(snap.request_token_ids[r]) for r, t in
                snap.block_tables.items())  # fmt: skip
    return {
        "used": len(filled), "used_tokens": sum(filled.values()),
        "cached": states.count(2), "free": states.count(0), "waste": waste,
        "paged": len(filled) * bs * snap.kv_bytes_per_token,
        "contiguous": sum(snap.request_max_tokens.values()) * snap.kv_bytes_per_token,
    }  # fmt: skip


def test_numbers_match_an_independent_count(view, cache):
    kv, _ = cache
    per_token = 30 * 3 * 64 * 2 * 2  # 30 layers, 3 KV heads, head size 64, K and V, fp16
    snap = dataclasses.replace(kv.snapshot(), kv_bytes_per_token=per_token,
                               request_max_tokens={"A-1": 600, "B-1": 300, "A-2": 600},
                               prefix_queries=400, prefix_hits=96)  # fmt: skip
    show(view, snap)
    want = independent_numbers(snap)

    def text(name: str) -> str:
        return view.numbers.findChild(QLabel, name).text()

    assert text("kvUsedLabel") == f"{want['used']} blocks · {want['used_tokens']} tokens"
    assert text("kvCachedLabel").startswith(f"{want['cached']} block")
    assert text("kvFreeLabel") == f"{want['free']} blocks · {want['free'] * BS} slots"
    assert text("kvWasteLabel").startswith(f"{want['waste']} tokens")
    assert text("kvBytesPerTokenLabel") == "22.5 KiB"
    assert text("kvCapacityLabel").startswith(f"{32 * BS} tokens")
    assert text("kvHitRateLabel").startswith("24.0%")
    mib = 2**20
    ratio = want["contiguous"] / want["paged"]
    assert text("kvContiguousLabel") == (
        f"paged: {want['paged'] / mib:.1f} MiB, contiguous: {want['contiguous'] / mib:.1f} "
        f"MiB, {ratio:.1f}× more sequences fit"
    )
    assert "Σ" in view.numbers.findChild(QLabel, "kvWasteLabel").toolTip()


def test_window_waste_row_only_for_sliding_window_models(view, cache):
    """The row counts, per windowed layer, the blocks wholly before each request's next
    window; a model without windows does not show it."""
    kv, _ = cache
    per_token = 4 * 2 * 16 * 2 * 2  # 4 layers, 2 KV heads of 16, K and V, fp16
    row = (view.numbers.keys["kvWindowWasteLabel"], view.numbers.labels["kvWindowWasteLabel"])
    show(view, dataclasses.replace(kv.snapshot(), kv_bytes_per_token=per_token,
                                   layer_windows=(None,) * 4))  # fmt: skip
    assert all(w.isHidden() for w in row)
    window = 5
    snap = dataclasses.replace(kv.snapshot(), kv_bytes_per_token=per_token,
                               layer_windows=(window, None, window, None))  # fmt: skip
    show(view, snap)
    assert not any(w.isHidden() for w in row)
    blocks = 2 * sum(max(0, len(t) - window + 1) // BS for t in snap.request_token_ids.values())
    assert blocks > 0
    mib = blocks * BS * (per_token // 4) / 2**20
    assert row[1].text() == (f"{blocks:,} layer-blocks · {mib:.1f} MiB outside the window "
                             f"(W = {window}) of 2 of 4 layers")  # fmt: skip


def test_event_log_filters_and_click_highlights(view, cache, qtbot):
    kv, _ = cache
    snap = kv.snapshot()
    show(view, snap)
    log = view.event_log
    assert [e.seq for e in log.visible_events()] == [e.seq for e in snap.events]
    log.set_kind_filter("share")
    shares = [e for e in snap.events if e.kind == "share"]
    assert shares and log.visible_events() == shares
    log.set_kind_filter(None)
    log.set_owner_filter("B")
    assert log.visible_events() == [e for e in snap.events if e.request_id == "B-1"]
    log.set_kind_filter("allocate")
    log.set_owner_filter("A")
    want = [e for e in snap.events if e.kind == "allocate" and e.request_id.startswith("A-")]
    assert log.visible_events() == want
    index = log.proxy.index(len(want) - 1, 0)
    rect = log.table.visualRect(index)
    qtbot.mouseClick(log.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.grid.highlighted() == set(want[-1].block_ids)
    # New events arrive with the next snapshot; nothing already shown is added twice.
    admit(kv, "B-2", [7, 7, 7])
    show(view, kv.snapshot())
    log.set_kind_filter(None)
    log.set_owner_filter(None)
    assert [e.seq for e in log.visible_events()] == [e.seq for e in kv.snapshot().events]


def test_clicking_a_block_selects_its_request_and_shows_its_table(view, cache, qtbot):
    kv, _ = cache
    show(view, kv.snapshot())
    block = kv.block_table("B-1")[1]
    seen = []
    for signal in (view.blockClicked, view.requestSelected, view.ownerActivated):
        signal.connect(seen.append)
    center = view.grid.cell_rect(block).center()
    qtbot.mouseClick(view.grid, Qt.MouseButton.LeftButton, pos=center)
    assert seen == [block, "B-1", "B"]
    assert view.block_table.table() == tuple(kv.block_table("B-1"))
    assert "B-1" in view.table_label.text() and "2 blocks" in view.table_label.text()
    view.select_owner("A")
    assert view.selected_request == "A-1"
    assert view.block_table.table() == tuple(kv.block_table("A-1"))
    view.select_request(None)
    assert view.block_table.table() == ()


def test_dark_palette_keeps_states_apart(view, cache):
    kv, _ = cache
    snap = kv.snapshot()
    show(view, snap)
    light_free = view.grid.cell_color(int(np.flatnonzero(snap.states == 0)[0]))
    palette = view.palette()
    palette.setColor(QPalette.ColorRole.Window, QColor("#2b2d31"))
    palette.setColor(QPalette.ColorRole.Base, QColor("#1e1f22"))
    view.setPalette(palette)
    free = view.grid.cell_color(int(np.flatnonzero(snap.states == 0)[0]))
    cached = view.grid.cell_color(int(np.flatnonzero(snap.states == 2)[0]))
    assert free != light_free and free.lightness() < 128
    assert len({rgb(free), rgb(cached), rgb(OWNERS["A"].color)}) == 3


def test_set_snapshot_only_stores_and_an_owner_known_later_gets_its_colour(view, cache):
    kv, _ = cache
    known: dict[str, RequestOwner] = {}
    view.set_owner_resolver(lambda parent: known.get(parent))
    view.set_snapshot(kv.snapshot())
    assert view.grid._layers is None  # no per-block work until the next paint
    block = kv.block_table("B-1")[0]
    fallback = view.grid.cell_color(block)
    known["B-1"] = OWNERS["B"]  # the app registers the request after its first snapshot
    show(view, kv.snapshot())
    assert view.grid.cell_color(block) == OWNERS["B"].color != fallback


def test_block_table_cell_click_highlights_that_block(view, cache, qtbot):
    kv, _ = cache
    show(view, kv.snapshot())
    view.select_request("A-2")
    table = view.block_table
    assert table.table() == tuple(kv.block_table("A-2"))
    assert "logical 2 → physical" in table.tooltip_for(2)
    qtbot.mouseClick(table, Qt.MouseButton.LeftButton, pos=table.cell_rect(2).center())
    assert view.grid.highlighted() == {kv.block_table("A-2")[2]}
