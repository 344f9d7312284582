"""API keys of remote endpoints: in the OS keyring (the `keyring` package), keyed by URL.

Where no keyring backend works (a headless CI box, a desktop without a secret service)
the keys live in this process's memory only, for this run; `persistent` says which, so the
dialog can tell the person. A key is never written to the settings or the session store.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SERVICE = "pagedesk-remote"  # the keyring's service name; the username is the endpoint URL


class KeyStore:
    def __init__(self, backend=None):
        """`backend`: a keyring backend (tests); default: keyring's own choice, made on
        first use (importing keyring and asking the OS costs ~0.1 s: not at start-up)."""
        self._memory: dict[str, str] = {}
        self._backend = backend
        self._chosen = False
        self._found = None

    @property
    def _keyring(self):
        if not self._chosen:
            self._found, self._chosen = _usable_keyring(self._backend), True
        return self._found

    @property
    def persistent(self) -> bool:
        """True when keys go to the OS keyring; False: memory only, lost on exit."""
        return self._keyring is not None

    @property
    def backend_name(self) -> str:
        return type(self._keyring).__name__ if self._keyring is not None else "memory"

    def describe(self) -> str:
        """Where a key will be kept, in a sentence for the dialog."""
        if self.persistent:
            return f"The key is kept in the OS keyring ({self.backend_name}), keyed by the URL."
        return ("No OS keyring works here: the key is kept in memory for this run only, and "
                "must be entered again after a restart. It is never written to disk.")

    def get(self, url: str) -> str:
        """The key stored for `url`, or "" (none, or a server without keys)."""
        if url in self._memory:
            return self._memory[url]
        if self._keyring is not None:
            try:
                return self._keyring.get_password(SERVICE, url) or ""
            except Exception as exc:  # a locked or broken keyring: this run only, in memory
                log.warning("reading the key for %s from the keyring failed: %s", url, exc)
        return ""

    def set(self, url: str, key: str) -> None:
        if self._keyring is not None:
            try:
                if key:
                    self._keyring.set_password(SERVICE, url, key)
                return
            except Exception as exc:
                log.warning("the keyring refused the key for %s (%s): kept in memory", url, exc)
        self._memory[url] = key


def _usable_keyring(backend):
    """The backend if it can store secrets, else None (keyring's `fail` backend, or none)."""
    try:
        import keyring
        from keyring.backends import fail

        chosen = backend or keyring.get_keyring()
        if isinstance(chosen, fail.Keyring) or getattr(chosen, "priority", 1) <= 0:
            return None
        return chosen
    except Exception as exc:  # no usable backend at all: memory
        log.info("no OS keyring (%s): remote API keys are kept for this run only", exc)
        return None
