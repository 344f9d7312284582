"""GGUF files -> a cached Hugging Face model directory (config.json, tokenizer, safetensors).

Reading a GGUF is the slow part of a start (parsing, dequantising), so it is done once per
file: the result is written as an ordinary Hugging Face directory under the pagedesk cache,
which later starts load in about a second (safetensors are memory-mapped). The directory
appears atomically (written to a temporary sibling, then renamed) and carries a marker
that lists its files and sizes, so a half-written or damaged copy is never used: it is
removed and rebuilt.

Llama files (the default model's family) take a fast path: the metadata and tokenizer are
read with transformers' GGUF reader (`struct` over the file, far faster than
`gguf.GGUFReader`), the tensors dequantised with the `gguf` package. Other families go
through transformers' full GGUF loader (`engine.gguf_generic`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from math import prod
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engine.models import UnsupportedModelError

log = logging.getLogger(__name__)

# Bump when the converted layout or its contents change: old copies are then not reused.
CONVERTER_VERSION = 2
MARKER = "pagedesk-converted.json"
# "llama" (Mistral too) on the fast path below; the others through transformers' reader
# (engine.gguf_generic, whose GENERIC_ARCHITECTURES these are).
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gpt2", "gemma2", "gemma3")
# The converted copy is float32 (exact for dequantised values, and the CPU's compute dtype)
# up to this many parameters; float16 above, so a 7B model's copy is 14 GB, not 28 GB.
FP32_MAX_PARAMS = 2_000_000_000
SHARD_BYTES = 2 * 2**30
_STALE_TMP_SECONDS = 600

# GGUF tensor names (llama.cpp's) -> Hugging Face Llama names.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def cache_root() -> Path:
    """pagedesk's cache: `$PAGEDESK_CACHE_DIR`, else `$XDG_CACHE_HOME/pagedesk`
    (~/.cache/pagedesk); converted models live in its `converted/`."""
    env = os.environ.get("PAGEDESK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "pagedesk"


def converted_dir_for(gguf_path: Path) -> Path:
    """Where the converted copy of `gguf_path` lives; the key changes with path, size and mtime."""
    stat = gguf_path.stat()
    ident = f"{gguf_path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0v{CONVERTER_VERSION}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)
    return cache_root() / "converted" / f"{stem}-{key}"


def convert_gguf(gguf_path: str | Path) -> Path:
    """The converted Hugging Face directory for a GGUF file, converting it first if needed."""
    gguf_path = Path(gguf_path)
    target = converted_dir_for(gguf_path)
    if is_complete(target):
        return target
    if target.exists():
        log.warning("Ignoring an incomplete converted copy at %s; rebuilding it.", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        write_converted(gguf_path, tmp)
        try:
            tmp.rename(target)  # atomic: the directory appears whole or not at all
        except OSError:
            if not is_complete(target):  # not another process's finished copy: a real error
                raise
        seconds = time.perf_counter() - started
        log.info("Converted %s to %s in %.1f s", gguf_path.name, target, seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_superseded(target)
    return target


def discard(directory: Path) -> None:
    """Remove a converted copy (e.g. one that turned out damaged) so the next call rebuilds it."""
    shutil.rmtree(directory, ignore_errors=True)


def is_complete(directory: Path) -> bool:
    """Whether `directory` is a finished conversion: its marker lists every file at its size."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        files = marker["files"]
        return marker.get("version") == CONVERTER_VERSION and bool(files) and all(
            (directory / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_converted(gguf_path: Path, out: Path) -> None:
    """Write config.json, tokenizer files, safetensors weights and the marker into `out`."""
    gguf = _gguf_api()
    metadata, tensor_names = gguf.read_gguf_metadata(str(gguf_path))
    architecture = metadata["general.architecture"]
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"Unsupported GGUF architecture {architecture!r} in {gguf_path.name}. "
            f"Supported GGUF architectures: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}."
        )
    if architecture != "llama":
        from engine import gguf_generic

        gguf_generic.write_converted(gguf_path, out, metadata, tensor_names)
        _write_marker(out, gguf_path)
        return
    config = build_config(metadata, tensor_names)
    tokenizer = build_tokenizer(gguf_path, config.max_position_embeddings)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_weights(gguf_path, config, out)
    _write_marker(out, gguf_path)


def _write_marker(out: Path, gguf_path: Path) -> None:
    """Written last: the list of files and sizes that `is_complete` checks."""
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    marker = {"version": CONVERTER_VERSION, "source": str(gguf_path.resolve()), "files": files}
    (out / MARKER).write_text(json.dumps(marker, indent=1))


def build_config(metadata: dict, tensor_names: tuple[str, ...]):
    """A transformers LlamaConfig from llama.cpp's metadata keys (what transformers' own
    GGUF mapping reads, without its slow full parse)."""
    from transformers import LlamaConfig

    def key(name: str, default=None):
        return metadata.get(f"llama.{name}", default)

    heads = key("attention.head_count")
    vocab = key("vocab_size") or metadata["tokenizer.ggml.tokens"]  # the reader gives its length
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=vocab,
        hidden_size=key("embedding_length"),
        intermediate_size=key("feed_forward_length"),
        num_hidden_layers=key("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=key("attention.head_count_kv", heads),
        head_dim=key("rope.dimension_count") or key("embedding_length") // heads,
        max_position_embeddings=key("context_length"),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon", 1e-5),
        rope_parameters=_rope_parameters(metadata, tensor_names),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
        unk_token_id=metadata.get("tokenizer.ggml.unknown_token_id"),
    )


def _rope_parameters(metadata: dict, tensor_names: tuple[str, ...]) -> dict:
    theta = float(metadata.get("llama.rope.freq_base", 10000.0))
    params = {"rope_type": "default", "rope_theta": theta}
    scaling = metadata.get("llama.rope.scaling.type")
    if scaling == "linear":
        params.update(rope_type="linear", factor=float(metadata["llama.rope.scaling.factor"]))
    elif scaling not in (None, "none"):
        raise UnsupportedModelError(f"GGUF RoPE scaling {scaling!r} is not supported (linear is).")
    if "rope_freqs.weight" in tensor_names:
        # Llama 3.1-style frequency factors; transformers' GGUF loader ignores them too.
        log.warning("Ignoring the GGUF's rope_freqs tensor: no long-context RoPE scaling.")
    return params


def build_tokenizer(gguf_path: Path, max_length: int):
    """The tokenizer the GGUF describes (vocabulary, merges, special tokens, chat template)."""
    from transformers import PreTrainedTokenizerFast

    gguf = _gguf_api()
    architecture, tokenizer_dict, tokenizer_config = gguf.get_gguf_tokenizer(str(gguf_path))
    backend, extra = gguf.convert_gguf_tokenizer(architecture, tokenizer_dict)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, **tokenizer_config, **extra
    )


