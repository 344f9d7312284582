"""Pytest fixtures for Hub tests: a running fake Hub and a private Hugging Face home per test.

`fake_hub` serves, on 127.0.0.1:
  org/tiny       a random-weight Llama made by make_random_llama (~1.4 MB of safetensors)
  org/gated      the same files, behind the token GATED_TOKEN
  org/tiny-gguf  one small Q8_0 GGUF of the same model
and a few search-only entries. It points HF_ENDPOINT at itself and HF_HOME / HF_HUB_CACHE at
a folder of the test's own, with no stored token and offline mode off (tests/conftest.py
turns it on for every other test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fake_hub import FakeHub
from model_factory import make_random_llama, write_gguf

GATED_TOKEN = "hf_fake_right_token"
TINY = "org/tiny"
WEIGHTS = "model.safetensors"
SEARCH_EXTRAS = [
    {"id": "bigorg/Llama-Big-70B-Instruct", "downloads": 90_000, "likes": 900,
     "pipeline_tag": "text-generation", "library_name": "transformers", "gated": "manual",
     "tags": ["llama", "safetensors", "text-generation", "license:llama3"]},
    {"id": "someone/Mamba-Odd-1B", "downloads": 500, "likes": 5,
     "pipeline_tag": "text-generation", "library_name": "transformers", "gated": False,
     "tags": ["mamba", "safetensors", "text-generation"]},
    {"id": "someone/Tiny-Chat-GGUF", "downloads": 12_000, "likes": 40,
     "pipeline_tag": "text-generation", "library_name": "gguf", "gated": False,
     "tags": ["gguf", "llama", "text-generation"]},
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_random_llama(tmp_path_factory.mktemp("hub-model") / "tiny")


@pytest.fixture(scope="session")
def tiny_gguf_file(tiny_model_dir, tmp_path_factory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("hub-gguf") / "tiny.Q8_0.gguf")


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """A private HF_HOME (its hub/ the cache) with no token, read by huggingface_hub now."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):  # never the developer's own token
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(home / name.lower()))
    return home


@pytest.fixture
def fake_hub(hf_home, tiny_model_dir, tiny_gguf_file, monkeypatch):
    """A running FakeHub serving TINY, org/gated and org/tiny-gguf (see the module docstring)."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        hub.add_repo(TINY, tiny_model_dir, downloads=1200, likes=30,
                     tags=["llama", "safetensors", "text-generation", "license:apache-2.0"])
        hub.add_repo("org/gated", tiny_model_dir, token=GATED_TOKEN, downloads=800, likes=12)
        hub.add_repo("org/tiny-gguf", {tiny_gguf_file.name: tiny_gguf_file.read_bytes()},
                     library_name="gguf", tags=["gguf", "llama", "text-generation"])
        hub.search_extras.extend(SEARCH_EXTRAS)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        # For code that reads the constants (fixed at import) instead of the variable.
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        yield hub


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
