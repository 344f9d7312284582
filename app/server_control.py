"""The server switch: starts / stops the engine's OpenAI-compatible server (engine.server)
on the running engine, on 127.0.0.1 with the port and API key from the settings."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable

from PySide6.QtCore import QObject

from app.engine_service import EngineLoadError, EngineService
from app.settings import AppSettings
from ui.server_switch import ServerSwitch

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # localhost only, always


def server_module_available() -> bool:
    try:
        return importlib.util.find_spec("engine.server") is not None
    except ImportError:
        return False


async def _call(fn: Callable, *args, **kwargs):
    """Run a server call without blocking the UI thread: await it if it is a coroutine
    function, else run it in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


class ServerControl(QObject):
    def __init__(self, switch: ServerSwitch, service: EngineService,
                 settings: Callable[[], AppSettings], parent: QObject | None = None):  # fmt: skip
        super().__init__(parent)
        self.setObjectName("serverControl")
        self.switch = switch
        self.service = service
        self.settings = settings
        self.handle = None
        self._engine = None  # the engine the running server serves
        self.task: asyncio.Task | None = None
        available = server_module_available()
        switch.set_available(available, "" if available else
                             "this pagedesk has no OpenAI-compatible server (engine.server)")
        switch.toggled.connect(self.set_running)
        service.loaded.connect(self._engine_loaded)

    @property
    def url(self) -> str | None:
        return getattr(self.handle, "url", None)

    def set_running(self, on: bool) -> asyncio.Task:
        self.task = asyncio.ensure_future(self.start() if on else self.stop())
        return self.task

    def _engine_loaded(self, _info) -> None:
        """A new engine (a model switch, another cache size): serve it on the same port."""
        if self.handle is not None and self._engine is not self.service.engine:
            self.task = asyncio.ensure_future(self._follow_engine())

    async def _follow_engine(self) -> None:
        await self.stop()
        await self.start()

    async def start(self) -> None:
        if self.handle is not None:
            return
        self.switch.set_busy("waiting for the model…")
        try:
            engine = await self.service.wait_ready()
            self.switch.set_busy("starting…")
            start_server = importlib.import_module("engine.server").start_server
            settings = self.settings()
            self.handle = await _call(start_server, engine, host=HOST, port=settings.server_port,
                                      api_key=settings.server_api_key or None)  # fmt: skip
            self._engine = engine
        except (EngineLoadError, Exception) as exc:
            log.exception("the server did not start")
            self.switch.set_stopped(f"failed: {exc}")
            return
        log.info("OpenAI-compatible server on %s", self.handle.url)
        self.switch.set_running(self.handle.url)

    async def stop(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            self.switch.set_busy("stopping…")
            try:
                await _call(handle.stop)
            except Exception:
                log.exception("stopping the server failed")
        self.switch.set_stopped()

    def shutdown(self) -> None:
        """At exit: stop it now (blocking: the app is going away)."""
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                result = handle.stop()
                if inspect.isawaitable(result):
                    result.close()
            except Exception:
                log.exception("stopping the server failed")
