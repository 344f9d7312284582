"""One file's bytes: a partial file we own that survives the process, and a ranged GET into it.

The partial file `blobs/<blob>.pagedesk-partial` keeps its name across processes (unlike
huggingface_hub's per-process `.incomplete` files, deleted on failure), so a cancel, a
dropped connection or a SIGKILL leaves bytes the next run continues from with
`Range: bytes=N-`. A sidecar JSON records the size and blob the bytes belong to, so bytes of
another version of the file are never appended to. The hash is computed while writing
(seeded from the bytes already on disk), so verification needs no second read.

The socket is read on a helper thread that hands chunks over a queue: the worker thread
(the caller's, which reports progress) then wakes every TICK_S even in a stall, so the speed
readout falls to 0 and a stop request is honoured at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
from pathlib import Path

from app.hub import net
from app.hub.cache_layout import partial_path, write_atomic
from app.hub.errors import HubError, error_for_status, is_disk_full
from app.hub.plan import RemoteFile
from app.hub.progress import Reporter

TICK_S = 0.25
_END = object()
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")


class Retryable(Exception):
    """A transient failure: try again from the bytes on disk."""

    def __init__(self, reason: str, *, network: bool) -> None:
        super().__init__(reason)
        self.network = network  # a transport error (offline?), not an HTTP status


class PartialFile:
    """The bytes of one blob received so far, with the running hash of them."""

    def __init__(self, storage: Path, blob: str, file: RemoteFile) -> None:
        self.path = partial_path(storage, blob)
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.file, self.blob = file, blob
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._sidecar_matches():
            self.path.unlink(missing_ok=True)
            write_atomic(self.sidecar, json.dumps({"blob": blob, "size": file.size,
                                                   "path": file.path}))
        self._hasher = self._new_hasher()
        self._seed()

    @staticmethod
    def existing_size(storage: Path, blob: str, file: RemoteFile) -> int:
        """Bytes a later PartialFile would resume from, without touching anything."""
        path = partial_path(storage, blob)
        try:
            record = json.loads(path.with_name(path.name + ".json").read_text())
            size = path.stat().st_size
        except (OSError, ValueError):
            return 0
        matches = record.get("blob") == blob and record.get("size") == file.size
        return size if matches and size <= file.size else 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, data: bytes) -> None:
        try:
            write_bytes(self.path, data)
        except OSError as exc:
            if is_disk_full(exc):
                raise HubError("disk_full", f"The disk holding {self.path.parent} is full: free "
                               "some space, then download again to resume.") from exc
            raise
        if self._hasher is not None:
            self._hasher.update(data)

    def truncate(self) -> int:
        """Drop every byte (the server ignored our Range); returns how many were dropped."""
        dropped = self.size
        self.path.write_bytes(b"")
        self._hasher = self._new_hasher()
        return dropped

    def verified(self) -> bool:
        """Size right and, where the Hub gives one, the hash right (LFS sha256 or git oid)."""
        if self.size != self.file.size:
            return False
        return self._hasher is None or self._hasher.hexdigest() == self._expected()

    def commit(self, final: Path) -> None:
        os.replace(self.path, final)
        self.sidecar.unlink(missing_ok=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def _sidecar_matches(self) -> bool:
        try:
            record = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return False
        return record.get("blob") == self.blob and record.get("size") == self.file.size \
            and self.size <= self.file.size

    def _expected(self) -> str | None:
        if self.file.sha256:
            return self.file.sha256
        return self.blob if _GIT_OID.match(self.blob) else None

    def _new_hasher(self):
        if self.file.sha256:
            return hashlib.sha256()
        if self._expected():  # a small git file: its ETag is the git blob id
            return hashlib.sha1(b"blob %d\0" % self.file.size)
        return None

    def _seed(self) -> None:
        if self._hasher is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                self._hasher.update(block)


def write_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def fetch(client, url: str, headers: dict[str, str], part: PartialFile, reporter: Reporter,
          stop: threading.Event, repo_id: str) -> None:
    """Fetch the bytes of `url` that `part` lacks. Raises Retryable or HubError."""
    start = part.size
    if start >= part.file.size:
        return
    request = {**headers, "Accept-Encoding": "identity"}  # byte ranges of the file itself
    if start:
        request["Range"] = f"bytes={start}-"
    try:
        with client.stream("GET", url, headers=request) as response:
            _check_status(response, part, reporter, start, repo_id)
            _stream(response, part, reporter, stop)
    except net.TRANSPORT_ERRORS as exc:
        raise Retryable(net.reason(exc), network=True) from exc
    if part.size < part.file.size:
        raise Retryable(f"connection closed at {part.size} of {part.file.size} bytes",
                        network=True)
    if part.size > part.file.size:
        part.remove()
        raise HubError("corrupt", f"{part.file.path} of {repo_id} came back longer than the Hub "
                       "said: the bad bytes were removed; try again.")


def _check_status(response, part: PartialFile, reporter: Reporter, start: int,
                  repo_id: str) -> None:
    status = response.status_code
    if status == 206 and _range_start(response) == start:
        return
    if status in (200, 206):  # the server ignored (or misread) the Range: start over
        reporter.discard(part.truncate())
        if status == 200:
            return
        raise Retryable("the server sent another byte range than asked", network=False)
    if status in (429, 500, 502, 503, 504) or status == 416:
        if status == 416:
            reporter.discard(part.truncate())
        raise Retryable(f"HTTP {status}", network=False)
    raise error_for_status(status, repo_id, net.endpoint(), path=part.file.path,
                           error_code=response.headers.get("X-Error-Code"))


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _stream(response, part: PartialFile, reporter: Reporter, stop: threading.Event) -> None:
    chunks: queue.Queue = queue.Queue(maxsize=16)
    quit_reading = threading.Event()
    reader = threading.Thread(target=_pump, args=(response, chunks, quit_reading),
                              name="hub-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = chunks.get(timeout=TICK_S)
            except queue.Empty:
                item = None
            if stop.is_set():
                raise HubError("cancelled", f"The download of {reporter.repo_id} was cancelled: "
                               "the bytes so far are kept, and the next download resumes.")
            if item is None:
                reporter.tick()  # no bytes: the speed readout decays to 0
            elif item is _END:
                reader.join(timeout=1)  # ends now: the connection goes back to the pool
                return
            elif isinstance(item, BaseException):
                raise item
            else:
                part.append(item)
                reporter.advance(len(item))
    finally:
        quit_reading.set()
        if reader.is_alive():
            _shutdown_socket(response)  # wakes a reader blocked on a stalled socket
        response.close()
        reader.join(timeout=1)


def _shutdown_socket(response) -> None:
    """Shut the connection's socket down: closing it from this thread would not wake a
    read blocked in another (httpcore's documented `network_stream` extension)."""
    import socket

    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _pump(response, chunks: queue.Queue, quit_reading: threading.Event) -> None:
    try:
        for chunk in response.iter_raw():  # as received: a chunker would drop a tail
            if not _put(chunks, chunk, quit_reading):
                return
        _put(chunks, _END, quit_reading)
    except BaseException as exc:  # handed to the worker thread, which decides
        if not quit_reading.is_set():
            _put(chunks, exc, quit_reading)


def _put(chunks: queue.Queue, item: object, quit_reading: threading.Event) -> bool:
    while not quit_reading.is_set():
        try:
            chunks.put(item, timeout=TICK_S)
            return True
        except queue.Full:
            continue
    return False
