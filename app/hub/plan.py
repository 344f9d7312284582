"""Which files of a Hub repo pagedesk fetches, with their sizes and hashes: a DownloadPlan.

A safetensors repo: config, generation config, tokenizer files, chat template, and the
*.safetensors weights (+ their index). A GGUF repo (or any repo when a .gguf is named): that
one .gguf, picked by quantisation, plus config and tokenizer files when present. Never
*.bin / *.pt / *.pth: pagedesk loads no pickle. Only top-level files count: subfolders hold
other formats (onnx/, original/) that the engine does not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.hub import net
from app.hub.errors import HubError, not_found

SUPPORT_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "chat_template.json",
})  # fmt: skip
# Preferred quantisations, best first: small enough for most machines, close to full quality.
GGUF_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1",
                   "Q8_0")  # fmt: skip


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit. sha256 is the LFS hash (None for small git files);
    etag names its cache blob (the LFS sha256, or the git blob id)."""

    path: str
    size: int
    sha256: str | None
    etag: str | None = None


@dataclass(frozen=True)
class DownloadPlan:
    """What a download of repo_id@revision (resolved to `commit`) would fetch."""

    repo_id: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]
    gguf_files: tuple[RemoteFile, ...] = ()  # every top-level .gguf (the quantisation picker)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def plan_download(repo_id: str, revision: str = "main", gguf_file: str | None = None,
                  token: str | bool | None = None) -> DownloadPlan:
    """The plan for repo_id@revision, from `HfApi.model_info(files_metadata=True)`.

    Raises HubError: not_found (repo, revision, gguf_file, or no loadable weights),
    unauthorized, gated, offline, http.
    """
    net.refuse_if_offline()
    commit, remote = _remote_files(repo_id, revision, token)
    gguf = tuple(f for f in remote if f.path.endswith(".gguf") and "/" not in f.path)
    files = select_files(repo_id, remote, gguf_file)
    return DownloadPlan(repo_id, revision, commit, files, gguf)


def _remote_files(repo_id: str, revision: str, token: str | bool | None
                  ) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=net.endpoint()).model_info(
            repo_id, revision=revision, files_metadata=True, token=token)
    except Exception as exc:
        error = net.hub_error(exc, repo_id, revision=revision)
        if error is None:
            raise
        raise error from exc
    return info.sha, [_remote_file(s) for s in info.siblings or ()]


def _remote_file(sibling) -> RemoteFile:
    lfs = sibling.lfs
    sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) \
        if lfs else None
    return RemoteFile(path=sibling.rfilename, size=int(sibling.size or 0), sha256=sha256,
                      etag=sha256 or sibling.blob_id)


def select_files(repo_id: str, remote: list[RemoteFile],
                 gguf_file: str | None = None) -> tuple[RemoteFile, ...]:
    """The files to fetch among `remote` (see the module docstring)."""
    top = [f for f in remote if "/" not in f.path]
    support = [f for f in top if f.path in SUPPORT_FILES]
    safetensors = [f for f in top if f.path.endswith(".safetensors")
                   or f.path == "model.safetensors.index.json"]
    ggufs = [f for f in top if f.path.endswith(".gguf")]
    if gguf_file is not None:
        chosen = [f for f in ggufs if f.path == gguf_file]
        if not chosen:
            names = ", ".join(f.path for f in ggufs) or "none"
            raise HubError("not_found", f"{repo_id} has no GGUF file {gguf_file!r} "
                           f"(its GGUF files: {names}).")
        return tuple(support + chosen)
    if any(f.path.endswith(".safetensors") for f in safetensors):
        return tuple(support + safetensors)
    if ggufs:
        return tuple(support + [pick_gguf(ggufs)])
    raise HubError("not_found", f"{repo_id} has no safetensors or GGUF weights "
                   "(pagedesk never loads pickle .bin/.pt files).")


def pick_gguf(ggufs: list[RemoteFile]) -> RemoteFile:
    """The preferred quantisation present (smallest file of it), else the smallest file."""
    for quant in GGUF_PREFERENCE:
        pattern = re.compile(rf"(^|[^A-Za-z0-9]){quant}([^A-Za-z0-9]|$)", re.IGNORECASE)
        matches = [f for f in ggufs if pattern.search(f.path)]
        if matches:
            return min(matches, key=lambda f: f.size)
    return min(ggufs, key=lambda f: f.size)
