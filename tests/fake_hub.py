"""A fake Hugging Face Hub on 127.0.0.1 for tests: the calls huggingface_hub and app.hub make.

    GET  /api/models?search=...                       list_models
    GET  /api/models/{repo}[/revision/{rev}]          model_info (?blobs=true: sizes, LFS)
    GET  /api/models/{repo}/tree/{rev}[/{path}]       list_repo_tree
    HEAD /{repo}/resolve/{rev}/{path}                 file metadata (ETag, X-Repo-Commit)
    GET  /{repo}/resolve/{rev}/{path}                 the bytes, honouring Range (206)
    GET  /api/whoami-v2                               whoami: user "tester" for a gated
                                                      repo's token, else 401

ETags are what the Hub gives (they name cache blobs): the sha256 of LFS files (*.safetensors,
*.gguf, anything over 1 MiB), the git blob id of small files. Every request is recorded and
every byte of file content served is counted, so tests can assert on them. Knobs for
failures: a gated repo (`token=`: 401 without a token, 403 with a wrong one), `drop_once`
(close the connection mid-file), `corrupt` (serve wrong bytes of the right length), `stall`
(stop sending mid-file until released) and `rate_bps` (slow mode).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN_SIZE = 1 << 20
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
SEND_CHUNK = 16 * 1024


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    token: str | None = None  # gated: only this bearer token gets in
    meta: dict = field(default_factory=dict)  # downloads, likes, pipeline_tag, tags, ...

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + git_oid(self.files[path]).encode())
        return digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES) or len(self.files[path]) >= LFS_MIN_SIZE

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_oid(data)

    def entry(self, path: str) -> dict:
        """A tree entry; model_info's siblings use the same facts under other names."""
        data = self.files[path]
        item = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        if self.is_lfs(path):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "pointerSize": 134}
        return item


