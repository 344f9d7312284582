"""Shared test set-up: headless Qt, a private cache dir, quiet tokenizers."""

from __future__ import annotations

import os

# Qt aborts the whole process without a display unless a platform is named.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest
import torch


@pytest.fixture(scope="session")
def default_loaded():
    """The bundled SmolLM2-135M-Instruct, loaded once (float32, CPU) and shared by engines."""
    from engine.model_loader import load_model

    return load_model(None, dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def make_engine(default_loaded):
    """Build an LLMEngine over the shared default model with any EngineConfig fields."""
    from engine import EngineConfig, LLMEngine

    def build(loaded=None, **fields):
        fields.setdefault("device", "cpu")
        fields.setdefault("dtype", "float32")
        return LLMEngine(EngineConfig(**fields), loaded=loaded or default_loaded)

    return build

