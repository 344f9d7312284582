"""Ready-made experiments, one click away: each opens chats that make one idea visible in
the learner's panels.

- shared_system_prompt: two chats with the same long system prompt; the second is sent once
  the first has computed its prompt, so its prompt blocks are prefix-cache hits (ref count 2).
- n_samples: one prompt, n = 4 samples; the samples share the prompt's blocks.
- fill_small_cache: the 64-block cache and four long replies; blocks run out, the newest
  request is preempted and later recomputed, and every reply still completes.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

SHARED_SYSTEM_PROMPT = (
    "You are a patient teacher who explains how computers work to curious beginners. "
    "Use short sentences and everyday examples, define every technical word the first time "
    "you use it, and end each answer with one question that checks understanding."
)
GREEDY = {"temperature": 0.0}
SHARED_SAMPLING = {**GREEDY, "max_tokens": 64}
FILL_PROMPTS = (
    "Tell me a long story about a lighthouse keeper.",
    "Explain, step by step, how a bicycle gear works.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Describe a busy market in the morning, in detail.",
)


def run_experiment(app, key: str) -> asyncio.Task | None:
    """Start the experiment named by key (see ui.learner_toolbar.EXPERIMENTS)."""
    runs = {"shared_system_prompt": shared_system_prompt, "n_samples": n_samples,
            "fill_small_cache": fill_small_cache}  # fmt: skip
    if key not in runs:
        raise ValueError(f"unknown experiment {key!r}; known: {sorted(runs)}")
    task = asyncio.ensure_future(runs[key](app))
    task.add_done_callback(lambda t: _report_failure(app, key, t))
    return task


def _report_failure(app, key: str, task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("experiment %s failed", key, exc_info=task.exception())
    if not app.closed:
        app.window.statusBar().showMessage(f"Experiment failed: {task.exception()}", 10000)


def _open_chat(app, title: str, system: str, sampling: dict):
    chat = app.new_session()
    if chat is None:
        raise RuntimeError("no free pane for the experiment: close a pane first")
    app.store.rename_session(chat.session_id, title)
    app.store.update_settings(chat.session_id, system, sampling)
    app.sessions.refresh(chat.session_id)
    chat.load()
    return chat


async def _first_token(chat, timeout: float = 60.0) -> None:
    """Until the chat's reply has its first token (its prompt is in the cache)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while chat.last_output is None and chat.busy:
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.02)


async def shared_system_prompt(app) -> None:
    await app.service.wait_ready()
    first = _open_chat(app, "Shared prompt · A", SHARED_SYSTEM_PROMPT, SHARED_SAMPLING)
    second = _open_chat(app, "Shared prompt · B", SHARED_SYSTEM_PROMPT, SHARED_SAMPLING)
    tasks = [first.send("What is a page table?")]
    await _first_token(first)
    tasks.append(second.send("What is a cache?"))
    await asyncio.gather(*(t for t in tasks if t is not None))


async def n_samples(app, n: int = 4, prompt: str = "Invent a name for a friendly robot.") -> None:
    from engine import SamplingParams

    await app.service.wait_ready()
    chat = _open_chat(app, f"n = {n} samples", "", {"temperature": 0.9, "max_tokens": 64})
    sid = chat.session_id
    app.store.add_message(sid, "user", prompt)
    chat.refresh()
    ids = chat._counter().prompt_ids(chat._system() + chat._history())
    params = SamplingParams(n=n, temperature=0.9, top_p=0.95, max_tokens=64, seed=sid)
    final = None
    async for out in app.service.engine.generate(ids, params, request_id=f"session{sid}-samples"):
        final = out
    for c in final.outputs:
        app.store.add_message(sid, "assistant", f"*Sample {c.index + 1} of {n}:* {c.text}",
                              stats={"tokens": len(c.token_ids)})  # fmt: skip
    chat.refresh()


async def fill_small_cache(app, max_tokens: int = 400) -> None:
    """Four long greedy replies on 64 blocks of 16 tokens: they cannot all fit."""
    await app.service.wait_ready()
    if not app.service.small_cache:
        restart = app.learner.set_small_cache(True)
        if restart is not None:
            await restart
        await app.service.wait_ready()
    sampling = {**GREEDY, "max_tokens": max_tokens, "ignore_eos": True}
    chats = [_open_chat(app, f"Fill the cache · {i + 1}", "", sampling)
             for i in range(len(FILL_PROMPTS))]  # fmt: skip
    tasks = [c.send(p) for c, p in zip(chats, FILL_PROMPTS)]
    await asyncio.gather(*(t for t in tasks if t is not None))