class FakeHub:
    """The server and its knobs. Use as a context manager, or start() / close()."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.search_extras: list[dict] = []  # list_models entries with no files
        self.requests: list[dict] = []
        self.bytes_served: Counter[str] = Counter()  # "org/name/path" -> content bytes sent
        self.rate_bps: float | None = None
        self.corrupt: set[str] = set()  # file paths served with wrong bytes
        self._drops: dict[str, list[int]] = {}
        self._stalls: dict[str, tuple[int, threading.Event]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- set-up -------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | Path, *, token: str | None = None,
                 **meta) -> FakeRepo:
        """Serve `files` (a dict, or every file under a folder) as repo_id."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes()
                     for p in sorted(files.rglob("*")) if p.is_file()}
        repo = FakeRepo(repo_id, dict(files), token, meta)
        self.repos[repo_id] = repo
        return repo

    def drop_once(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next `times` GETs of `path` close the connection after `after_bytes` bytes."""
        self._drops[path] = [after_bytes] * times

    def stall(self, path: str, after_bytes: int) -> threading.Event:
        """The next GET of `path` stops after `after_bytes` until the returned event is set."""
        release = threading.Event()
        self._stalls[path] = (after_bytes, release)
        return release

    def served(self, repo_id: str, path: str) -> int:
        return self.bytes_served[f"{repo_id}/{path}"]

    def file_requests(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith(f"/resolve/{r['rev']}/{path}")]

    # --- server -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def close(self) -> None:
        for _, release in self._stalls.values():
            release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_drop(self, path: str) -> int | None:
        with self._lock:
            left = self._drops.get(path)
            return left.pop() if left else None

    def _take_stall(self, path: str) -> tuple[int, threading.Event] | None:
        with self._lock:
            return self._stalls.pop(path, None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client: expected
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub: clients pool connections
    fake: FakeHub

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # --- routing ------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        record = {"method": self.command, "path": path, "query": query, "rev": None,
                  "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        self.fake.requests.append(record)
        if path == "/api/models":
            return self._json(200, self._search(query))
        if path == "/api/whoami-v2":
            return self._whoami()
        api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if api:
            repo_id, kind, rev, sub = api.groups()
            record["rev"] = rev
            repo = self._repo(repo_id, rev or "main")
            if repo is None:
                return
            if kind == "tree":
                return self._json(200, self._tree(repo, sub or ""))
            return self._json(200, self._info(repo, "blobs" in query))
        if resolve:
            repo_id, rev, file = resolve.groups()
            record["rev"] = rev
            repo = self._repo(repo_id, rev)
            if repo is not None:
                self._file(repo, file, head)
            return
        self._error(404, "Not Found", None)

    def _repo(self, repo_id: str, rev: str) -> FakeRepo | None:
        """The repo, or None once an error has been answered (not found, gated, bad rev)."""
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        if repo.token is not None:
            auth = self.headers.get("Authorization")
            if auth is None:
                self._error(401, f"Access to model {repo_id} is restricted. You must have access "
                            "to it and be authenticated to access it. Please log in.", "GatedRepo")
                return None
            if auth != f"Bearer {repo.token}":
                self._error(403, f"Access to model {repo_id} is restricted and you are not in "
                            "the authorized list.", "GatedRepo")
                return None
        if rev not in ("main", repo.commit):
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return None
        return repo

    # --- answers ------------------------------------------------------------------------
    def _whoami(self) -> None:
        """The token of any gated repo (GATED_TOKEN in the fixtures) is user "tester"."""
        tokens = {f"Bearer {r.token}" for r in self.fake.repos.values() if r.token}
        if self.headers.get("Authorization") not in tokens:
            return self._error(401, "Invalid credentials in Authorization header", None)
        self._json(200, {"name": "tester", "type": "user",
                         "auth": {"type": "access_token", "accessToken": {"role": "read"}}})

    def _info(self, repo: FakeRepo, blobs: bool) -> dict:
        siblings = []
        for path in sorted(repo.files):
            sibling = {"rfilename": path}
            if blobs:
                entry = repo.entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"],
                                      "pointerSize": 134}
            siblings.append(sibling)
        info = {**_summary(repo), "sha": repo.commit, "siblings": siblings,
                "lastModified": "2025-01-01T00:00:00.000Z"}
        params = _safetensors_parameters(repo)
        if params:
            info["safetensors"] = params
        return info

    def _tree(self, repo: FakeRepo, sub: str) -> list[dict]:
        prefix = f"{sub.rstrip('/')}/" if sub else ""
        return [repo.entry(p) for p in sorted(repo.files) if p.startswith(prefix)]

    def _search(self, query: dict) -> list[dict]:
        text = query.get("search", [""])[0].lower()
        entries = [_summary(r) for r in self.fake.repos.values()] + self.fake.search_extras
        found = [e for e in entries if text in e["id"].lower()]
        sort = query.get("sort", ["downloads"])[0]
        found.sort(key=lambda e: e.get(sort if sort in ("likes", "downloads") else "downloads", 0),
                   reverse=True)
        limit = int(query.get("limit", [len(found)])[0])
        return found[:limit]

    def _file(self, repo: FakeRepo, path: str, head: bool) -> None:
        if path not in repo.files:
            return self._error(404, "Entry not found", "EntryNotFound")
        data = repo.files[path]
        if path in self.fake.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        start, end = 0, len(data)
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", "") or "")
        if match and not head:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            if start >= len(data):
                return self._error(416, "Range Not Satisfiable", None)
        headers = {"ETag": f'"{repo.etag(path)}"', "X-Repo-Commit": repo.commit,
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "Content-Length": str(end - start)}
        if repo.is_lfs(path):
            headers.update({"X-Linked-Etag": headers["ETag"], "X-Linked-Size": str(len(data))})
        status = 206 if match and not head else 200
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self._send_body(f"{repo.repo_id}/{path}", path, data[start:end])

    def _send_body(self, key: str, path: str, body: bytes) -> None:
        drop_after = self.fake._take_drop(path)
        stall = self.fake._take_stall(path)
        sent, began = 0, time.monotonic()
        while sent < len(body):
            if stall and sent >= stall[0]:
                stall[1].wait(30)
                stall = None
            step = SEND_CHUNK if stall is None else min(SEND_CHUNK, max(1, stall[0] - sent))
            if drop_after is not None:
                step = min(step, drop_after - sent)
                if step <= 0:
                    self._drop()
                    return
            piece = body[sent:sent + step]
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except OSError:  # the client went away (a cancel, a kill)
                return
            sent += len(piece)
            with self.fake._lock:
                self.fake.bytes_served[key] += len(piece)
            self._throttle(sent, began)

    def _throttle(self, sent: int, began: float) -> None:
        rate = self.fake.rate_bps
        if rate:
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)

    def _drop(self) -> None:
        import socket

        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", message)
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _summary(repo: FakeRepo) -> dict:
    """What list_models gives for a repo (model_info adds siblings and more)."""
    meta = {"downloads": 0, "likes": 0, "pipeline_tag": "text-generation",
            "library_name": "transformers", "tags": ["text-generation"], **repo.meta}
    return {"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "private": False, "gated": "manual" if repo.token else False,
            "createdAt": "2025-01-01T00:00:00.000Z", **meta}


def _safetensors_parameters(repo: FakeRepo) -> dict | None:
    """{"parameters": {dtype: n}, "total": n}, read from the files' headers as the Hub does."""
    counts: Counter[str] = Counter()
    for path, data in repo.files.items():
        if path.endswith(".safetensors") and len(data) >= 8:
            (length,) = struct.unpack("<Q", data[:8])
            for name, tensor in json.loads(data[8:8 + length]).items():
                if name != "__metadata__":
                    n = 1
                    for dim in tensor["shape"]:
                        n *= dim
                    counts[tensor["dtype"]] += n
    return {"parameters": dict(counts), "total": sum(counts.values())} if counts else None
