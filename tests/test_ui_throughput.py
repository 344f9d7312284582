"""The throughput panel: redraws on a timer while records flow, and what it draws equals
an independent computation on the records."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from engine.stats import StepStats
from ui.throughput_series import ThroughputSeries
from ui.throughput_view import ThroughputView

T0 = 1000.0
DT = 1 / 32  # step length: exact in binary, so window edges compare the same everywhere


def make_records(n: int, first: int = 0, seed: int = 0) -> list[StepStats]:
    rng = random.Random(seed + first)
    records = []
    for i in range(first, first + n):
        records.append(StepStats(
            step=i, prefill_tokens=rng.choice([0, 0, 64, 200]), decode_tokens=rng.randint(0, 8),
            batch_size=rng.randint(1, 8), step_seconds=DT, num_running=rng.randint(1, 8),
            num_waiting=rng.randint(0, 3), num_preemptions=int(rng.random() < 0.05),
            prefix_cache_hit_tokens=rng.choice([0, 16]), kv_usage=rng.random(),
            finished_time=T0 + (i + 1) * DT, finished=("r",) * int(rng.random() < 0.1),
            time_to_first_token=tuple(rng.uniform(0.05, 0.5) for _ in range(rng.randint(0, 1))),
            inter_token_latency=tuple(rng.uniform(0.01, 0.08) for _ in range(rng.randint(0, 4))),
        ))  # fmt: skip
    return records


@pytest.fixture
def view(qtbot) -> ThroughputView:
    v = ThroughputView()
    qtbot.addWidget(v)
    v.resize(500, 700)
    v.show()
    return v


def drawn(view: ThroughputView, qtbot, name: str):
    before = view.redraw_count()
    qtbot.waitUntil(lambda: view.redraw_count() > before, timeout=2000)
    return view.curve_data(name)


def test_redraws_at_least_four_times_a_second_while_records_flow(view, qtbot):
    assert view.objectName() == "throughputView"
    assert view.totals_label.objectName() == "throughputTotals"
    records = make_records(2000)
    start, i = time.monotonic(), 0
    while time.monotonic() - start < 1.5:
        view.add_records(records[i : i + 5])  # a few records at a time, as the app sends them
        i += 5
        qtbot.wait(20)
    rate = view.redraw_count() / (time.monotonic() - start)
    assert rate >= 4
    assert view.redraw_count() < i // 5  # not once per add: batched on the timer
    qtbot.wait(300)
    idle = view.redraw_count()
    qtbot.wait(400)
    assert view.redraw_count() == idle  # no new data, no redraw


def test_decode_rate_equals_an_independent_one_second_window(view, qtbot):
    records = make_records(400)
    view.add_records(records)
    x, y = drawn(view, qtbot, "decode_tps")
    assert 2 < len(x) <= 300
    for xi, yi in zip(x, y, strict=True):
        t = xi + records[0].start_time
        expected = sum(r.decode_tokens for r in records if t - 1.0 < r.finished_time <= t)
        assert yi == pytest.approx(expected / 1.0)
    px, py = view.curve_data("prefill_tps")
    t = px[-1] + T0
    assert py[-1] == pytest.approx(
        sum(r.prefill_tokens for r in records if t - 1.0 < r.finished_time <= t))


def test_latency_percentiles_equal_numpy_on_the_inputs(view, qtbot):
    records = make_records(300)  # 9.4 s: the last point's 10 s window holds every sample
    view.add_records(records)
    drawn(view, qtbot, "itl_p50")
    every = [v for r in records for v in r.inter_token_latency]
    for name, q in (("itl_p50", 50), ("itl_p95", 95)):
        assert view.curve_data(name)[1][-1] == pytest.approx(np.percentile(every, q) * 1000)
    ttft = [v for r in records for v in r.time_to_first_token]
    assert view.curve_data("ttft_p95")[1][-1] == pytest.approx(np.percentile(ttft, 95) * 1000)
    # Every point: the samples of the steps that ended in the 10 s before it.
    x, y = view.curve_data("itl_p95")
    for xi, yi in zip(x, y, strict=True):
        t = xi + T0
        window = [v for r in records if t - 10 < r.finished_time <= t
                  for v in r.inter_token_latency]  # fmt: skip
        assert yi == pytest.approx(np.percentile(window, 95) * 1000)


def test_latency_points_kept_between_redraws_equal_numpy_on_the_inputs():
    """Records arriving over a minute, the series asked after each batch: the points it
    keeps from earlier redraws, and those it computes fresh, across grid-step changes as
    the window grows, all equal numpy's percentile of their own 10 s window."""
    records = make_records(2000)  # 62.5 s
    series = ThroughputSeries()
    times, values = np.empty(0), np.empty(0)
    steps_seen = set()
    for first in range(0, len(records), 40):
        batch = records[first : first + 40]
        series.add(batch)
        times = np.append(times, [r.finished_time for r in batch for _ in r.inter_token_latency])
        values = np.append(values, [v for r in batch for v in r.inter_token_latency])
        x, (p50, p95) = series.latency("itl", (50, 95))
        assert x[-1] + T0 == batch[-1].finished_time and len(x) <= 80
        steps_seen.add(round(float(np.min(np.diff(x))), 6) if len(x) > 2 else None)
        for xi, a, b in zip(x, p50, p95, strict=True):
            t = xi + T0
            window = values[(times > t - 10) & (times <= t)]
            assert (a, b) == pytest.approx(tuple(np.percentile(window, (50, 95))))
    assert len(steps_seen - {None}) >= 3  # the grid step grew as the window did


