"""HubError: every way a Hub look-up or download fails, as a kind and one plain sentence.

The kind lets a caller choose what to offer (a login button for "unauthorized", a link for
"gated", Resume for "cancelled"); str(err) is what a person reads.
"""

from __future__ import annotations

import errno

KINDS = ("not_found", "unauthorized", "gated", "offline", "disk_full", "corrupt", "cancelled",
         "http")  # fmt: skip
LOGIN_HINT = "log in with `huggingface-cli login` or set HF_TOKEN"


class HubError(Exception):
    """A failed Hub operation. `kind` is one of KINDS; str(err) is one sentence for a person."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown HubError kind {kind!r}")
        super().__init__(message)
        self.kind = kind


def error_for_status(status: int, repo_id: str, endpoint: str, *, error_code: str | None = None,
                     path: str | None = None, revision: str | None = None) -> HubError:
    """The HubError for an HTTP error status from the Hub (X-Error-Code refines a 404)."""
    if status == 401:
        gated = f" (it is gated: also accept its licence at {endpoint}/{repo_id})"
        extra = gated if error_code == "GatedRepo" else ", and check that it is spelt right"
        return HubError("unauthorized",
                        f"{repo_id} needs a Hugging Face login: {LOGIN_HINT}{extra}.")
    if status == 403:
        return HubError("gated", f"{repo_id} is gated: accept its licence at {endpoint}/{repo_id} "
                        f"with the account whose token you use, then {LOGIN_HINT}.")
    if status == 404:
        return not_found(repo_id, error_code=error_code, path=path, revision=revision)
    return HubError("http", f"The Hub answered HTTP {status} for {repo_id}"
                    f"{f' ({path})' if path else ''}: try again later.")


def not_found(repo_id: str, *, error_code: str | None = None, path: str | None = None,
              revision: str | None = None) -> HubError:
    if error_code == "RevisionNotFound" and revision:
        return HubError("not_found", f"{repo_id} has no revision {revision!r}.")
    if error_code == "EntryNotFound" and path:
        return HubError("not_found", f"{repo_id} has no file {path!r}.")
    return HubError("not_found", f"{repo_id} was not found on the Hub: check the repo id "
                    "(a private repo also needs a login).")


def offline(endpoint: str, reason: str) -> HubError:
    return HubError("offline", f"Cannot reach the Hugging Face Hub at {endpoint} ({reason}): "
                    "check the network connection, then try again.")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; the unit that keeps one or two digits before the point."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
