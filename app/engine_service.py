"""The engine service: owns the AsyncEngine, loads it off the UI thread, forwards its stats.

The model loads in a worker thread (torch is imported there too, so the window opens at
once); step statistics arrive from the engine thread and reach Qt through a queued signal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.device_info import EngineInfo, engine_info

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct (bundled)"


class EngineLoadError(RuntimeError):
    """The model could not be loaded; the message says why."""


# How often the engine thread hands the panels its step records and a KV picture while it
# steps (AsyncEngine.stats_interval): 10 a second looks live, and every hand-off redraws
# the block grid and the timeline on the UI thread, so more would only cost it. Paused,
# single-stepped or idle, the panels get each step at once.
PANEL_INTERVAL_S = 0.1

# The learner's small cache: few enough blocks to see each one, to fill up and to preempt.
SMALL_CACHE_FIELDS = {"num_kv_blocks": 64, "block_size": 16}


def build_engine(config_fields: dict[str, Any], loaded: Any = None) -> tuple[Any, EngineInfo]:
    """In a worker thread: the AsyncEngine and what to show about it. `loaded` reuses the
    weights of an engine being replaced (a restart on another cache size loads nothing)."""
    # torch, transformers and the model make ~450k long-lived objects. A full garbage
    # collection walks them all (100-350 ms on a 2-core machine) holding the GIL, which the
    # UI thread feels: none runs while loading (it leaves ~7k unreachable objects), and the
    # survivors are frozen, so later full collections skip them.
    gc.disable()
    try:
        from engine import EngineConfig, LLMEngine
        from engine.async_engine import AsyncEngine

        config = EngineConfig(**config_fields)
        engine = AsyncEngine(engine=LLMEngine(config, loaded=loaded),
                             stats_interval=PANEL_INTERVAL_S)
    finally:
        gc.freeze()
        gc.enable()
    return engine, engine_info(engine.info(), config.device)


class EngineService(QObject):
    loadingStarted = Signal(str)  # what is being loaded
    loaded = Signal(object)  # EngineInfo
    loadFailed = Signal(str)
    restarting = Signal()  # the engine is replaced (another cache size); `loaded` follows
    switchFailed = Signal(str)  # a model switch failed (why, in one sentence); the old one serves
    # list[StepStats] since the last emit, KVSnapshot or None (emitted in the engine thread)
    statsUpdated = Signal(object, object)

    def __init__(self, config_fields: dict[str, Any], parent: QObject | None = None):
        super().__init__(parent)
        self.setObjectName("engineService")
        self.config_fields = dict(config_fields)
        self._settings_block_size = self.config_fields.get("block_size", 16)
        self.engine = None  # AsyncEngine, once loaded
        self.info: EngineInfo | None = None
        self.tokenizer = None  # the engine's, once loaded
        self.error: str | None = None
        self._ready: asyncio.Future | None = None
        self._closed = False
        self.is_restarting = False
        # True while a restart keeps the weights (streams may carry on with the same tokens);
        # False for a switch to another model (streams in flight stop).
        self.restart_keeps_weights = True

    @property
    def model_label(self) -> str:
        return self.config_fields.get("model") or BUNDLED_MODEL_NAME

    @property
    def is_ready(self) -> bool:
        return self.engine is not None

    def start(self) -> asyncio.Task:
        """Begin loading in the background; the returned task ends when it is done."""
        self._ready = asyncio.get_event_loop().create_future()
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.loadingStarted.emit(self.model_label)
        return asyncio.ensure_future(self._load())

    async def wait_ready(self):
        """The AsyncEngine once loaded; raises EngineLoadError if loading failed."""
        if self._ready is None:
            raise EngineLoadError("the engine was never started")
        return await asyncio.shield(self._ready)

    @property
    def small_cache(self) -> bool:
        return self.config_fields.get("num_kv_blocks") == SMALL_CACHE_FIELDS["num_kv_blocks"]

    def restart(self, **overrides: Any) -> asyncio.Task:
        """Replace the engine by one built with these EngineConfig fields changed (None
        removes a field), on the same weights. Streams open now see EngineDeadError while
        is_restarting is set, and carry on once `loaded` is emitted again."""
        for name, value in overrides.items():
            if value is None:
                self.config_fields.pop(name, None)
            else:
                self.config_fields[name] = value
        old = self.engine
        loaded = old.engine.loaded if old is not None else None
        if self.config_fields.get("tensor_parallel_size", 1) > 1:
            loaded = None  # each rank loads its own shard again: the old workers stop
        self._retire(old, keeps_weights=True)
        self.loadingStarted.emit(self.model_label)
        return asyncio.ensure_future(self._load(loaded))

    def _retire(self, old: Any, keeps_weights: bool) -> None:
        """Take the engine out of service: its streams end now, and the chats wait for the
        next one (wait_ready) or, after a switch of model, stop their replies."""
        self.engine = None
        self.is_restarting = True
        self.restart_keeps_weights = keeps_weights
        self.restarting.emit()
        self._ready = asyncio.get_event_loop().create_future()
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        if old is not None:
            gc.unfreeze()  # what loading froze must be collectable once the engine is gone
            old.shutdown()
            gc.collect()

    def switch_model(self, model: str | None) -> asyncio.Task:
        """Load another model (None: the bundled one) while the current one keeps serving;
        on success the old model and its KV cache are freed and the new engine takes over,
        on failure the old one stays and `switchFailed` says why."""
        return asyncio.ensure_future(self._switch(model))

    async def _switch(self, model: str | None) -> bool:
        fields = {**self.config_fields, "model": model or None}
        label = model or BUNDLED_MODEL_NAME
        self.loadingStarted.emit(label)
        loop = asyncio.get_running_loop()
        try:
            engine, info = await loop.run_in_executor(None, build_engine, fields)
        except Exception as exc:
            log.exception("switching to %s failed", label)
            self.switchFailed.emit(f"{label} did not load: {exc}")
            if self.info is not None:
                self.loaded.emit(self.info)  # the status bar shows the model still serving
            return False
        if self._closed:
            engine.shutdown()
            return False
        self._retire(self.engine, keeps_weights=False)
        self.config_fields = fields
        self._adopt(engine, info)
        return True

    def set_small_cache(self, on: bool) -> asyncio.Task:
        """The learner's preset: 64 blocks of 16 tokens, or back to the settings' size."""
        fields = SMALL_CACHE_FIELDS if on else {"num_kv_blocks": None,
                                                "block_size": self._settings_block_size}
        return self.restart(**fields)

    async def _load(self, loaded: Any = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            engine, info = await loop.run_in_executor(
                None, build_engine, self.config_fields, loaded
            )
        except Exception as exc:
            log.exception("loading %s failed", self.model_label)
            self.is_restarting = False
            self.error = f"{type(exc).__name__}: {exc}"
            self.loadFailed.emit(self.error)
            self._ready.set_exception(EngineLoadError(self.error))
            return
        if self._closed:
            engine.shutdown()
            return
        self._adopt(engine, info)

    def _adopt(self, engine: Any, info: EngineInfo) -> None:
        # The UI thread counts tokens with the engine's tokenizer, as AsyncEngine.generate
        # does with chat prompts: encoding without truncation or padding changes nothing in
        # it, so it is safe beside the engine thread's decoding.
        self.engine, self.info, self.tokenizer = engine, info, engine.tokenizer
        self.is_restarting = False
        self.error = None
        engine.add_stats_listener(self._forward_stats)
        log.info("engine ready: %s", info)
        self.loaded.emit(info)
        self._ready.set_result(engine)

    def _forward_stats(self, records, snapshot) -> None:
        """Engine thread: hand the records to Qt (queued to the receivers' thread)."""
        self.statsUpdated.emit(records, snapshot)

    def shutdown(self) -> None:
        """Stop the engine and free the model (waits for at most the current step)."""
        self._closed = True
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
        gc.unfreeze()  # let the interpreter free everything at exit
