"""Hub search and a chosen model's details, as the model manager shows them: plain values
(ui.model_types) built in a worker thread from huggingface_hub's answers. No Qt objects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from app.hub import net
from app.hub.errors import HubError, error_for_status
from app.hub.local_models import gguf_support_status, support_status
from app.hub.plan import DownloadPlan
from engine import fit_estimate
from ui.model_types import ChosenModel, FileRow, SearchRow

SEARCH_LIMIT = 50
EXPAND = ["safetensors", "gguf", "config", "tags", "gated", "downloads", "likes",
          "trendingScore", "cardData"]  # fmt: skip
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1,
                           "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I64": 8}  # fmt: skip
# Bits per weight of llama.cpp's quantisations, to guess parameters from a GGUF's size.
GGUF_BITS = {"Q2_K": 2.6, "Q3_K_S": 3.5, "Q3_K_M": 3.9, "Q3_K_L": 4.3, "Q4_0": 4.5,
             "Q4_1": 5.0, "Q4_K_S": 4.6, "Q4_K_M": 4.85, "Q5_0": 5.5, "Q5_1": 6.0,
             "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.56, "Q8_0": 8.5, "F16": 16.0,
             "BF16": 16.0, "F32": 32.0}  # fmt: skip
GGUF_NOTE = (" pagedesk dequantises a GGUF file when it loads it, so a smaller quantisation "
             "saves disk, not memory.")  # fmt: skip
Memory = tuple[int, str]  # (free bytes, device name), from fit_estimate.free_memory


def hub_search(text: str, sort: str, fmt: str, token: str | bool | None = None) -> list[Any]:
    """HfApi.list_models for text-generation models: ModelInfo objects, best first."""
    from huggingface_hub import HfApi

    net.refuse_if_offline()
    api = HfApi(endpoint=net.endpoint())
    try:
        return list(api.list_models(search=text or None, pipeline_tag="text-generation",
                                    sort=sort or "downloads", filter=fmt or None,
                                    limit=SEARCH_LIMIT, expand=EXPAND, token=token))  # fmt: skip
    except Exception as exc:
        raise as_hub_error(exc, "the model search") from exc


def as_hub_error(exc: BaseException, what: str) -> BaseException:
    """A HubError with one sentence for anything the Hub or the network raised."""
    if isinstance(exc, HubError):
        return exc
    return net.hub_error(exc, what) or exc


# ---------------------------------------------------------------- search rows
def search_rows(infos: Iterable[Any], memory: Memory) -> list[SearchRow]:
    return [search_row(info, memory) for info in infos]


def search_row(info: Any, memory: Memory) -> SearchRow:
    tags = list(info.tags or [])
    params = _parameters(info)
    supported, why_not = _support_from_listing(info, tags)
    level, sentence = None, ""
    if params:
        free, device = memory
        dtype_bytes = fit_estimate.engine_dtype_bytes(device)
        weights = fit_estimate.weights_bytes(num_parameters=params, dtype_bytes=dtype_bytes)
        config = info.config or {}
        estimate = fit_estimate.estimate_fit(weights, config, fit_estimate.default_context(config),
                                             free, device, dtype_bytes=dtype_bytes)  # fmt: skip
        level, sentence = estimate.level, estimate.sentence[:1].upper() + estimate.sentence[1:]
    return SearchRow(
        repo_id=info.id, parameters=params, size_bytes=_safetensors_bytes(info),
        license=_license(info, tags), gated=bool(info.gated), downloads=info.downloads or 0,
        likes=info.likes or 0, supported=supported, why_not=why_not, fit_level=level,
        fit_sentence=sentence,
    )  # fmt: skip


def _parameters(info: Any) -> int | None:
    """The Hub's count (safetensors or GGUF metadata), else a size in the name ("-7B")."""
    if info.safetensors is not None and info.safetensors.total:
        return int(info.safetensors.total)
    if info.gguf and info.gguf.get("total"):
        return int(info.gguf["total"])
    match = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])", info.id.split("/")[-1])
    return int(float(match.group(1)) * 1e9) if match else None


def _safetensors_bytes(info: Any) -> int | None:
    if info.safetensors is None:
        return None
    return sum(n * SAFETENSORS_DTYPE_BYTES.get(dtype, 2)
               for dtype, n in info.safetensors.parameters.items())  # fmt: skip


def _license(info: Any, tags: list[str]) -> str:
    for tag in tags:
        if tag.startswith("license:"):
            return tag.split(":", 1)[1]
    card = getattr(info, "card_data", None)
    return str(getattr(card, "license", "") or "") if card else ""


