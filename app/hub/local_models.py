"""The models on this machine: the Hugging Face cache, the bundled default, and the folders
or .gguf files the user added; each with its size, architecture, context length and
whether the engine can run it. No Qt: the CLI (`pagedesk models`, `pagedesk rm`) uses it too.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

__all__ = ["LocalModel", "list_local_models", "delete_model", "support_status", "runs_as",
           "gguf_support_status", "gguf_runs_as", "gguf_metadata"]  # fmt: skip

_WEIGHT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class LocalModel:
    name: str
    repo_id: str | None
    path: Path  # what to load: the snapshot or folder, or the .gguf file
    size_on_disk: int
    architecture: str | None
    context_length: int | None
    supported: bool
    why_not: str  # "" when supported
    kind: str  # "hf-cache" | "bundled" | "folder" | "gguf"
    revision: str | None = None
    runs_as: str = ""  # "native Llama", "generic (transformers X)"; "" when it cannot run


def support_status(config: dict) -> tuple[bool, str]:
    """Can the engine run a model with this config.json? Asks the engine's own registry,
    so this answer and a load's refusal never disagree."""
    from engine.models import get_model_class  # imports torch: only when asked

    declared = SimpleNamespace(
        architectures=config.get("architectures"), model_type=config.get("model_type")
    )
    try:
        get_model_class(declared)
    except ValueError as exc:
        return False, str(exc)
    return True, ""


def runs_as(config: dict) -> str:
    """The path the engine would run this config.json on ("native Qwen3", "generic
    (transformers GraniteForCausalLM)"), "" when neither can."""
    from engine.models import model_path_of

    declared = SimpleNamespace(**config)
    declared.architectures = config.get("architectures")
    declared.model_type = config.get("model_type")
    try:
        return model_path_of(declared).label
    except ValueError:
        return ""


def gguf_runs_as(architecture: str | None) -> str:
    """The native family a GGUF of this `general.architecture` converts to, "" if none."""
    from engine.models import model_path_of

    declared = SimpleNamespace(architectures=None, model_type=_GGUF_MODEL_TYPES.get(architecture or ""))
    try:
        return model_path_of(declared).label if declared.model_type else ""
    except ValueError:
        return ""


# llama.cpp's general.architecture -> transformers' model_type, where they differ.
_GGUF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                     "phi3": "phi3", "gpt2": "gpt2", "gemma": "gemma", "gemma2": "gemma2",
                     "gemma3": "gemma3_text"}  # fmt: skip


def gguf_support_status(architecture: str | None) -> tuple[bool, str]:
    """Can the engine's GGUF converter read a file of this `general.architecture`?"""
    from engine.gguf_loader import SUPPORTED_GGUF_ARCHITECTURES

    if architecture in SUPPORTED_GGUF_ARCHITECTURES:
        return True, ""
    return False, (
        f"Unsupported GGUF architecture: {architecture or 'unknown'}. "
        f"Supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}."
    )


def list_local_models(cache_dir: str | Path | None = None,
                      extra_paths: Iterable[str | Path] = ()) -> list[LocalModel]:  # fmt: skip
    """The bundled default first, then the HF cache (sorted by repo id), then the user's."""
    models = _bundled()
    models += _cached(cache_dir)
    for path in extra_paths:
        models += _from_path(Path(path).expanduser())
    return models


def delete_model(repo_id: str, cache_dir: str | Path | None = None) -> int:
    """Delete every cached revision of `repo_id`; returns the bytes freed. Raises KeyError
    when the repo is not in the cache."""
    from huggingface_hub import scan_cache_dir

    from app.hub.cache_layout import hub_cache_dir

    info = scan_cache_dir(hub_cache_dir(cache_dir))  # the env as it is now, not at import
    repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None)
    if repo is None:
        raise KeyError(f"{repo_id} is not in the Hugging Face cache.")
    strategy = info.delete_revisions(*(rev.commit_hash for rev in repo.revisions))
    strategy.execute()
    return strategy.expected_freed_size


