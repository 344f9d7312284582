"""AsyncEngine: streaming, concurrency, cancellation, failures and shutdown."""

from __future__ import annotations

import asyncio
import gc
import resource
import time
import weakref

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.async_engine import AsyncEngine, EngineDeadError
from engine_helpers import aborted_ids, greedy, run_to_completion


def config(random_llama, **kw) -> EngineConfig:
    kw.setdefault("block_size", 8)
    return EngineConfig(model=str(random_llama), device="cpu", dtype="float32", **kw)


PROMPTS = [[(5 * i + j) % 200 + 3 for j in range(4 + 7 * i)] for i in range(8)]


async def collect(engine: AsyncEngine, prompt, params, rid=None):
    deltas, last = [], None
    async for out in engine.generate(prompt, params, request_id=rid):
        deltas.append(out.outputs[0].delta_token_ids)
        last = out
    return deltas, last


def test_concurrent_streams_match_the_sync_engine(random_llama):
    expected = run_to_completion(LLMEngine(config(random_llama)), PROMPTS, greedy(10))
    engine = AsyncEngine(config(random_llama))

    async def main():
        return await asyncio.gather(*(collect(engine, p, greedy(10)) for p in PROMPTS))

    results = asyncio.run(main())
    engine.shutdown()
    for (deltas, last), exp in zip(results, expected):
        tokens = [t for d in deltas for t in d]
        assert tokens == last.outputs[0].token_ids == exp.outputs[0].token_ids
        assert last.finished and last.outputs[0].finish_reason == "length"
        assert len(deltas) >= 2  # it streamed, not one lump at the end


def test_late_arrivals_join_the_running_batch(random_llama):
    engine = AsyncEngine(config(random_llama))

    async def main():
        first = asyncio.create_task(collect(engine, PROMPTS[0], greedy(600)))
        await asyncio.sleep(0.2)  # the first is decoding by now
        late = [asyncio.create_task(collect(engine, p, greedy(5))) for p in PROMPTS[1:4]]
        await asyncio.gather(first, *late)

    asyncio.run(main())
    sizes = [s.batch_size for s in engine.engine.stats_history]
    engine.shutdown()
    assert sizes[0] == 1 and max(sizes) == 4


