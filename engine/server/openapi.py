"""What the OpenAPI schema (/openapi.json) says about the answers: the error body, which
routes give which errors, streamed bodies. The schema must tell the truth: clients are
generated from it, and tests/test_server_fuzz.py checks every answer against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body (engine.server.errors.error_body)."""

    error: ErrorInfo


_WHY = {
    400: "A bad request: the message names the field (pagedesk answers a body that does not "
         "validate with a 400, as OpenAI and vLLM do, never a 422). Also a `Host` name this "
         "server does not answer to.",
    401: "No API key, or the wrong one (only when the server has one).",
    404: "No such model.",
    413: "The request body is over the server's limit.",
    503: "The engine is not running.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in statuses}


def json_or_event_stream(what: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON (the response model) or, with `stream: true`, server-sent events."""
    events = {"schema": {"type": "string", "description": f"`data: {{{what} chunk}}` events, "
                                                          "then `data: [DONE]`"}}
    return {200: {"content": {"text/event-stream": events}}}


def without_validation_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi` without the 422 FastAPI documents for every route with a body or
    parameters: this server answers those with a 400 (declared on each route)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
        return app.openapi_schema

    return openapi
