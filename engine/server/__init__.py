"""pagedesk's OpenAI-compatible HTTP server (like `vllm serve`), Qt-free.

    from engine.server import create_app, start_server
    handle = start_server(async_engine, port=0)      # uvicorn in a background thread
    handle.url, handle.port; handle.stop()
    app = create_app(async_engine, api_key="...")   # the ASGI app, to run elsewhere

From the command line: `pagedesk serve` (see engine/server/cli.py).
"""

from __future__ import annotations

from engine.server.api import create_app
from engine.server.handle import ServerHandle, start_server

__all__ = ["ServerHandle", "create_app", "start_server"]
