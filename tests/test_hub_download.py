"""app.hub against a fake Hub: downloads land in the HF cache, resume, verify and fail clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.hub import Downloader, HubError, downloaded_snapshot, plan_download
from app.hub import downloader as downloader_module
from app.hub.cache_layout import hub_cache_dir, partial_path, storage_dir
from app.hub.plan import RemoteFile, select_files
from hub_testing import GATED_TOKEN, TINY, WEIGHTS, fake_hub, hf_home, sha256_of  # noqa: F401
from hub_testing import tiny_gguf_file, tiny_model_dir  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent


def download(repo_id: str = TINY, **kwargs) -> tuple[Path, Downloader, list]:
    """Plan and run a download; returns (snapshot, downloader, progress records)."""
    token = kwargs.pop("token", None)
    seen: list = []
    loader = Downloader(plan_download(repo_id, token=token, gguf_file=kwargs.pop("gguf", None)),
                        token=token, **{"backoff_s": 0.05, **kwargs})
    return loader.run(on_progress=seen.append), loader, seen


def weights_blob(hub, repo_id: str = TINY) -> Path:
    return storage_dir(repo_id) / "blobs" / hub.repos[repo_id].etag(WEIGHTS)


def test_download_lands_in_the_hf_cache_and_loads_offline(fake_hub, tiny_model_dir, monkeypatch):
    from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache

    snapshot, loader, seen = download()
    assert snapshot.name == fake_hub.repos[TINY].commit
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    assert (snapshot / WEIGHTS).is_symlink() and not os.path.isabs(os.readlink(snapshot / WEIGHTS))
    assert loader.bytes_fetched() == loader.plan.total_bytes
    assert seen[-1].state == "done" and seen[-1].done == seen[-1].total
    scan = scan_cache_dir(hub_cache_dir())  # huggingface_hub binds its default at import
    assert scan.warnings == [] and [r.repo_id for r in scan.repos] == [TINY]
    assert downloaded_snapshot(TINY) == snapshot
    assert try_to_load_from_cache(TINY, "config.json") == str(snapshot / "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(snapshot_download(TINY, local_files_only=True)) == snapshot
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download()[1].bytes_fetched() == 0  # all there already: nothing fetched again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert generate(TINY) == generate(str(tiny_model_dir))  # by repo id, offline


def generate(model: str) -> list[int]:
    from engine import LLM, SamplingParams

    llm = LLM(model=model, device="cpu", dtype="float32")
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    return out[0].outputs[0].token_ids


def test_blobs_are_the_ones_huggingface_hub_writes(fake_hub, tmp_path):
    from huggingface_hub import snapshot_download

    ours, _, _ = download()
    theirs = Path(snapshot_download(TINY, cache_dir=tmp_path / "theirs", endpoint=fake_hub.url))
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for path in ours.iterdir():
        assert os.readlink(path) == os.readlink(theirs / path.name)


def test_plan_takes_config_tokenizer_and_safetensors_never_pickle(fake_hub, tiny_model_dir):
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}
    fake_hub.add_repo("org/mixed", {**files, "pytorch_model.bin": b"pickle", "README.md": b"#",
                                    "onnx/model.onnx": b"onnx"})
    plan = plan_download("org/mixed")
    assert {f.path for f in plan.files} == set(files)
    weights = next(f for f in plan.files if f.path == WEIGHTS)
    assert weights.sha256 == fake_hub.repos["org/mixed"].etag(WEIGHTS) == weights.etag
    assert plan.total_bytes == sum(len(b) for b in files.values()) and plan.gguf_files == ()


def test_gguf_plan_picks_q4_k_m_or_the_file_named():
    remote = [RemoteFile(name, size, "0" * 64) for name, size in [
        ("m.Q8_0.gguf", 80), ("m.Q4_K_M.gguf", 45), ("m.Q2_K.gguf", 20), ("config.json", 1),
        ("m-f16.gguf", 160)]]  # fmt: skip
    assert [f.path for f in select_files("o/m", remote)] == ["config.json", "m.Q4_K_M.gguf"]
    assert select_files("o/m", remote, "m.Q8_0.gguf")[-1].path == "m.Q8_0.gguf"
    with pytest.raises(HubError, match="no GGUF file 'nope.gguf'") as err:
        select_files("o/m", remote, "nope.gguf")
    assert err.value.kind == "not_found"
    with pytest.raises(HubError, match="never loads pickle") as err:
        select_files("o/m", [RemoteFile("pytorch_model.bin", 9, "0" * 64)])


def test_gguf_repo_downloads_its_file_and_loads_offline(fake_hub, tiny_gguf_file, monkeypatch):
    snapshot, loader, _ = download("org/tiny-gguf")
    assert [f.path for f in loader.plan.gguf_files] == [tiny_gguf_file.name]
    assert sha256_of(snapshot / tiny_gguf_file.name) == sha256_of(tiny_gguf_file)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from engine.model_loader import resolve_model

    assert resolve_model("org/tiny-gguf")[1] == snapshot / tiny_gguf_file.name


def test_dropped_connection_resumes_byte_identical(fake_hub, tiny_model_dir):
    fake_hub.drop_once(WEIGHTS, after_bytes=300_000, times=2)
    snapshot, loader, seen = download()
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    ranges = [r["range"] for r in fake_hub.file_requests(WEIGHTS) if r["method"] == "GET"]
    assert ranges == [None, "bytes=300000-", "bytes=600000-"]
    size = (tiny_model_dir / WEIGHTS).stat().st_size
    assert fake_hub.served(TINY, WEIGHTS) == size  # nothing fetched twice
    assert [p for p in seen if p.state == "retrying"][0].message.startswith(WEIGHTS)


def test_sigkill_mid_file_then_the_next_run_continues(fake_hub, tiny_model_dir):
    size = (tiny_model_dir / WEIGHTS).stat().st_size
    fake_hub.rate_bps = 250_000  # ~6 s for the weights: time to kill it mid-file
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD], cwd=REPO_ROOT,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    partial = partial_path(storage_dir(TINY), fake_hub.repos[TINY].etag(WEIGHTS))
    try:
        wait_until(lambda: partial.exists() and partial.stat().st_size > 300_000, timeout=30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    kept = partial.stat().st_size
    assert 0 < kept < size
    fake_hub.rate_bps = None
    snapshot, loader, _ = download()
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    assert loader.bytes_fetched() < loader.plan.total_bytes
    assert fake_hub.file_requests(WEIGHTS)[-1]["range"] == f"bytes={kept}-"
    assert not partial.exists()


KILLED_CHILD = """
from app.hub import Downloader, plan_download
Downloader(plan_download("org/tiny")).run()
raise SystemExit("finished before it was killed")
"""


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_cancel_keeps_the_bytes_and_resume_continues(fake_hub, tiny_model_dir):
    fake_hub.rate_bps = 1_000_000
    stop, seen = threading.Event(), []

    def on_progress(p):
        seen.append(p)
        if p.file == WEIGHTS and p.file_done > 400_000:
            stop.set()

    loader = Downloader(plan_download(TINY))
    with pytest.raises(HubError, match="cancelled") as err:
        loader.run(on_progress=on_progress, stop=stop)
    assert err.value.kind == "cancelled" and seen[-1].state == "cancelled"
    assert downloaded_snapshot(TINY) is None
    from huggingface_hub import scan_cache_dir

    assert scan_cache_dir(hub_cache_dir()).warnings == []  # a half-done download is no corrupt repo
    fake_hub.rate_bps = None
    snapshot, again, _ = download()
    assert again.bytes_fetched() <= loader.plan.total_bytes - 400_000
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    assert downloaded_snapshot(TINY) == snapshot


def test_speed_falls_to_zero_in_a_stall(fake_hub):
    release = fake_hub.stall(WEIGHTS, after_bytes=200_000)
    threading.Timer(2.8, release.set).start()
    seen: list = []
    Downloader(plan_download(TINY)).run(on_progress=lambda p: seen.append((time.monotonic(), p)))
    stalled = [p for _, p in seen if p.file == WEIGHTS and p.file_done == 200_000
               and p.state == "downloading"]
    assert len(stalled) >= 8  # reports kept coming while no byte arrived
    assert stalled[0].speed_bps > 0 and stalled[0].eta_s > 0  # the burst before the stall
    assert stalled[-1].speed_bps == 0 and stalled[-1].eta_s is None  # not frozen
    assert seen[-1][1].state == "done"
    same_state = [b - a for (a, p), (b, q) in zip(seen, seen[1:]) if p.state == q.state]
    assert min(same_state) > 0.09  # at most ~10 reports a second between state changes


def test_stop_is_honoured_at_once_in_a_stall(fake_hub):
    release = fake_hub.stall(WEIGHTS, after_bytes=200_000)
    stop, stalled_at = threading.Event(), []

    def on_progress(p):
        if p.file_done == 200_000 and not stalled_at:
            stalled_at.append(time.monotonic())
            threading.Timer(0.3, stop.set).start()

    with pytest.raises(HubError, match="cancelled"):
        Downloader(plan_download(TINY)).run(on_progress=on_progress, stop=stop)
    assert time.monotonic() - stalled_at[0] < 1.5  # not the 30 s read timeout
    release.set()


@pytest.mark.parametrize("repo_id, token, kind, words", [
    ("org/missing", None, "not_found", "org/missing was not found"),
    ("org/gated", None, "unauthorized", "huggingface-cli login"),
    ("org/gated", "hf_wrong", "gated", "accept its licence at http://127.0.0.1"),
])  # fmt: skip
def test_hub_errors_have_their_kind_and_sentence(fake_hub, repo_id, token, kind, words):
    with pytest.raises(HubError) as err:
        plan_download(repo_id, token=token)
    assert err.value.kind == kind and words in str(err.value)
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")  # one sentence


def test_gated_repo_downloads_with_the_right_token(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GATED_TOKEN)  # huggingface_hub's own token source
    snapshot, _, _ = download("org/gated")
    assert (snapshot / WEIGHTS).is_file()
    assert {r["auth"] for r in fake_hub.requests} == {f"Bearer {GATED_TOKEN}"}


def test_file_gated_mid_download_and_missing_revision(fake_hub, monkeypatch):
    with pytest.raises(HubError, match="no revision 'v9'") as err:
        plan_download(TINY, revision="v9")
    assert err.value.kind == "not_found"
    plan = plan_download(TINY)
    fake_hub.repos[TINY].token = GATED_TOKEN  # the repo became gated after the plan
    with pytest.raises(HubError) as err:
        Downloader(plan).run()
    assert err.value.kind == "unauthorized"


def test_offline_when_the_hub_cannot_be_reached(hf_home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    with pytest.raises(HubError, match="Cannot reach the Hugging Face Hub") as err:
        plan_download(TINY)
    assert err.value.kind == "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE") as err:
        plan_download(TINY)


def test_connection_lost_mid_download_gives_up_as_offline(fake_hub, monkeypatch):
    plan = plan_download(TINY)
    fake_hub.close()
    seen: list = []
    with pytest.raises(HubError) as err:
        Downloader(plan, max_retries=2, backoff_s=0.01).run(on_progress=seen.append)
    assert err.value.kind == "offline"
    assert [p.state for p in seen].count("retrying") == 2 and seen[-1].state == "failed"


def test_too_little_free_space_is_refused_before_starting(fake_hub, monkeypatch):
    plan = plan_download(TINY)
    usage = downloader_module.shutil.disk_usage(Path.cwd())
    monkeypatch.setattr(downloader_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=100_000))
    with pytest.raises(HubError, match=r"needs 1\.4 MiB more, 97\.7 KiB free on ") as err:
        Downloader(plan).run()
    assert err.value.kind == "disk_full"
    assert not [r for r in fake_hub.requests if "/resolve/" in r["path"]]


def test_disk_full_while_writing_keeps_the_bytes(fake_hub, monkeypatch):
    import errno

    from app.hub import transfer

    real_write = transfer.write_bytes

    def write_bytes(path, data):
        if path.stat().st_size > 500_000 if path.exists() else False:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(transfer, "write_bytes", write_bytes)
    with pytest.raises(HubError, match="is full") as err:
        download()
    assert err.value.kind == "disk_full"
    kept = partial_path(storage_dir(TINY), fake_hub.repos[TINY].etag(WEIGHTS))
    assert kept.stat().st_size > 500_000  # kept for a resume once space is freed


def test_corrupt_bytes_are_removed_and_never_offered(fake_hub, tiny_model_dir):
    fake_hub.corrupt.add(WEIGHTS)
    with pytest.raises(HubError, match="does not match its sha256") as err:
        download()
    assert err.value.kind == "corrupt"
    blobs = storage_dir(TINY) / "blobs"
    assert not weights_blob(fake_hub).exists()
    assert not list(blobs.glob("*.pagedesk-partial*"))
    snapshot = storage_dir(TINY) / "snapshots" / fake_hub.repos[TINY].commit
    assert not (snapshot / WEIGHTS).exists() and downloaded_snapshot(TINY) is None
    fake_hub.corrupt.clear()  # the next try fetches good bytes
    snapshot, _, _ = download()
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)


def test_a_partial_of_another_version_is_not_appended_to(fake_hub, tiny_model_dir):
    plan = plan_download(TINY)
    partial = partial_path(storage_dir(TINY), fake_hub.repos[TINY].etag(WEIGHTS))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 1000)  # no sidecar: whose bytes these are is unknown
    snapshot = Downloader(plan).run()
    assert sha256_of(snapshot / WEIGHTS) == sha256_of(tiny_model_dir / WEIGHTS)
    assert fake_hub.file_requests(WEIGHTS)[0]["range"] is None


def test_leftovers_of_an_unfinished_download_can_be_removed(fake_hub, monkeypatch):
    from app.hub.cache_layout import remove_leftovers

    fake_hub.corrupt.add(WEIGHTS)  # every small file lands, the weights never do
    with pytest.raises(HubError):
        download()
    partial = partial_path(storage_dir(TINY), fake_hub.repos[TINY].etag(WEIGHTS))
    partial.write_bytes(b"x" * 5000)
    assert remove_leftovers(TINY) >= 5000
    assert not partial.exists() and not (storage_dir(TINY) / ".pagedesk").exists()
    assert (storage_dir(TINY) / "snapshots").is_dir()  # the finished files stay
