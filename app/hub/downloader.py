"""Downloader: fetch a DownloadPlan into the standard Hugging Face cache, resumable anywhere.

Why not `snapshot_download`: since huggingface_hub 1.18 each process writes its own
`<etag>.<uuid>.incomplete` file and deletes it on failure, so a crash or a restart starts
from zero. We write the same final layout (see app.hub.cache_layout) ourselves, from bytes
kept in a partial file we own (app.hub.transfer), and take huggingface_hub's own lock files,
so a concurrent `hf_hub_download` of the same blob waits for us and then finds it.

Xet: files of Xet-backed repos are fetched over plain HTTPS from the URL the Hub redirects
`/resolve/` to (the Xet bridge serves whole files and byte ranges), so they download, resume
and verify like LFS files. Not covered: hf_xet's chunk-level deduplication and parallel
chunk fetches (no speed-up from bytes already held for another file), and a bridge that
refuses Range requests (we then restart that file from zero, still verified).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from app.hub import net
from app.hub.cache_layout import (blob_path, hub_cache_dir, link_snapshot, lock_path,
                                  read_manifest, storage_dir, write_manifest, write_ref)
from app.hub.cache_layout import downloaded_snapshot  # noqa: F401  (part of this API)
from app.hub.errors import HubError, format_bytes, offline
from app.hub.plan import DownloadPlan, RemoteFile
from app.hub.progress import Progress, Reporter
from app.hub.transfer import PartialFile, Retryable, fetch

__all__ = ["Downloader", "Progress", "downloaded_snapshot", "free_bytes"]

MAX_BACKOFF_S = 30.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a stall longer than this drops the connection and retries


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or would, once created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class Downloader:
    """Download `plan` into `cache_dir` (default: $HF_HUB_CACHE, as huggingface_hub)."""

    def __init__(self, plan: DownloadPlan, cache_dir: str | Path | None = None,
                 token: str | bool | None = None, max_retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        self.plan, self.token = plan, token
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.cache = hub_cache_dir(cache_dir)
        self.storage = storage_dir(plan.repo_id, self.cache)
        self._fetched = 0

    def bytes_fetched(self) -> int:
        """Bytes transferred by the last run (bytes resumed from disk not counted)."""
        return self._fetched

    def run(self, on_progress: Callable[[Progress], None] | None = None,
            stop: threading.Event | None = None) -> Path:
        """Download every file of the plan; return the snapshot folder.

        Resumes from bytes on disk, retries with exponential back-off, checks free space
        first, verifies each file before moving it into place. Raises HubError (kind
        "cancelled" when `stop` is set: the partial bytes stay for a later run).
        on_progress is called from this thread, at most ~10 times a second plus on every
        state change, also while no bytes arrive.
        """
        stop = stop or threading.Event()
        reporter = Reporter(self.plan.repo_id, self.plan.total_bytes, on_progress)
        try:
            return self._run(reporter, stop)
        except HubError as exc:
            reporter.emit("cancelled" if exc.kind == "cancelled" else "failed", str(exc))
            raise
        finally:
            self._fetched = reporter.fetched

    def _run(self, reporter: Reporter, stop: threading.Event) -> Path:
        net.refuse_if_offline()
        reporter.done = sum(self._on_disk(f) for f in self.plan.files)
        self._check_space(reporter.done)
        # An empty snapshots/ from the start: the scanner then never warns about this folder.
        (self.storage / "snapshots").mkdir(parents=True, exist_ok=True)
        self._write_manifest(complete=False)
        reporter.emit("downloading")
        with net.http.Client(follow_redirects=True, timeout=net.http.Timeout(
                READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)) as client:
            for file in self.plan.files:
                self._fetch_file(client, file, reporter, stop)
        write_ref(self.storage, self.plan.revision, self.plan.commit)
        self._write_manifest(complete=True)
        reporter.emit("done")
        return self.storage / "snapshots" / self.plan.commit

    def _fetch_file(self, client, file: RemoteFile, reporter: Reporter,
                    stop: threading.Event) -> None:
        from filelock import FileLock, Timeout

        blob = self._blob_name(file)
        lock = FileLock(str(lock_path(self.cache, self.plan.repo_id, blob)))
        lock_path(self.cache, self.plan.repo_id, blob).parent.mkdir(parents=True, exist_ok=True)
        while True:  # another process (the app, the CLI, hf_hub_download) may hold it
            try:
                lock.acquire(timeout=0.5)
                break
            except Timeout:
                self._raise_if_stopped(stop)
                reporter.tick()
        try:
            self._fetch_locked(client, file, blob, reporter, stop)
        finally:
            lock.release()
        link_snapshot(self.storage, self.plan.commit, file.path, blob)

    def _fetch_locked(self, client, file: RemoteFile, blob: str, reporter: Reporter,
                      stop: threading.Event) -> None:
        final = blob_path(self.storage, blob)
        if final.is_file() and final.stat().st_size == file.size:
            reporter.start_file(file.path, file.size, file.size)
            return
        final.unlink(missing_ok=True)  # a blob of the wrong size is no use to anyone
        part = PartialFile(self.storage, blob, file)
        reporter.start_file(file.path, file.size, part.size)
        self._fetch_with_retries(client, file, part, reporter, stop)
        reporter.emit("verifying")
        if not part.verified():
            part.remove()
            reporter.discard(file.size)
            what = "its sha256" if file.sha256 else "its ETag"
            raise HubError("corrupt", f"{file.path} of {self.plan.repo_id} does not match "
                           f"{what} on the Hub: the bad bytes were removed; download again.")
        part.commit(final)
        reporter.emit("downloading")

    def _fetch_with_retries(self, client, file: RemoteFile, part: PartialFile,
                            reporter: Reporter, stop: threading.Event) -> None:
        url = self._url(file)
        headers = net.auth_headers(self.token)
        failures = 0
        while True:
            before = part.size
            try:
                return fetch(client, url, headers, part, reporter, stop, self.plan.repo_id)
            except Retryable as exc:
                # Progress since the last failure: a flaky link, not a dead one.
                failures = 1 if part.size > before else failures + 1
                if failures > self.max_retries:
                    raise self._gave_up(file, exc) from exc
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (failures - 1))
                reporter.emit("retrying", f"{file.path}: {exc}; retrying in {delay:.1f} s")
                self._sleep(delay, reporter, stop)
                reporter.emit("downloading")

    def _gave_up(self, file: RemoteFile, exc: Retryable) -> HubError:
        if exc.network:
            return offline(net.endpoint(), f"{exc}; {file.path} of {self.plan.repo_id} is kept "
                           "for a resume")
        return HubError("http", f"Downloading {file.path} of {self.plan.repo_id} failed "
                        f"{self.max_retries + 1} times ({exc}): try again later to resume.")

    def _sleep(self, delay: float, reporter: Reporter, stop: threading.Event) -> None:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if stop.wait(min(left, 0.25)):
                self._raise_if_stopped(stop)
            reporter.tick()

    def _raise_if_stopped(self, stop: threading.Event) -> None:
        if stop.is_set():
            raise HubError("cancelled", f"The download of {self.plan.repo_id} was cancelled: "
                           "the bytes so far are kept, and the next download resumes.")

    def _url(self, file: RemoteFile) -> str:
        # Built here, not with hf_hub_url: that one formats a template fixed at import time.
        return (f"{net.endpoint()}/{self.plan.repo_id}/resolve/"
                f"{quote(self.plan.commit, safe='')}/{quote(file.path)}")

    def _blob_name(self, file: RemoteFile) -> str:
        if file.etag:
            return file.etag.strip('"').removeprefix("W/").strip('"')
        from huggingface_hub import get_hf_file_metadata

        try:  # a Hub that gave no blob id in model_info: ask the file itself
            meta = get_hf_file_metadata(self._url(file), token=self.token)
        except Exception as exc:
            error = net.hub_error(exc, self.plan.repo_id, path=file.path)
            raise (error or exc) from exc
        if not meta.etag:
            raise HubError("http", f"The Hub gave no ETag for {file.path} of {self.plan.repo_id}.")
        return meta.etag

    def _on_disk(self, file: RemoteFile) -> int:
        """Bytes of `file` already held: all of it as a blob, or a resumable partial."""
        if not file.etag:
            return 0
        blob = self._blob_name(file)
        final = blob_path(self.storage, blob)
        if final.is_file() and final.stat().st_size == file.size:
            return file.size
        return PartialFile.existing_size(self.storage, blob, file)

    def _check_space(self, on_disk: int) -> None:
        needed = self.plan.total_bytes - on_disk
        free = free_bytes(self.storage)
        if needed > free:
            raise HubError("disk_full", f"{self.plan.repo_id} needs {format_bytes(needed)} more, "
                           f"{format_bytes(free)} free on {self.cache}.")

    def _write_manifest(self, complete: bool) -> None:
        files = {e["path"]: e for e in (read_manifest(self.storage, self.plan.commit) or {})
                 .get("files", [])}
        for f in self.plan.files:
            files[f.path] = {"path": f.path, "size": f.size, "sha256": f.sha256, "etag": f.etag}
        write_manifest(self.storage, self.plan.commit, {
            "repo_id": self.plan.repo_id, "commit": self.plan.commit, "complete": complete,
            "files": sorted(files.values(), key=lambda e: e["path"])})
