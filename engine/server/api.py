"""`create_app(engine)`: the FastAPI app of the OpenAI-compatible server (like `vllm serve`).

Routes: GET /health, GET /metrics (Prometheus, vLLM's names), GET /version, POST /tokenize,
POST /detokenize, GET /v1/models, GET /v1/models/{id}, POST /v1/completions,
POST /v1/chat/completions. With an API key, /v1/* wants `Authorization: Bearer KEY`; the
rest stays open, as in vLLM (probes, scrapers, and its tokenizer routes).

A server on 127.0.0.1 is still reachable from any web page the user opens: no CORS headers
are sent (a page cannot read the answers), a non-JSON body is refused (no form posts), and
by default only loopback `Host` headers are accepted, which defeats DNS rebinding.
"""

from __future__ import annotations

import logging
import secrets
from importlib.metadata import PackageNotFoundError, version
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.async_engine import EngineDeadError
from engine.server.errors import APIError, error_body
from engine.server.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from engine.server.metrics import ServerMetrics
from engine.server.net import host_name, is_loopback
from engine.server.openapi import error_responses, json_or_event_stream, without_validation_422
from engine.server.protocol import (
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ModelCard,
    ModelList,
)
from engine.server.serving import ClientGone, OpenAIServing
from engine.server.tokenization import (
    DetokenizeRequest, DetokenizeResponse, Tokenization, TokenizeRequest, TokenizeResponse,
)

log = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499  # nginx's code: nobody reads it, but logs show what happened
LOOPBACK = "loopback"


def create_app(
    engine: Any,
    *,
    api_key: str | None = None,
    served_model_name: str | list[str] | None = None,
    allowed_hosts: Sequence[str] | None = (LOOPBACK,),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The ASGI app serving `engine` (an AsyncEngine that keeps running after the app).

    served_model_name: the name(s) clients must use in `model` (default: the engine's
    model name). api_key: if set, every /v1 request must carry it as a bearer token.
    allowed_hosts: the `Host` names accepted ("loopback" = localhost and loopback
    addresses, the default); None accepts any (a server bound to a LAN address).
    max_body_bytes: a larger request body is refused with a 413 before it is parsed.
    """
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name or [])
    names = names or [engine.model_name]
    metrics = ServerMetrics(engine, names[0])
    serving = OpenAIServing(engine, names, metrics)
    app = FastAPI(title="pagedesk", summary="OpenAI-compatible API over pagedesk's engine",
                  docs_url=None, redoc_url=None,  # the docs pages would fetch scripts from a CDN
                  responses=error_responses(400, 413))  # any route: a bad Host, a body too large
    app.openapi = without_validation_422(app)
    app.state.serving = serving
    app.state.metrics = metrics
    _add_error_handlers(app)
    app.include_router(_open_routes(engine, metrics))
    app.include_router(_tokenizer_routes(Tokenization(engine, names)))
    app.include_router(_v1_routes(serving), dependencies=[Depends(_bearer_check(api_key))],
                       responses=error_responses(401))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if allowed_hosts is not None:
        app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)  # outermost: checked first
    return app


class HostGuard:
    """Refuse requests whose `Host` is not allowed (pure ASGI: streaming is untouched)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]):
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = JSONResponse(error_body("this server does not answer to that Host name",
                                               code="invalid_host"), status_code=HTTPStatus.BAD_REQUEST)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        raw = dict(scope["headers"]).get(b"host")
        if raw is None:
            return True  # HTTP/1.0 without Host: not a browser
        host = host_name(raw.decode("latin-1"))
        return host in self.allowed or (LOOPBACK in self.allowed and is_loopback(host))


def _open_routes(engine: Any, metrics: ServerMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_class=Response, responses={
        200: {"description": "The engine is running (an empty body)."}, **error_responses(503)})
    async def health() -> Response:
        if engine.is_running:
            return Response(status_code=HTTPStatus.OK)
        return JSONResponse(error_body("the engine is not running", "server_error"),
                            status_code=HTTPStatus.SERVICE_UNAVAILABLE)

    @router.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus' text format.",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/version")
    async def show_version() -> dict[str, str]:
        return {"version": _pagedesk_version()}

    return router


def _tokenizer_routes(tokenization: Tokenization) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", response_model=TokenizeResponse, responses=error_responses(404))
    async def tokenize(request: TokenizeRequest) -> TokenizeResponse:
        return await tokenization.tokenize(request)

    @router.post("/detokenize", response_model=DetokenizeResponse, responses=error_responses(404))
    async def detokenize(request: DetokenizeRequest) -> DetokenizeResponse:
        return await tokenization.detokenize(request)

    return router


def _pagedesk_version() -> str:
    try:
        return version("pagedesk")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _v1_routes(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        return serving.models()

    # :path, as model names hold slashes ("HuggingFaceTB/SmolLM2-135M-Instruct")
    @router.get("/models/{model_id:path}", response_model=ModelCard, responses=error_responses(404))
    async def model(model_id: str) -> ModelCard:
        return serving.model(model_id)

    @router.post("/chat/completions", response_model=ChatCompletionResponse, responses={
        **json_or_event_stream("chat.completion.chunk"), **error_responses(404, 503)})
    async def chat(request: ChatCompletionRequest, raw: Request) -> Response:
        return await serving.chat(request, raw)

    @router.post("/completions", response_model=CompletionResponse, responses={
        **json_or_event_stream("text_completion"), **error_responses(404, 503)})
    async def completions(request: CompletionRequest, raw: Request) -> Response:
        return await serving.completions(request, raw)

    return router


def _bearer_check(api_key: str | None):
    expected = f"Bearer {api_key}".encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not secrets.compare_digest(given, expected):
            raise APIError("Incorrect API key provided.", status=HTTPStatus.UNAUTHORIZED,
                           type="authentication_error", code="invalid_api_key")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, exc: EngineDeadError) -> Response:
        return JSONResponse(error_body(str(exc), "server_error", code="engine_dead"),
                            status_code=HTTPStatus.SERVICE_UNAVAILABLE)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> Response:
        return APIError.from_value_error(exc).response()  # as vLLM: a bad value is a 400

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {exc!r}", "server_error"),
                            status_code=HTTPStatus.INTERNAL_SERVER_ERROR)


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's list of errors -> one OpenAI error naming the first bad field."""
    errors = exc.errors()
    if not errors:
        return APIError("invalid request body")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        return APIError(f"the request body is not valid JSON: {detail}", code="invalid_json")
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return APIError(message, param=param)
