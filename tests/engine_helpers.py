"""Helpers for tests that drive an LLMEngine step by step."""

from __future__ import annotations

from engine import LLMEngine, RequestOutput, SamplingParams


def run_to_completion(
    engine: LLMEngine,
    prompts: list,
    params: SamplingParams | list[SamplingParams],
    prefix: str = "req",
) -> list[RequestOutput]:
    """Add every prompt, step until all are done; outputs come back in input order."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    ids = [f"{prefix}-{i}" for i in range(len(prompts))]
    for rid, prompt, p in zip(ids, prompts, params):
        engine.add_request(rid, prompt, p)
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[rid] for rid in ids]


def greedy(max_tokens: int) -> SamplingParams:
    """Greedy decoding of exactly max_tokens tokens (EOS does not stop it)."""
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def aborted_ids(kv_manager) -> list[str]:
    """Request ids whose blocks the KV event log says were freed by an abort, in order."""
    return [e.request_id for e in kv_manager.events if e.kind == "free" and e.detail == "abort"]
