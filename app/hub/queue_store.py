"""The download queue, kept in a small JSON file so that it survives a restart or a crash.

One job per repo id. Every change is written atomically (a temporary file renamed over the
old one), so a crash mid-write leaves the previous queue, never a torn file. A job that was
running when the app stopped comes back "paused": its bytes are on disk, and resuming it
(a new Downloader run) continues from them.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from app.hub.cache_layout import write_atomic

log = logging.getLogger(__name__)
ACTIVE_STATES = frozenset({"queued", "downloading", "retrying", "verifying"})
_RUNNING_STATES = frozenset({"downloading", "retrying", "verifying"})


@dataclass(frozen=True)
class Job:
    repo_id: str
    revision: str = "main"
    gguf_file: str | None = None
    state: str = "queued"  # a Progress state
    done: int = 0
    total: int = 0
    error: str = ""  # the HubError sentence of a failed job


class DownloadQueue:
    """Jobs in the order added, stored in `path` (a JSON file in the caller's data dir)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # the GUI thread and download workers both update it
        self._jobs: dict[str, Job] = self._load()

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def get(self, repo_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(repo_id)

    def add(self, repo_id: str, revision: str = "main", gguf_file: str | None = None) -> Job:
        """Queue repo_id (again: a finished or failed job of the same repo is replaced)."""
        with self._lock:
            job = Job(repo_id, revision, gguf_file)
            self._jobs[repo_id] = job
            self._save()
            return job

    def update(self, repo_id: str, **changes: object) -> Job:
        """Change fields of repo_id's job (KeyError if it is not queued)."""
        with self._lock:
            job = replace(self._jobs[repo_id], **changes)
            self._jobs[repo_id] = job
            self._save()
            return job

    def remove(self, repo_id: str) -> None:
        with self._lock:
            if self._jobs.pop(repo_id, None) is not None:
                self._save()

    def _save(self) -> None:
        data = {"version": 1, "jobs": [asdict(job) for job in self._jobs.values()]}
        write_atomic(self.path, json.dumps(data, indent=1))

    def _load(self) -> dict[str, Job]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable: keep it aside, start empty
            log.warning("download queue %s unreadable (%s): starting empty", self.path, exc)
            self.path.replace(self.path.with_suffix(".broken.json"))
            return {}
        known = {f.name for f in fields(Job)}
        jobs = [Job(**{k: v for k, v in item.items() if k in known}) for item in data["jobs"]]
        return {job.repo_id: _after_restart(job) for job in jobs}


def _after_restart(job: Job) -> Job:
    return replace(job, state="paused") if job.state in _RUNNING_STATES else job
