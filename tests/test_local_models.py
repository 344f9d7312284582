"""Local models: a Hugging Face cache laid out by hand (blobs, snapshots, refs), the bundled
default, user-added folders and .gguf files; and delete_model freeing a cached repo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from app.hub.local_models import delete_model, list_local_models, runs_as, support_status

SHA = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, model_dir: Path, commit: str | None = None) -> Path:
    """huggingface_hub's layout: content-named blobs, a snapshot of symlinks, refs/main.
    Commits differ per repo, as on the Hub (delete_revisions finds revisions by commit)."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for src in sorted(model_dir.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / src.name)
    return snapshot


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def write_gguf(path: Path, architecture: str, context: int) -> Path:
    """A header-only GGUF (v3): general.architecture, a tokenizer array, context length."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kvs = [
        string("general.architecture") + struct.pack("<I", 8) + string(architecture),
        string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("b"),
        string(f"{architecture}.context_length") + struct.pack("<II", 4, context),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return path


@pytest.fixture
def cache(tmp_path, random_llama) -> Path:
    cache = tmp_path / "hub"
    put_in_cache(cache, "org/tiny-llama", random_llama, SHA)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps(  # an encoder-decoder: neither path runs it
        {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "n_positions": 1024}))
    (gpt2 / "model.safetensors").write_bytes(b"\0" * 100)
    put_in_cache(cache, "org/gpt2-like", gpt2)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copyfile(random_llama / "config.json", partial / "config.json")
    put_in_cache(cache, "org/partial", partial)
    return cache


def by_name(models) -> dict:
    return {m.name: m for m in models}


def test_cached_models_with_size_architecture_context_and_support(cache, random_llama):
    models = by_name(list_local_models(cache_dir=cache))
    config = json.loads((random_llama / "config.json").read_text())
    tiny = models["org/tiny-llama"]
    assert tiny.kind == "hf-cache" and tiny.repo_id == "org/tiny-llama" and tiny.revision == SHA
    assert tiny.size_on_disk == dir_size(random_llama)
    assert tiny.architecture == "LlamaForCausalLM"
    assert tiny.context_length == config["max_position_embeddings"]
    assert tiny.supported and tiny.why_not == ""
    assert tiny.path == cache / "models--org--tiny-llama" / "snapshots" / SHA
    gpt2 = models["org/gpt2-like"]
    assert tiny.runs_as == "native Llama"
    assert not gpt2.supported and gpt2.architecture == "T5ForConditionalGeneration"
    assert "T5ForConditionalGeneration is an encoder-decoder model" in gpt2.why_not
    assert gpt2.runs_as == ""
    partial = models["org/partial"]
    assert not partial.supported and "no safetensors weights" in partial.why_not


def test_bundled_default_comes_first():
    first = list_local_models(cache_dir="/nonexistent/cache")[0]
    assert first.kind == "bundled" and first.name == "SmolLM2-135M-Instruct (bundled)"
    # FACTS.md: Llama architecture, 8192 positions, a 98 MB file
    assert first.architecture == "llama" and first.context_length == 8192
    assert first.supported and first.size_on_disk == first.path.stat().st_size


def test_user_added_folder_and_gguf_files(tmp_path, random_llama):
    qwen = write_gguf(tmp_path / "qwen.Q4_K_M.gguf", "mamba", 32768)  # no GGUF reader for it
    llama = write_gguf(tmp_path / "mine.gguf", "llama", 2048)
    empty = tmp_path / "empty"
    empty.mkdir()
    models = by_name(list_local_models(cache_dir=tmp_path / "none",
                                       extra_paths=[random_llama, qwen, llama, empty]))
    folder = models[random_llama.name]
    assert folder.kind == "folder" and folder.supported and folder.repo_id is None
    assert folder.size_on_disk == dir_size(random_llama)
    q = models["qwen.Q4_K_M.gguf"]
    assert q.kind == "gguf" and q.architecture == "mamba" and q.context_length == 32768
    assert not q.supported and "Unsupported GGUF architecture: mamba" in q.why_not
    assert q.size_on_disk == qwen.stat().st_size
    mine = models["mine.gguf"]
    assert mine.supported and mine.context_length == 2048
    assert not models["empty"].supported and "no config.json" in models["empty"].why_not


def test_support_status_from_config_dicts():
    assert support_status({"architectures": ["MistralForCausalLM"]}) == (True, "")
    assert support_status({"model_type": "qwen2"}) == (True, "")
    assert runs_as({"architectures": ["Gemma3ForCausalLM"]}) == "native Gemma 3"
    assert runs_as({"model_type": "gpt2"}) == "native GPT-2"
    ok, why = support_status({"architectures": ["BartForConditionalGeneration"], "model_type": "bart"})
    assert not ok and why.startswith("Architecture BartForConditionalGeneration is an encoder-decoder")
    assert runs_as({"architectures": ["BartForConditionalGeneration"], "model_type": "bart"}) == ""


def test_delete_model_frees_the_repo(cache, random_llama):
    repo_dir = cache / "models--org--tiny-llama"
    freed = delete_model("org/tiny-llama", cache_dir=cache)
    assert freed == dir_size(random_llama)
    assert not repo_dir.exists()
    left = {r.repo_id for r in scan_cache_dir(cache).repos}
    assert "org/tiny-llama" not in left and left == {"org/gpt2-like", "org/partial"}
    assert "org/tiny-llama" not in by_name(list_local_models(cache_dir=cache))
    with pytest.raises(KeyError, match="not in the Hugging Face cache"):
        delete_model("org/tiny-llama", cache_dir=cache)
