"""Where the Hub is and how we talk to it: endpoint, HTTP client, auth headers, offline mode.

huggingface_hub 1.x speaks httpx, 2.x its fork httpx2 (same API): we use the one that is
installed beside it, and catch the transport errors of both, since HfApi raises its own.
Environment variables are read at call time (huggingface_hub.constants reads them at import),
so a caller or a test may point HF_ENDPOINT / HF_HUB_OFFLINE elsewhere after importing us.
"""

from __future__ import annotations

import os
from types import ModuleType

from app.hub.errors import HubError, error_for_status, offline


def _http_modules() -> list[ModuleType]:
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(__import__(name))
        except ImportError:
            continue
    return found


HTTP_MODULES = _http_modules()
http = HTTP_MODULES[0]  # our own client: the library huggingface_hub itself uses when both exist
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = tuple(m.TransportError for m in HTTP_MODULES)
CONNECT_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for m in HTTP_MODULES for e in (m.ConnectError, m.ConnectTimeout, m.ProxyError))


def endpoint() -> str:
    """The Hub's base URL: $HF_ENDPOINT now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if flag is None:
        return bool(constants.HF_HUB_OFFLINE)
    return flag.strip().upper() in ("1", "ON", "YES", "TRUE")


def refuse_if_offline() -> None:
    if offline_mode():
        raise HubError("offline", "Offline mode is on (HF_HUB_OFFLINE=1): unset it to download "
                       "from the Hugging Face Hub.")


def auth_headers(token: str | bool | None) -> dict[str, str]:
    """huggingface_hub's own headers: with token=None, its stored token (login / HF_TOKEN)."""
    from huggingface_hub.utils import build_hf_headers

    return build_hf_headers(token=token)


def hub_error(exc: BaseException, repo_id: str, *, revision: str | None = None,
              path: str | None = None) -> HubError | None:
    """The HubError for an exception raised by huggingface_hub or our client, or None."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError("offline", "Offline mode is on (HF_HUB_OFFLINE=1): unset it to download.")
    response = getattr(exc, "response", None)
    if isinstance(exc, HfHubHTTPError) and response is not None:
        return error_for_status(response.status_code, repo_id, endpoint(), path=path,
                                error_code=response.headers.get("X-Error-Code"),
                                revision=revision)
    if isinstance(exc, CONNECT_ERRORS):
        return offline(endpoint(), reason(exc))
    if isinstance(exc, TRANSPORT_ERRORS):
        return offline(endpoint(), reason(exc))
    return None


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
