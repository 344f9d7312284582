"""pagedesk's OpenAI-compatible HTTP server (like `vllm serve`), Qt-free.

    from engine.server import create_app, start_server
    handle = start_server(async_engine, port=0)      # uvicorn in a background thread
    handle.url, handle.port; handle.stop()
    app = create_app(async_engine, api_key="...")   # the ASGI app, to run elsewhere

From the command line: `pagedesk serve` (see engine/server/cli.py).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: `pagedesk` parses its command line through this package, and the
# window must not wait for torch and FastAPI to import before it shows.
_EXPORTS = {
    "create_app": "engine.server.api",
    "ServerHandle": "engine.server.handle",
    "start_server": "engine.server.handle",
    "is_loopback": "engine.server.net",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
