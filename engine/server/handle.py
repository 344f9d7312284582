"""`start_server(engine)`: uvicorn in a background thread over an existing AsyncEngine —
what the desktop app's server switch calls, and what the tests use."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from engine.server.api import LOOPBACK, create_app
from engine.server.limits import DEFAULT_MAX_BODY_BYTES
from engine.server.net import is_loopback

GRACEFUL_SHUTDOWN_S = 3  # open streams get this long to finish when the server stops


class ServerHandle:
    """A running server: `.url` (http://host:port), `.port`, `.stop()`. Also a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int):
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, give open requests a moment, then close them (their engine
        requests are aborted). The engine itself keeps running."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    *,
    served_model_name: str | list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
) -> ServerHandle:
    """Serve `engine` on host:port (port 0 = any free port) until `.stop()`.

    The socket is bound here, in the caller's thread, so a port in use raises OSError at
    once. Binds to 127.0.0.1 unless told otherwise.
    """
    sock = _bind(host, port)
    hosts = (LOOPBACK,) if is_loopback(host) else None  # a LAN address answers to any name
    app = create_app(engine, api_key=api_key, served_model_name=served_model_name, allowed_hosts=hosts,
                     max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="pagedesk-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    return ServerHandle(server, thread, host, sock.getsockname()[1])


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