def _support_from_listing(info: Any, tags: list[str]) -> tuple[bool | None, str]:
    """From the config's architectures when the Hub gives them, else from the tags."""
    if info.config and (info.config.get("architectures") or info.config.get("model_type")):
        return support_status(info.config)
    if info.gguf and info.gguf.get("architecture"):
        return gguf_support_status(info.gguf["architecture"])
    if not tags:
        return None, "The Hub lists no architecture: choose the model to read its config."
    if "gguf" in tags and "safetensors" not in tags:
        from engine.gguf_loader import SUPPORTED_GGUF_ARCHITECTURES

        arch = next((t for t in tags if t in SUPPORTED_GGUF_ARCHITECTURES), None)
        return gguf_support_status(arch)
    # A tag that is a transformers model_type: the engine's registry judges it (native
    # family, generic path, or a refusal with its reason).
    model_type = next((t for t in tags if _is_model_type(t)), None)
    if model_type:
        return support_status({"model_type": model_type})
    return False, "Its Hub tags name no model type transformers knows."


def _is_model_type(tag: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return tag in CONFIG_MAPPING_NAMES


# ---------------------------------------------------------------- a chosen model
def fetch_config(plan: DownloadPlan, token: str | bool | None = None) -> dict | None:
    """The repo's config.json, read over HTTP into memory: not into the cache, which would
    then list a model that was never downloaded."""
    from huggingface_hub import hf_hub_url

    if not any(f.path == "config.json" for f in plan.files):
        return None
    url = hf_hub_url(plan.repo_id, "config.json", revision=plan.commit, endpoint=net.endpoint())
    try:
        response = net.http.get(url, headers=net.auth_headers(token), follow_redirects=True,
                                timeout=15)  # fmt: skip
    except Exception as exc:
        raise as_hub_error(exc, plan.repo_id) from exc
    if response.status_code >= 400:
        raise error_for_status(response.status_code, plan.repo_id, net.endpoint(),
                               error_code=response.headers.get("X-Error-Code"), path="config.json")
    try:
        return response.json()
    except ValueError:
        return None  # a broken config.json: the load will say so; no estimate here


def chosen_model(plan: DownloadPlan, config: dict | None, memory: Memory,
                 listed: SearchRow | None = None) -> ChosenModel:  # fmt: skip
    gguf = next((f for f in plan.files if f.path.endswith(".gguf")), None)
    if config:
        supported, why_not = support_status(config)
    elif listed is not None:
        supported, why_not = listed.supported, listed.why_not
    else:
        supported, why_not = None, ""
    level, sentence = _chosen_fit(plan, config, memory, listed, gguf)
    return ChosenModel(
        repo_id=plan.repo_id, commit=plan.commit,
        files=tuple(FileRow(f.path, f.size) for f in plan.files), total_bytes=plan.total_bytes,
        gguf_files=tuple(FileRow(f.path, f.size) for f in plan.gguf_files),
        gguf_choice=gguf.path if gguf else None, fit_level=level, fit_sentence=sentence,
        supported=supported, why_not=why_not,
    )  # fmt: skip


def _chosen_fit(plan, config, memory, listed, gguf) -> tuple[str | None, str]:
    free, device = memory
    dtype_bytes = fit_estimate.engine_dtype_bytes(device)
    params = _chosen_parameters(plan, config, listed, gguf)
    if not params:
        return None, "The model's size is not known, so no fit estimate."
    weights = fit_estimate.weights_bytes(num_parameters=params, dtype_bytes=dtype_bytes)
    estimate = fit_estimate.estimate_fit(weights, config or {},
                                         fit_estimate.default_context(config or {}), free,
                                         device, dtype_bytes=dtype_bytes)  # fmt: skip
    sentence = estimate.sentence[:1].upper() + estimate.sentence[1:]
    return estimate.level, sentence + (GGUF_NOTE if gguf else "")


def _chosen_parameters(plan, config, listed, gguf) -> int | None:
    if config and config.get("num_hidden_layers") and config.get("hidden_size"):
        return fit_estimate.parameter_count(config)
    if listed is not None and listed.parameters:
        return listed.parameters
    if gguf is not None:
        return gguf_parameters(gguf.path, gguf.size)
    return None


def gguf_parameters(name: str, size: int) -> int | None:
    """Parameters of a GGUF file guessed from its size and the quantisation in its name."""
    for quant in sorted(GGUF_BITS, key=len, reverse=True):
        if re.search(rf"(^|[^A-Za-z0-9]){quant}([^A-Za-z0-9]|$)", name, re.IGNORECASE):
            return int(size * 8 / GGUF_BITS[quant])
    return None
