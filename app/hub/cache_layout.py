"""The standard Hugging Face cache layout, written by us the way hf_hub_download writes it.

    <cache>/models--org--name/blobs/<sha256 or git oid>       the bytes, named by content
    <cache>/models--org--name/snapshots/<commit>/<path>       relative symlinks to the blobs
    <cache>/models--org--name/refs/<revision>                 the commit a branch points at
    <cache>/.locks/models--org--name/<blob>.lock              huggingface_hub's own lock files

so transformers, vLLM, `snapshot_download(local_files_only=True)` and `scan_cache_dir` see
our downloads as their own. Ours alone: `blobs/<blob>.pagedesk-partial` (+ `.json` sidecar),
bytes kept across processes for a resume, and `.pagedesk/<commit>.json`, the manifest that
says which files a complete download holds (the scanner ignores both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

PARTIAL_SUFFIX = ".pagedesk-partial"
MANIFEST_DIR = ".pagedesk"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """cache_dir, else $HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default,
    read now (not at huggingface_hub's import) so a caller may point them elsewhere."""
    from huggingface_hub import constants

    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def repo_folder(repo_id: str) -> str:
    try:
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # not public in every version: the documented naming rule
        return "models--" + repo_id.replace("/", "--")
    return repo_folder_name(repo_id=repo_id, repo_type="model")


def storage_dir(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return hub_cache_dir(cache_dir) / repo_folder(repo_id)


def lock_path(cache: Path, repo_id: str, blob: str) -> Path:
    return cache / ".locks" / repo_folder(repo_id) / f"{blob}.lock"


def blob_path(storage: Path, blob: str) -> Path:
    return storage / "blobs" / blob


def partial_path(storage: Path, blob: str) -> Path:
    return storage / "blobs" / f"{blob}{PARTIAL_SUFFIX}"


def link_snapshot(storage: Path, commit: str, rel_path: str, blob: str) -> Path:
    """snapshots/<commit>/<rel_path> -> ../../blobs/<blob> (relative, as huggingface_hub does;
    a copy where the file system has no symlinks)."""
    pointer = storage / "snapshots" / commit / rel_path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = blob_path(storage, blob)
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == target.resolve():
            return pointer
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(target, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(target, pointer)
    return pointer


def write_ref(storage: Path, revision: str, commit: str) -> None:
    """refs/<revision> = commit, unless the revision is the commit itself (as the Hub lib)."""
    if revision == commit:
        return
    write_atomic(storage / "refs" / revision, commit)


def resolve_commit(storage: Path, revision: str) -> str | None:
    if _COMMIT.match(revision):
        return revision
    ref = storage / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def write_manifest(storage: Path, commit: str, record: dict) -> None:
    write_atomic(storage / MANIFEST_DIR / f"{commit}.json", json.dumps(record, indent=1))


def read_manifest(storage: Path, commit: str) -> dict | None:
    try:
        return json.loads((storage / MANIFEST_DIR / f"{commit}.json").read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write text so that a reader (or a crash) sees the old content or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def downloaded_snapshot(repo_id: str, revision: str = "main",
                        cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The snapshot folder of a complete, verified download of repo_id@revision, else None.

    Complete means: our manifest for the commit is marked complete and every file it lists
    is linked to a blob of the listed size. A snapshot that another tool downloaded (no
    manifest) counts when every link resolves and it holds a model (config.json or .gguf).
    """
    storage = storage_dir(repo_id, cache_dir)
    commit = resolve_commit(storage, revision)
    snapshot = storage / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        return None
    manifest = read_manifest(storage, commit)
    if manifest is None:
        return snapshot if _foreign_snapshot_ok(snapshot) else None
    if not manifest.get("complete"):
        return None
    for entry in manifest["files"]:
        file = snapshot / entry["path"]
        if not file.is_file() or file.stat().st_size != entry["size"]:
            return None
    return snapshot


def _foreign_snapshot_ok(snapshot: Path) -> bool:
    files = [p for p in snapshot.rglob("*") if not p.is_dir()]
    if any(not p.exists() for p in files):  # a broken symlink: its blob is gone
        return False
    return any(p.name == "config.json" or p.suffix == ".gguf" for p in files)


def remove_leftovers(repo_id: str, cache_dir: str | os.PathLike | None = None) -> int:
    """Delete what only pagedesk writes for repo_id (partial bytes, manifests), and the repo
    folder itself once no snapshot is left in it; returns the bytes freed."""
    storage = storage_dir(repo_id, cache_dir)
    if not storage.is_dir():
        return 0
    snapshots = storage / "snapshots"
    if not snapshots.is_dir() or not any(snapshots.iterdir()):
        freed = _tree_size(storage)
        shutil.rmtree(storage, ignore_errors=True)
        return freed
    freed = 0
    for path in [*(storage / "blobs").glob(f"*{PARTIAL_SUFFIX}*"), storage / MANIFEST_DIR]:
        freed += _tree_size(path)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return freed


def _tree_size(path: Path) -> int:
    if path.is_file() and not path.is_symlink():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
