"""RequestOutputKind: CUMULATIVE, DELTA and FINAL_ONLY outputs of the same runs agree.

Two engines over the same random model step in lockstep (the schedule is deterministic,
greedy and seeded sampling too), one asked for cumulative outputs and one for another
kind, so every step's outputs can be compared, not only the last."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import pytest

from engine import LLM, EngineConfig, LLMEngine, RequestOutputKind, SamplingParams
from engine.async_engine import AsyncEngine
from engine.outputs import CompletionOutput, RequestOutput, merge_outputs
from engine_helpers import run_to_completion

CUMULATIVE, DELTA, FINAL_ONLY = (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA,
                                 RequestOutputKind.FINAL_ONLY)  # fmt: skip
PROMPTS = [[(7 * i + j) % 240 + 3 for j in range(3 + 5 * i)] for i in range(4)]



def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def mixed(stop: str) -> list[tuple[list[int], SamplingParams]]:
    """Greedy with logprobs, a stop string, n=2 seeded samples, a stop kept in the text
    (`stop` comes from prompt 1's text)."""
    return [
        (PROMPTS[0], greedy(logprobs=2)),
        (PROMPTS[1], greedy(30, stop=[stop, "\x00never"])),
        (PROMPTS[2], SamplingParams(n=2, temperature=1.0, seed=11, max_tokens=20,
                                    ignore_eos=True, logprobs=1)),
        (PROMPTS[1], greedy(30, stop=[stop], include_stop_str_in_output=True)),
    ]


@pytest.fixture(scope="module")
def stop(make_random_engine) -> str:
    """A stop string in prompt 1's free-running greedy text whose two characters come in
    two different steps: the first must be held back until the second decides."""
    engine = make_random_engine()
    engine.add_request("free", PROMPTS[1], greedy(30))
    pieces = []
    while engine.has_unfinished_requests():
        pieces += [o.outputs[0].delta_text for o in engine.step()]
    text, at = "", []
    for piece in pieces:
        if piece:
            at.append(len(text))
            text += piece
    found = next(text[i - 1:i + 1] for i in at[2:] if text.find(text[i - 1:i + 1]) == i - 1)
    assert "".join(pieces) == text
    return found


def lockstep(make_engine, requests: list[tuple[list[int], SamplingParams]], kind: RequestOutputKind):
    """Step a CUMULATIVE engine and a `kind` engine side by side; yields each step's
    (cumulative outputs, the other kind's outputs)."""
    engines = make_engine(), make_engine()
    for i, (prompt, p) in enumerate(requests):
        engines[0].add_request(f"r{i}", prompt, p)
        engines[1].add_request(f"r{i}", prompt, replace(p, output_kind=kind))
    while engines[0].has_unfinished_requests():
        yield engines[0].step(), engines[1].step()
    assert not engines[1].has_unfinished_requests()


def test_deltas_concatenate_to_the_cumulative_output_at_every_step(make_random_engine, stop):
    sums: dict[tuple[str, int], tuple[str, list, list]] = {}
    finals = {}
    for cumulative, deltas in lockstep(make_random_engine, mixed(stop), DELTA):
        for out in deltas:
            for c in out.outputs:
                text, ids, logprobs = sums.get((out.request_id, c.index), ("", [], []))
                sums[(out.request_id, c.index)] = (text + c.text, ids + c.token_ids,
                                                   logprobs + (c.logprobs or []))  # fmt: skip
                assert (c.delta_text, c.delta_token_ids) == (c.text, c.token_ids)
        for out in cumulative:
            for c in out.outputs:
                got = sums.get((out.request_id, c.index), ("", [], []))
                assert got == (c.text, c.token_ids, c.logprobs or [])
                finals[(out.request_id, c.index)] = c
    assert len(finals) == 5  # four requests, one of them with two samples
    stopped = finals[("r1", 0)]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stop not in stopped.text and finals[("r3", 0)].text.endswith(stop)
    samples = finals[("r2", 0)], finals[("r2", 1)]
    assert len(samples[0].logprobs) == 20 and samples[0].token_ids != samples[1].token_ids


def test_a_delta_stream_holds_back_what_may_start_a_stop_string(make_random_engine, stop):
    # The stop string's first character arrives a step before its second: no delta may
    # show it meanwhile, and once the stop string is complete it is cut.
    full = run_to_completion(make_random_engine(), [PROMPTS[1]], greedy(30))[0].outputs[0].text
    engine = make_random_engine()
    engine.add_request("r", PROMPTS[1], greedy(30, stop=[stop], output_kind=DELTA))
    shown = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            shown += out.outputs[0].text
            assert full.startswith(shown) and len(shown) <= full.index(stop)
    assert shown == full[: full.index(stop)]


def test_delta_and_cumulative_report_the_same_finishes(make_random_engine, stop):
    ends: dict[RequestOutputKind, dict] = {CUMULATIVE: {}, DELTA: {}}
    for cumulative, deltas in lockstep(make_random_engine, mixed(stop), DELTA):
        for kind, outs in ((CUMULATIVE, cumulative), (DELTA, deltas)):
            for out in outs:
                for c in out.outputs:
                    if c.finished:
                        ends[kind].setdefault((out.request_id, c.index), (
                            c.finish_reason, c.stop_reason, c.cumulative_logprob))
                if out.finished:
                    ends[kind].setdefault(out.request_id, "finished")
    assert ends[DELTA] == ends[CUMULATIVE] and len(ends[DELTA]) == 9


def test_final_only_gives_one_cumulative_output_per_request(make_random_engine, stop):
    counts: Counter[str] = Counter()
    last_cumulative, finals = {}, {}
    for cumulative, final_only in lockstep(make_random_engine, mixed(stop), FINAL_ONLY):
        for out in cumulative:
            last_cumulative[out.request_id] = out
        for out in final_only:
            counts[out.request_id] += 1
            assert out.finished
            finals[out.request_id] = out
    assert counts == {f"r{i}": 1 for i in range(4)}
    for rid, out in finals.items():
        want = last_cumulative[rid]
        assert [(c.index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason)
                for c in out.outputs] == [(c.index, c.text, c.token_ids, c.logprobs,
                                           c.finish_reason, c.stop_reason) for c in want.outputs]


def test_final_only_reports_an_aborted_request_once(make_random_engine):
    engine = make_random_engine()
    engine.add_request("r", PROMPTS[2], greedy(50, output_kind=FINAL_ONLY))
    for _ in range(4):
        assert engine.step() == []
    engine.abort_request("r")
    (out,) = engine.step()
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert len(out.outputs[0].token_ids) == 4
    assert not engine.has_unfinished_requests() and engine.step() == []


def test_delta_work_per_step_does_not_grow_with_the_reply(make_random_engine):
    """A long reply's DELTA outputs each carry one token (and its logprobs); cumulative
    outputs carry the whole reply every step."""
    sizes: dict[RequestOutputKind, list[int]] = {CUMULATIVE: [], DELTA: []}
    for cumulative, deltas in lockstep(make_random_engine, [(PROMPTS[0], greedy(80, logprobs=1))], DELTA):
        for kind, outs in ((CUMULATIVE, cumulative), (DELTA, deltas)):
            for out in outs:
                c = out.outputs[0]
                assert len(c.logprobs) == len(c.token_ids)
                sizes[kind].append(len(c.token_ids))
    assert sizes[DELTA] == [1] * 80
    assert sizes[CUMULATIVE] == list(range(1, 81))


def test_llm_generate_builds_each_output_once(make_random_engine):
    engine = make_random_engine()
    seen = []
    step = engine.step

    def recording_step():
        outs = step()
        seen.extend(outs)
        return outs

    engine.step = recording_step
    params = [greedy(12), SamplingParams(n=2, temperature=1.0, seed=5, max_tokens=9, ignore_eos=True)]
    outs = LLM.from_engine(engine).generate(PROMPTS[:2], params, use_tqdm=False)
    assert sorted(o.request_id for o in seen) == sorted(o.request_id for o in outs)
    assert len(seen) == 2 and all(o.finished for o in seen)  # nothing before the end
    want = run_to_completion(make_random_engine(), PROMPTS[:2], params)
    assert [[c.token_ids for c in o.outputs] for o in outs] == \
        [[c.token_ids for c in o.outputs] for o in want]


def test_async_engine_streams_each_kind(random_llama, stop):
    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                      block_size=8))  # fmt: skip

    async def stream(params: SamplingParams, rid: str) -> list:
        return [out async for out in engine.generate(PROMPTS[1], params, request_id=rid)]

    async def main():
        base = greedy(30, stop=[stop])
        return await asyncio.gather(*(stream(replace(base, output_kind=k), k.name)
                                      for k in (CUMULATIVE, DELTA, FINAL_ONLY)))  # fmt: skip

    try:
        cumulative, delta, final_only = asyncio.run(main())
    finally:
        engine.shutdown()
    last = cumulative[-1].outputs[0]
    assert "".join(o.outputs[0].delta_text for o in cumulative) == last.text
    assert "".join(o.outputs[0].text for o in delta) == last.text
    assert [t for o in delta for t in o.outputs[0].token_ids] == last.token_ids
    assert "".join(o.outputs[0].delta_text for o in delta) == last.text  # either field works
    # A consumer that falls behind gets several steps merged, so the two counts may differ.
    assert len(delta) > 1 and len(cumulative) > 1 and delta[-1].finished
    assert len(final_only) == 1 and final_only[0].outputs[0].text == last.text
    assert last.finish_reason == "stop" and final_only[0].outputs[0].stop_reason == stop