def write_weights(gguf_path: Path, config, out: Path) -> None:
    """The GGUF's tensors as `model.safetensors` (or shards of ~SHARD_BYTES and an index),
    float32 up to FP32_MAX_PARAMS parameters, float16 above."""
    header = _gguf_api().GgufHeader.from_file(str(gguf_path))
    params = sum(prod(info.shape) for info in header.tensors)
    dtype = np.float32 if params <= FP32_MAX_PARAMS else np.float16
    shard: dict[str, np.ndarray] = {}
    shard_of: dict[str, int] = {}  # tensor name -> shard number, for the index
    count = 0  # shards written so far
    for name, weight in iter_tensors(gguf_path, header, config):
        if shard and sum(a.nbytes for a in shard.values()) >= SHARD_BYTES:
            _save_shard(shard, out, count)  # written as it fills: memory stays bounded
            shard, count = {}, count + 1
        shard[name] = weight.astype(dtype, copy=False)
        shard_of[name] = count
    _save_shard(shard, out, count)
    _name_shards(out, shard_of, count + 1)


def _save_shard(tensors: dict[str, np.ndarray], out: Path, number: int) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(out / f"shard-{number}.tmp"), metadata={"format": "pt"})


def _name_shards(out: Path, shard_of: dict[str, int], count: int) -> None:
    """Rename the shards the Hugging Face way, with an index when there are several."""
    if count == 1:
        (out / "shard-0.tmp").rename(out / "model.safetensors")
        return
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for i, name in enumerate(names):
        (out / f"shard-{i}.tmp").rename(out / name)
    index = {
        "metadata": {"total_size": sum((out / name).stat().st_size for name in names)},
        "weight_map": {tensor: names[i] for tensor, i in shard_of.items()},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def iter_tensors(gguf_path: Path, header, config) -> Iterator[tuple[str, np.ndarray]]:
    """Each tensor, dequantised to float32, under its Hugging Face name, q/k un-permuted.

    numpy (gguf's dequantisers), not torch: torch's two OpenMP threads spin when other
    processes want the CPU, and the same dequantisation then took 13 s instead of 1 s.
    Plain reads per tensor: faulting in a memory map is slower, and memory stays bounded.
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for info in header.tensors:
        name = hf_tensor_name(info.name)
        if name is None:
            log.warning("Skipping GGUF tensor %s (no Hugging Face counterpart).", info.name)
            continue
        offset = header.data_start + info.offset
        raw = np.fromfile(gguf_path, dtype=np.uint8, count=info.nbytes, offset=offset)
        raw = raw.reshape(*info.shape[:-1], -1)
        weight = dequantize(raw, GGMLQuantizationType(info.ggml_type)).reshape(info.shape)
        weight = _unpermute(name, weight.astype(np.float32, copy=False), config)
        yield name, np.ascontiguousarray(weight)


def hf_tensor_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None when unknown."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def _unpermute(name: str, weight: np.ndarray, config) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its RoPE pairs adjacent lanes; HF pairs halves)."""
    if ".q_proj." in name:
        heads = config.num_attention_heads
    elif ".k_proj." in name:
        heads = config.num_key_value_heads
    else:
        return weight
    # llama.cpp wrote rows as (head, half, pair); HF wants (head, pair, half).
    pairs = weight.shape[0] // heads // 2
    return weight.reshape(heads, pairs, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _remove_superseded(target: Path) -> None:
    """Older conversions of the same GGUF path (the file changed since): ~0.5 GB each."""
    source = _marker_source(target)
    stem = target.name.rsplit("-", 1)[0]
    for other in target.parent.glob(f"{stem}-*"):
        if other != target and source is not None and _marker_source(other) == source:
            shutil.rmtree(other, ignore_errors=True)


def _marker_source(directory: Path) -> str | None:
    try:
        return json.loads((directory / MARKER).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _remove_stale_tmp(target: Path) -> None:
    """Temporary directories that a crashed conversion left behind."""
    now = time.time()
    for tmp in target.parent.glob(f".tmp-{target.name}-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _gguf_api() -> SimpleNamespace:
    """transformers' GGUF reader and tokenizer builder (imported on first use)."""
    try:
        from transformers.integrations.gguf import (
            GgufHeader,
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
            load_gguf_state_dict,
            read_gguf_metadata,
        )
    except ImportError as exc:
        raise RuntimeError(
            "Loading GGUF files needs a transformers release with `transformers.integrations.gguf` "
            f"(its fast GGUF reader; 5.24 has it): {exc}"
        ) from exc
    return SimpleNamespace(
        GgufHeader=GgufHeader,
        convert_gguf_tokenizer=convert_gguf_tokenizer,
        get_gguf_tokenizer=get_gguf_tokenizer,
        load_gguf_state_dict=load_gguf_state_dict,
        read_gguf_metadata=read_gguf_metadata,
    )