def test_cancelling_the_consumer_aborts_and_frees_blocks(random_llama):
    engine = AsyncEngine(config(random_llama))

    async def main():
        async def consume():
            async for _ in engine.generate(PROMPTS[3], greedy(10_000 // 100), request_id="c"):
                pass

        task = asyncio.create_task(consume())
        while engine.engine.kv_manager.usage == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if engine.engine.kv_manager.usage == 0 and not engine.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert engine.engine.kv_manager.usage == 0
    assert "c" in aborted_ids(engine.engine.kv_manager)
    engine.shutdown()


def test_a_bad_request_fails_alone(random_llama):
    engine = AsyncEngine(config(random_llama, max_model_len=64))

    async def main():
        good = asyncio.create_task(collect(engine, PROMPTS[1], greedy(8)))
        with pytest.raises(ValueError, match="too long"):
            await collect(engine, [5] * 100, greedy(8))
        with pytest.raises(ValueError, match="empty"):
            await collect(engine, "", greedy(8))
        return await good

    _, last = asyncio.run(main())
    assert len(last.outputs[0].token_ids) == 8
    assert engine.is_running
    engine.shutdown()


def test_an_engine_failure_reaches_every_consumer(random_llama):
    engine = AsyncEngine(config(random_llama))
    real = engine.engine.runner.execute
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated device failure")
        return real(*args, **kwargs)

    engine.engine.runner.execute = flaky

    async def main():
        tasks = [asyncio.create_task(collect(engine, p, greedy(50))) for p in PROMPTS[:3]]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    results = asyncio.run(main())
    assert all(isinstance(r, EngineDeadError) for r in results)
    assert "simulated device failure" in str(results[0])
    assert engine.is_dead

    async def after():
        await collect(engine, PROMPTS[0], greedy(2))

    with pytest.raises(EngineDeadError):
        asyncio.run(after())
    engine.shutdown()


def test_idle_engine_sleeps_and_stats_are_rate_limited(random_llama):
    engine = AsyncEngine(config(random_llama), stats_interval=0.05)
    events = []
    def listener(records, snap):
        events.append((time.monotonic(), records, snap))
        engine.request_snapshot()  # as the GUI does: the next picture once this one is drawn

    engine.add_stats_listener(listener)
    engine.request_snapshot()

    async def main():
        await asyncio.gather(*(collect(engine, p, greedy(30)) for p in PROMPTS[:4]))

    start = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - start
    time.sleep(0.2)
    assert events, "no stats reached the listener"
    assert len(events) <= elapsed / 0.05 + 2
    assert events[-1][2].num_in_use == 0  # the last picture is the idle cache
    steps = [r.step for _, records, _ in events for r in records]
    assert steps == list(range(engine.engine.num_steps))  # every step, in order, none lost
    cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    time.sleep(1.0)
    cpu_idle = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before
    assert cpu_idle < 0.1, f"idle engine burned {cpu_idle:.2f} s of CPU in 1 s"
    engine.shutdown()


def test_shutdown_frees_the_model(random_llama):
    engine = AsyncEngine(config(random_llama))
    model_ref = weakref.ref(engine.engine.runner.model)

    async def main():
        await collect(engine, PROMPTS[0], greedy(3))

    asyncio.run(main())
    engine.shutdown()
    gc.collect()
    assert model_ref() is None
    assert not engine.is_running


def test_abort_of_the_only_request_ends_its_stream(random_llama):
    engine = AsyncEngine(config(random_llama))

    async def main():
        outs = []
        async for out in engine.generate(PROMPTS[2], greedy(500), request_id="only"):
            outs.append(out)
            if len(outs) == 3:
                engine.abort("only")
        return outs

    outs = asyncio.run(asyncio.wait_for(main(), 30))
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
    assert len(outs[-1].outputs[0].token_ids) < 500
    assert engine.engine.kv_manager.usage == 0
    engine.shutdown()


class _Die(BaseException):
    """Not an Exception: it passes _run_call's handler and kills the engine thread."""


def test_generate_racing_the_engine_death_fails_instead_of_waiting_forever(random_llama):
    """The interleaving that hung: generate() passes its liveness check, the engine thread
    dies and tells every stream it knows, and only then does generate register its own."""
    engine = AsyncEngine(config(random_llama))
    first_check = engine._check_alive

    def check_then_die() -> None:
        first_check()
        engine._check_alive = first_check  # the second check is the real one
        engine.call_in_engine(lambda _: (_ for _ in ()).throw(_Die()))
        engine._thread.join(10)
        assert engine.is_dead

    engine._check_alive = check_then_die

    async def main():
        async for _ in engine.generate(PROMPTS[0], greedy(3)):
            pass

    with pytest.raises(EngineDeadError):
        asyncio.run(asyncio.wait_for(main(), 10))  # a TimeoutError here is the old hang
    assert not engine._streams
    engine.shutdown()


def test_shutdown_keeps_the_model_while_a_step_still_runs(random_llama):
    """shutdown(timeout) that gives up on a busy engine thread must not free the model under
    it; the thread frees it when its work ends."""
    import threading

    engine = AsyncEngine(config(random_llama))
    inside, release = threading.Event(), threading.Event()

    def busy(llm_engine):
        inside.set()
        release.wait(20)
        return llm_engine.runner.model is not None  # still there while we run

    future = engine.call_in_engine(busy)
    assert inside.wait(10)
    model_ref = weakref.ref(engine.engine.runner.model)
    engine.shutdown(timeout=0.2)
    assert engine.engine.runner.model is not None, "freed while the engine thread used it"
    release.set()
    assert future.result(10) is True
    engine._thread.join(10)
    gc.collect()
    assert model_ref() is None and engine.engine.runner.model is None


def test_info_and_metrics_are_read_only_records(random_llama):
    """info(): the engine's fixed facts; metrics(): one record per step, swapped whole, that
    agrees with the engine's own state once it is idle."""
    engine = AsyncEngine(config(random_llama, num_kv_blocks=64))
    facts = engine.info()
    assert (facts.model_name, facts.model_path) == ("llama", "native Llama")
    assert (facts.num_kv_blocks, facts.block_size, facts.attention_backend) == (64, 8, "torch")
    assert facts.max_model_len == engine.max_model_len
    assert engine.metrics().num_steps == 0 and engine.metrics().num_running == 0
    seen = []

    async def main():
        async for _ in engine.generate(PROMPTS[3], greedy(6)):
            seen.append(engine.metrics())

    asyncio.run(asyncio.wait_for(main(), 30))
    assert any(m.num_running == 1 and m.kv_usage > 0 for m in seen)
    time.sleep(0.2)
    core, final = engine.engine, engine.metrics()
    assert final.num_steps == core.num_steps and final.num_running == 0
    assert final.kv_usage == core.kv_manager.usage == 0
    assert final.prefix_queries == core.kv_manager.prefix_queries > 0
    engine.shutdown()
    assert engine.info() == facts  # still readable after shutdown



def test_a_stream_survives_being_stepped_outside_the_running_loop(random_llama, qapp):
    """qasync's run_until_complete ends with one more pass of Qt's events after it has
    cleared the running loop, so a consumer woken in that pass steps with no running loop
    (the app tests drive the app in such slices). Its stream must keep working there: an
    asyncio.Event binds itself to whatever loop runs at its next wait, and raised "bound to
    a different event loop" (a local pane's reply failed so in CI). Here the slices are
    alternated with such bare passes, many times over."""
    import qasync

    loop = qasync.QEventLoop(qapp, already_running=False)
    engine = AsyncEngine(config(random_llama))
    expected = run_to_completion(LLMEngine(config(random_llama)), PROMPTS[:2], greedy(120))
    try:
        tasks = [loop.create_task(collect(engine, p, greedy(120))) for p in PROMPTS[:2]]
        while not all(t.done() for t in tasks):
            loop.run_until_complete(asyncio.sleep(0.002))
            for _ in range(3):  # Qt's events, outside any running asyncio loop
                time.sleep(0.002)
                qapp.processEvents()
        for task, exp in zip(tasks, expected):
            deltas, last = task.result()
            assert [t for d in deltas for t in d] == exp.outputs[0].token_ids
    finally:
        engine.shutdown()
        loop.close()