def _fields(c: CompletionOutput) -> tuple:
    return (c.index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason,
            c.cumulative_logprob, c.delta_text, c.delta_token_ids)


@pytest.mark.parametrize("kind", [CUMULATIVE, DELTA], ids=lambda k: k.name)
def test_merged_outputs_stand_for_the_steps_they_merge(make_random_engine, stop, kind):
    """What a stream hands a consumer that fell behind, checked against the unmerged
    outputs of the same steps: runs of 1, 2, 3 … steps of each request are merged, and
    the merged outputs, one after another, say what the steps said."""
    steps: dict[str, list[RequestOutput]] = {}
    for _, outs in lockstep(make_random_engine, mixed(stop) + [(PROMPTS[3], greedy(
            9, prompt_logprobs=1))], kind):  # fmt: skip
        for out in outs:
            steps.setdefault(out.request_id, []).append(out)
    delta = kind is DELTA
    for rid, outs in steps.items():
        merged, at, run = [], 0, 1
        while at < len(outs):
            group = outs[at : at + run]
            m = group[0]
            for newer in group[1:]:
                m = merge_outputs(m, newer, delta)
            merged.append((group, m))
            at, run = at + run, run + 1
        for group, m in merged:
            assert m.finished == group[-1].finished
            for c in m.outputs:  # the deltas of the run, joined
                parts = [o for out in group for o in out.outputs if o.index == c.index]
                assert c.delta_text == "".join(o.delta_text for o in parts)
                assert c.delta_token_ids == [t for o in parts for t in o.delta_token_ids]
                assert (c.finish_reason, c.cumulative_logprob) == (
                    parts[-1].finish_reason, parts[-1].cumulative_logprob)
            if not delta:  # each merged output is the run's last, deltas aside
                assert [_fields(c)[:7] for c in m.outputs] == \
                    [_fields(c)[:7] for c in group[-1].outputs]
        # Read one after another, the merged stream says what the unmerged one said.
        def read(stream: list[RequestOutput]) -> dict:
            seen: dict[int, tuple] = {}
            for out in stream:
                for c in out.outputs:
                    text, ids, lps = seen.get(c.index, ("", [], []))
                    if delta:
                        seen[c.index] = (text + c.text, ids + c.token_ids, lps + (c.logprobs or []))
                    else:
                        seen[c.index] = (c.text, c.token_ids, c.logprobs or [])
            return seen

        assert read([m for _, m in merged]) == read(outs)
        firsts = [o.prompt_logprobs for o in outs if o.prompt_logprobs is not None]
        if firsts:  # DELTA sends the prompt's logprobs once: the merge keeps them
            assert merged[0][1].prompt_logprobs == firsts[0]


