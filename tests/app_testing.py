"""Helpers for the desktop app's tests: a qasync loop per test, a tiny random model, an app
window on a temporary data dir, and polling that lets asyncio tasks run (qtbot.wait* does
not drive them, and must not be called inside a coroutine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from model_factory import make_random_llama

KV_CACHE_BYTES = 16 << 20  # plenty for the tiny model, quick to allocate


@pytest.fixture
def qloop(qapp):
    import qasync

    qapp.setQuitOnLastWindowClosed(False)  # a test's window closing must not stop the loop
    loop = qasync.QEventLoop(qapp, already_running=False)
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """2 layers, 4 heads of 32, byte-level tokenizer, 4096 positions: fast on the CPU."""
    return make_random_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama",
                             max_position_embeddings=4096)  # fmt: skip


def run(loop, awaitable, timeout: float = 60.0):
    """Drive `loop` until `awaitable` is done, as the app's own loop would. Not qasync's
    run_until_complete: it ends with one more pass of Qt's events after clearing the running
    loop, and a task stepped in that pass finds no loop (httpx's streams then raise), which
    the app never meets (its run_until_complete ends only at quit)."""
    future = asyncio.ensure_future(asyncio.wait_for(awaitable, timeout), loop=loop)
    future.add_done_callback(lambda _: loop.stop())
    loop.run_forever()
    if not future.done():
        raise RuntimeError("the loop stopped before the awaitable was done")
    return future.result()


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def write_settings(data_dir: Path, **fields) -> None:
    from app.settings import AppSettings, open_qsettings, save_settings

    fields.setdefault("kv_cache_bytes", KV_CACHE_BYTES)
    save_settings(open_qsettings(data_dir), AppSettings(**fields))


def open_app(loop, data_dir: Path, model: Path | str | None, **settings):
    """create_window on `data_dir` (settings written first) and wait for the model."""
    from app import create_window

    write_settings(data_dir, **settings)
    window = create_window(data_dir, model=str(model) if model else None)
    run(loop, window.controller.service.wait_ready(), 120)
    return window


def close_app(loop, window) -> None:
    """Close it as a person would (closeEvent shuts the app down), then let tasks finish."""
    window.close()
    window.controller.shutdown()  # a no-op if closeEvent did it
    run(loop, asyncio.sleep(0.05))
    window.deleteLater()


def long_replies(chat, max_tokens: int = 2000, **sampling) -> None:
    """Greedy replies that ignore EOS, so a stream lasts as long as a test needs."""
    values = {"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True, **sampling}
    chat.store.update_settings(chat.session_id, "", values)
    chat.pane.set_settings(chat.settings())