def test_gauges_and_kv_percent(view, qtbot):
    records = make_records(100)
    view.add_records(records)
    x, y = drawn(view, qtbot, "batch_size")
    assert list(y) == [r.batch_size for r in records]
    assert x[0] == pytest.approx(DT) and x[-1] == pytest.approx(100 * DT)
    kv = view.curve_data("kv_usage")[1]
    assert kv == pytest.approx([r.kv_usage * 100 for r in records])


def test_ring_keeps_the_window_and_bounds_the_points(qtbot):
    view = ThroughputView(window_s=10.0)
    qtbot.addWidget(view)
    records = make_records(3000)  # ~94 s of steps
    for i in range(0, 3000, 100):
        view.add_records(records[i : i + 100])
    x, y = drawn(view, qtbot, "batch_size")
    last = records[-1].finished_time - T0
    assert x.min() >= last - 10.0 and x.max() == pytest.approx(last)
    assert len(x) <= 300
    kept = [r.batch_size for r in records if r.finished_time >= records[-1].finished_time - 10]
    assert y.max() == max(kept)  # peaks per bin: no spike is lost by thinning


def test_totals_label_counts_since_start(view, qtbot):
    records = make_records(500)
    view.add_records(records[:250])
    view.add_records(records[250:])
    drawn(view, qtbot, "decode_tps")
    text = view.totals_label.text()
    for number in (sum(r.prefill_tokens for r in records), sum(r.decode_tokens for r in records),
                   sum(len(r.finished) for r in records), sum(r.num_preemptions for r in records),
                   sum(r.prefix_cache_hit_tokens for r in records)):  # fmt: skip
        assert f"{number:,}" in text
    assert "tokens prefilled" in text and "requests finished" in text
    view.clear()
    assert view.totals_label.text().startswith("since start: 0 tokens prefilled")
    assert len(view.curve_data("decode_tps")[0]) == 0


def test_hover_readout_reads_the_drawn_values(view, qtbot):
    records = make_records(100)
    view.add_records(records)
    x, y = drawn(view, qtbot, "batch_size")
    text = view.readout_at(x[10])
    assert f"batch {y[10]:,.0f}" in text and "tok/s" in text and "KV" in text


def test_hovering_a_chart_moves_the_crosshair_and_the_readout(view, qtbot):
    view.add_records(make_records(200))
    drawn(view, qtbot, "decode_tps")
    plot = view.plots[2]
    centre = plot.sceneBoundingRect().center()
    plot.scene().sigMouseMoved.emit(centre)
    x = plot.getPlotItem().vb.mapSceneToView(centre).x()
    assert view.readout.text() == view.readout_at(x) and view.readout.text().startswith("t = ")
    assert all(line.isVisible() and line.value() == pytest.approx(x) for line in view._lines)