def test_a_consumer_that_falls_behind_gets_merged_outputs(random_llama):
    """A stream whose consumer blocks its loop for a while after each output gets fewer,
    merged outputs: every token still arrives once, in order, and the tokens equal the
    synchronous engine's; a consumer that keeps up gets one output per token."""
    params = greedy(40)
    want = run_to_completion(LLM.from_engine(LLMEngine(EngineConfig(
        model=str(random_llama), device="cpu", dtype="float32", block_size=8))).engine,
        [PROMPTS[2]], params)[0].outputs[0]  # fmt: skip
    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                      block_size=8))  # fmt: skip

    async def consume(kind: RequestOutputKind, busy_s: float) -> list[RequestOutput]:
        outs = []
        async for out in engine.generate(PROMPTS[2], replace(params, output_kind=kind)):
            outs.append(out)
            time.sleep(busy_s)  # the loop's thread is busy (a UI drawing), not awaiting
        return outs

    async def in_step(kind: RequestOutputKind) -> list[RequestOutput]:
        """One step at a time (the learner's Step button), each output taken before the
        next step: nothing to merge."""
        engine.pause(wait=True)
        task = asyncio.create_task(consume(kind, 0.0))
        while not task.done():
            await asyncio.wrap_future(engine.step_once_async())
            await asyncio.sleep(0.01)
        engine.resume()
        return task.result()

    try:
        slow = {k: asyncio.run(consume(k, 0.05)) for k in (CUMULATIVE, DELTA)}
        stepped = asyncio.run(in_step(DELTA))
    finally:
        engine.shutdown()
    assert [o.outputs[0].token_ids for o in stepped] == [[t] for t in want.token_ids]
    for kind, outs in slow.items():
        assert 2 <= len(outs) < 20, kind  # merged: about one output per 50 ms, not per token
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == want.token_ids
        assert "".join(o.outputs[0].delta_text for o in outs) == want.text
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    assert slow[CUMULATIVE][-1].outputs[0].token_ids == want.token_ids
    assert [t for o in slow[DELTA] for t in o.outputs[0].token_ids] == want.token_ids


