"""`BodySizeLimit`: refuse request bodies over a size with a 413 (pure ASGI middleware).

A body's size is known before it is parsed only from its Content-Length, so a declared
size over the limit is refused before a byte of the body is read. A chunked upload (or
one whose Content-Length understates it) is counted as it arrives and refused as soon as
it passes the limit: at most `max_bytes` of it are ever buffered. Responses pass through
untouched (streams included): only requests are looked at.

After a 413 uvicorn reads and discards what the client still sends, so the client gets
to read the answer and the connection stays usable.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.server.errors import error_body

MiB = 1024 * 1024
# As nginx's and aiohttp's defaults. 1 MiB is ~250k tokens of English text, more than the
# context of any model the app offers, and keeps the GIL-holding part of tokenising an
# allowed prompt well under 100 ms on a 2-core CPU (README: "Request size limits").
DEFAULT_MAX_BODY_BYTES = 1 * MiB


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit. An HTTPException, so that
    FastAPI's body reader passes it on instead of turning it into a 400."""

    def __init__(self, max_bytes: int):
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large_message(None, max_bytes))


def too_large_message(size: int | None, max_bytes: int) -> str:
    size_text = f" ({size} bytes)" if size is not None else ""
    return (f"the request body{size_text} is over this server's limit of {max_bytes} bytes "
            f"(pagedesk serve --max-request-body-mb)")


class BodySizeLimit:
    """413 (an OpenAI error body) for any HTTP request whose body passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(scope, receive, send, too_large_message(declared, self.max_bytes))
            return
        await _LimitedRequest(self.app, self.max_bytes)(scope, receive, send)


class _LimitedRequest:
    """One request whose body is counted as the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.received = 0
        self.too_large = False
        self.response_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.max_bytes:
                    self.too_large = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            if self.too_large and not self.response_started:
                return  # the app's answer to the cut-off body: ours replaces it
            self.response_started = self.response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if self.response_started:
                raise
        if self.too_large and not self.response_started:
            await _refuse(scope, receive, send, too_large_message(None, self.max_bytes))


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    body = error_body(message, code="request_too_large")
    await JSONResponse(body, status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