# ---------------------------------------------------------------- the three sources
def _bundled() -> list[LocalModel]:
    from engine.model_loader import DEFAULT_MODEL_NAME, ModelNotFoundError, default_gguf_path

    try:
        path = default_gguf_path()
    except ModelNotFoundError:
        return []
    return [_gguf_model(path, f"{DEFAULT_MODEL_NAME} (bundled)", "bundled", None)]


def _cached(cache_dir: str | Path | None) -> list[LocalModel]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from app.hub.cache_layout import hub_cache_dir

    try:
        info = scan_cache_dir(hub_cache_dir(cache_dir))  # the env as it is now
    except CacheNotFound:
        return []
    models: list[LocalModel] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        # The revision "main" points to, else the newest: one row per repo (per GGUF file).
        revision = max(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified))
        found = _snapshot_models(repo.repo_id, revision)
        models += [_unless_verified(m, cache_dir) for m in found]
    return models


def _snapshot_models(repo_id: str, revision) -> list[LocalModel]:
    snapshot = Path(revision.snapshot_path)
    ggufs = sorted(snapshot.glob("*.gguf"))
    if ggufs and not (snapshot / "config.json").is_file():
        return [_gguf_model(path, f"{repo_id} · {path.name}", "hf-cache", repo_id,
                            revision.commit_hash) for path in ggufs]  # fmt: skip
    return [_folder_model(snapshot, repo_id, "hf-cache", repo_id, revision.size_on_disk,
                          revision.commit_hash)]  # fmt: skip


def _unless_verified(model: LocalModel, cache_dir: str | Path | None) -> LocalModel:
    """A download that is not finished, or whose files failed their check, is not offered
    for loading (the downloader's manifest says which files a complete one holds)."""
    from app.hub.cache_layout import downloaded_snapshot

    if not model.supported or downloaded_snapshot(model.repo_id, model.revision, cache_dir):
        return model
    why = f"The download of {model.repo_id} is not complete or not verified: resume it."
    return replace(model, supported=False, why_not=why)


def _from_path(path: Path) -> list[LocalModel]:
    if path.is_file() and path.suffix == ".gguf":
        return [_gguf_model(path, path.name, "gguf", None)]
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return [_gguf_model(p, p.name, "gguf", None) for p in ggufs]
    # Not a model folder: no walk of what may be a whole home directory.
    size = _tree_size(path) if (path / "config.json").is_file() else 0
    return [_folder_model(path, None, "folder", path.name, size)]


# ---------------------------------------------------------------- one model each
def _folder_model(path: Path, repo_id: str | None, kind: str, name: str, size: int,
                  revision: str | None = None) -> LocalModel:  # fmt: skip
    """A Hugging Face directory: what its config.json says, and whether it is complete."""
    config: dict = {}
    try:
        config = json.loads((path / "config.json").read_text())
        supported, why_not = support_status(config)
    except FileNotFoundError:
        supported, why_not = False, f"{path} has no config.json (not a model folder)."
    except (OSError, ValueError) as exc:
        supported, why_not = False, f"{path / 'config.json'} cannot be read: {exc}"
    if supported:
        supported, why_not = _complete(path)
    architectures = config.get("architectures") or [config.get("model_type")]
    return LocalModel(
        name=name, repo_id=repo_id, path=path, size_on_disk=size,
        architecture=architectures[0] if architectures else None,
        context_length=_context_length(config), supported=supported, why_not=why_not,
        kind=kind, revision=revision, runs_as=runs_as(config) if supported else "",
    )  # fmt: skip


