"""The download queue survives a restart, a torn write and an unreadable file."""

from __future__ import annotations

import json

from app.hub.queue_store import DownloadQueue, Job


def test_jobs_survive_a_reload(tmp_path):
    path = tmp_path / "downloads.json"
    queue = DownloadQueue(path)
    queue.add("org/a")
    queue.add("org/b", revision="v1", gguf_file="b.Q4_K_M.gguf")
    queue.update("org/a", state="done", done=10, total=10)
    queue.update("org/b", state="failed", done=3, total=9, error="org/b is gated: ...")
    queue.add("org/c")
    queue.remove("org/c")
    again = DownloadQueue(path).jobs()
    assert again == [Job("org/a", state="done", done=10, total=10),
                     Job("org/b", "v1", "b.Q4_K_M.gguf", "failed", 3, 9, "org/b is gated: ...")]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_running_job_comes_back_paused(tmp_path):
    queue = DownloadQueue(tmp_path / "q.json")
    queue.add("org/a")
    queue.update("org/a", state="downloading", done=5, total=9)
    queue.add("org/b")  # queued: still queued after the restart
    assert [(j.state, j.done) for j in DownloadQueue(tmp_path / "q.json").jobs()] == [
        ("paused", 5), ("queued", 0)]


def test_an_unreadable_file_is_kept_aside(tmp_path):
    path = tmp_path / "q.json"
    path.write_text("{torn")
    assert DownloadQueue(path).jobs() == []
    assert (tmp_path / "q.broken.json").read_text() == "{torn"
    DownloadQueue(path).add("org/a")
    assert json.loads(path.read_text())["jobs"][0]["repo_id"] == "org/a"
