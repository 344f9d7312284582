"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with a 4xx status.

Every failure a client can cause ends here, so a bad request never becomes a 500 and
never takes the server down.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from fastapi.responses import JSONResponse

# The engine's ValueErrors start with the name of the field they are about
# ("max_tokens must be an integer >= 1, got -5"); that name becomes `param`.
_FIELD_RE = re.compile(r"^([a-z_]+) must ")


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI error fields to send."""

    def __init__(
        self,
        message: str,
        *,
        status: int = HTTPStatus.BAD_REQUEST,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def from_value_error(cls, exc: ValueError, param: str | None = None) -> APIError:
        """A 400 for a ValueError raised by SamplingParams or the engine."""
        message = str(exc) or "invalid request"
        match = _FIELD_RE.match(message)
        return cls(message, param=param or (match.group(1) if match else None))

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(model: str) -> APIError:
    return APIError(
        f"The model `{model}` does not exist.", status=HTTPStatus.NOT_FOUND, param="model",
        code="model_not_found",
    )


def unsupported(param: str, what: str) -> APIError:
    return APIError(f"{what} is not supported by this server", param=param, code="unsupported")