def _gguf_model(path: Path, name: str, kind: str, repo_id: str | None,
                revision: str | None = None) -> LocalModel:  # fmt: skip
    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError) as exc:
        why = f"{path.name} is not a readable GGUF file: {exc}"
        return LocalModel(name, repo_id, path, _file_size(path), None, None, False, why, kind,
                          revision)  # fmt: skip
    arch = meta.get("general.architecture")
    context = meta.get(f"{arch}.context_length")
    supported, why_not = gguf_support_status(arch)
    return LocalModel(name, repo_id, path, _file_size(path), arch,
                      int(context) if context else None, supported, why_not, kind,
                      revision, gguf_runs_as(arch) if supported else "")  # fmt: skip


def _complete(path: Path) -> tuple[bool, str]:
    """A supported config is not enough: the weights and tokenizer must be there too (a
    partial download shows as a snapshot with only some files)."""
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()):
        return False, f"{path.name} has no safetensors weights (incomplete download?)."
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        return False, f"{path.name} has no tokenizer files."
    return True, ""


def _context_length(config: dict) -> int | None:
    # GPT-2 says n_positions. A sliding window does not cap the context: the kernels apply it.
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    return int(limit) if limit else None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tree_size(path: Path) -> int:
    return sum(_file_size(p) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- GGUF header
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


# GGUF header keys (after "<arch>.") -> the config.json fields the fit estimate reads
_GGUF_CONFIG_KEYS = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
                     "feed_forward_length": "intermediate_size",
                     "attention.head_count": "num_attention_heads",
                     "attention.head_count_kv": "num_key_value_heads",
                     "context_length": "max_position_embeddings"}  # fmt: skip


def model_config(model: LocalModel) -> dict | None:
    """What the fit estimate needs of a local model: its config.json, or the same fields
    read from a GGUF header (None when neither can be read)."""
    path = Path(model.path)
    try:
        if path.suffix == ".gguf":
            return _gguf_config(path)
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError, struct.error):
        return None


def _gguf_config(path: Path) -> dict:
    meta, tensors = _gguf_header(path)
    arch = meta.get("general.architecture", "llama")
    config = {field: meta[f"{arch}.{key}"] for key, field in _GGUF_CONFIG_KEYS.items()
              if f"{arch}.{key}" in meta}  # fmt: skip
    config["vocab_size"] = len(meta.get("tokenizer.ggml.tokens", ()))
    # No separate output matrix: the head reuses the embedding (it is counted once).
    config["tie_word_embeddings"] = "output.weight" not in tensors
    return config


def _gguf_header(path: Path) -> tuple[dict, set[str]]:
    """Every key-value pair of a GGUF header and the names of its tensors (the tensor data
    itself is not read: ~0.3 s for a 30-layer model's header, mostly its tokenizer)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic number")
        _version, num_tensors, count = struct.unpack("<IQQ", f.read(20))
        meta = {}
        for _ in range(count):
            key = _read_string(f)
            meta[key] = _read_value(f, struct.unpack("<I", f.read(4))[0])
        names = set()
        for _ in range(num_tensors):
            names.add(_read_string(f))
            (dims,) = struct.unpack("<I", f.read(4))
            f.read(8 * dims + 4 + 8)  # the shape, the type and the data offset
    return meta, names


def gguf_metadata(path: Path, wanted: tuple[str, ...] = ("general.architecture",)) -> dict:
    """The GGUF header's key-value pairs, read up to the first `*.context_length` key after
    `wanted` are found (both come before the tokenizer's big arrays in practice), so a
    listing reads kilobytes, not the whole header."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic number")
        _version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        found: dict = {}
        for _ in range(count):
            key = _read_string(f)
            found[key] = _read_value(f, struct.unpack("<I", f.read(4))[0])
            if all(k in found for k in wanted) and key.endswith(".context_length"):
                break
    return found


def _read_string(f) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", errors="replace")


def _read_value(f, kind: int):
    if kind == _STRING:
        return _read_string(f)
    if kind == _ARRAY:
        item_kind, length = struct.unpack("<IQ", f.read(12))
        return [_read_value(f, item_kind) for _ in range(length)]
    if kind not in _SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    fmt = _SCALARS[kind]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