def test_server_metrics_count_each_sample_of_a_delta_stream_once():
    """A DELTA stream reports a sample that ends early in an earlier output than the
    request's last one: each finish is counted once, under its own reason."""
    from types import SimpleNamespace

    from engine.async_engine import EngineMetrics
    from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
    from engine.server.metrics import ServerMetrics

    metrics = ServerMetrics(SimpleNamespace(metrics=EngineMetrics, max_model_len=64), model_name="m")
    tracker = metrics.track()

    def output(finished: bool, *completions: CompletionOutput) -> RequestOutput:
        return RequestOutput("r", None, [1, 2], list(completions), finished,
                             RequestMetrics(0.0, 0.0, 0.0, 1.0 if finished else None))  # fmt: skip

    tracker.observe(output(False, CompletionOutput(0, "a", [5]), CompletionOutput(1, "b", [6])), 2)
    tracker.observe(output(False, CompletionOutput(0, "", [7], finish_reason="stop")), 1)
    tracker.observe(output(True, CompletionOutput(1, "c", [8], finish_reason="length")), 1)
    tracker.close()

    def count(reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "vllm:request_success_total", {"model_name": "m", "engine": "0",
                                           "finished_reason": reason})

    assert (count("stop"), count("length"), count("abort")) == (1.0, 1.0, 0.0)
    assert metrics.registry.get_sample_value("vllm:generation_tokens_total",
                                             {"model_name": "m", "engine": "0"}) == 4  # fmt: skip


def test_server_metrics_count_an_inter_token_latency_per_merged_step():
    """An output standing for three steps (its consumer fell behind) counts three
    inter-token latencies, from the engine's token times, as vLLM counts per iteration."""
    from types import SimpleNamespace

    from engine.async_engine import EngineMetrics
    from engine.outputs import RequestMetrics
    from engine.server.metrics import ServerMetrics

    metrics = ServerMetrics(SimpleNamespace(metrics=EngineMetrics, max_model_len=64), model_name="m")
    tracker = metrics.track()
    times = RequestMetrics(arrival_time=10.0, first_scheduled_time=10.0, first_token_time=10.5,
                           last_token_time=10.5)  # fmt: skip
    first = CompletionOutput(0, "a", [5], delta_text="a", delta_token_ids=[5])
    tracker.observe(RequestOutput("r", None, [1], [first], False, times), 1)
    times.last_token_time = 11.1  # three more steps' tokens, taken at once
    merged = CompletionOutput(0, "abcd", [5, 6, 7, 8], delta_text="bcd", delta_token_ids=[6, 7, 8])
    tracker.observe(RequestOutput("r", None, [1], [merged], False, times), 3)
    labels = {"model_name": "m", "engine": "0"}

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(f"vllm:{name}", labels)

    assert sample("time_to_first_token_seconds_count") == 1
    assert sample("time_to_first_token_seconds_sum") == pytest.approx(0.5)
    assert sample("inter_token_latency_seconds_count") == 3
    assert sample("inter_token_latency_seconds_sum") == pytest.approx(0.6)
    assert metrics.registry.get_sample_value(
        "vllm:inter_token_latency_seconds_bucket", {**labels, "le": "0.2"}) == 3
