"""A terminal demo of the engine: stream a chat reply, then show what the KV cache holds."""

from __future__ import annotations

import sys
import time

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.kv_snapshot import BlockState

DEFAULT_QUESTION = "In three sentences: what is a paged KV cache, and why does it help?"


def kv_usage_line(engine: LLMEngine) -> str:
    snap = engine.kv_snapshot()
    return (
        f"KV cache: {snap.num_in_use}/{snap.num_blocks} blocks in use, "
        f"{snap.num_cached_free} cached-free, {snap.num_free} free "
        f"(block = {snap.block_size} tokens)"
    )


def block_strip(engine: LLMEngine, width: int = 64) -> str:
    """The first `width` blocks as characters: # in use, + cached-free, . free."""
    snap = engine.kv_snapshot()
    marks = {BlockState.IN_USE: "#", BlockState.CACHED_FREE: "+", BlockState.FREE: "."}
    return "".join(marks[snap.state(b)] for b in range(min(width, snap.num_blocks)))


def run_demo(question: str = DEFAULT_QUESTION, model: str | None = None, max_tokens: int = 160) -> None:
    t0 = time.monotonic()
    print("Loading the model (the first start converts the bundled GGUF once)...", flush=True)
    engine = LLMEngine(EngineConfig(model=model))
    print(f"Ready in {time.monotonic() - t0:.1f} s: {engine.model_name} on {engine.device}, "
          f"{engine.num_kv_blocks} KV blocks, attention backend {engine.attention_backend}")
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True,
        return_dict=False,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    engine.add_request("demo", list(prompt), params)
    print(f"\nuser> {question}\nassistant> ", end="", flush=True)
    shown = ""
    final = None
    mid_usage = None  # the cache as it looked on the last step before the end
    while engine.has_unfinished_requests():
        for out in engine.step():
            text = out.outputs[0].text
            print(text[len(shown):], end="", flush=True)
            shown = text
            if out.finished:
                final = out
        if final is None:
            mid_usage = kv_usage_line(engine), block_strip(engine)
    print()
    if mid_usage:
        print(f"\nWhile generating  {mid_usage[0]}\n  [{mid_usage[1]}]")
    print(f"After finishing   {kv_usage_line(engine)}\n  [{block_strip(engine)}]")
    if final is not None:
        m = final.metrics
        n = len(final.outputs[0].token_ids)
        gen_time = (m.finished_time or time.monotonic()) - (m.first_token_time or m.arrival_time)
        print(f"{n} tokens, first token after {m.time_to_first_token:.2f} s, "
              f"{(n - 1) / gen_time if gen_time > 0 else 0:.1f} tokens/s, finish: "
              f"{final.outputs[0].finish_reason}")
    sys.stdout.flush()
