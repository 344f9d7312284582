"""The generic path: any decoder-only architecture transformers ships, over the paged KV cache.

Like vLLM's Transformers backend, this runs transformers' own modelling code and plugs
pagedesk's paged attention in through transformers' `AttentionInterface`: every attention
layer of the model calls `paged_attention_forward` (registered as "pagedesk_paged") with its
query, key and value, which stores K/V into the layer's cache blocks and attends through the
block tables with `kernels.unified_attention`.

* The batch is flattened into one sequence (batch 1, T tokens); `position_ids` are the
  engine's positions, so each request's RoPE is its own.
* The paging data (the caches and the step's `AttentionMetadata`) travel as one keyword
  argument of the model's forward (`PAGING_KWARG`), which transformers hands down to every
  attention call: nothing global, two engines in one process do not meet.
* transformers builds no attention mask for an implementation that has no mask function
  (`masking_utils` returns None early "for TGI/vLLM backends"): none is registered for ours,
  so no O(T^2) mask is made.
* Parameters are built on the meta device, buffers (RoPE frequencies, embedding scales) for
  real on the CPU; after `to_empty` the buffers are put back from those CPU copies and the
  tied weights tied again.

Only classes that declare `_supports_attention_backend` (their attention goes through the
interface and they pass `**kwargs` down) are run; `generic_refusal` says why a config cannot be.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

import kernels
from engine.attention import AttentionMetadata
from engine.models.base import copy_checkpoint, raise_if_missing

__all__ = [
    "ATTN_IMPLEMENTATION",
    "PAGING_KWARG",
    "PagedContext",
    "TransformersForCausalLM",
    "generic_refusal",
    "paged_attention_forward",
]

KVCache = tuple[torch.Tensor, torch.Tensor]

ATTN_IMPLEMENTATION = "pagedesk_paged"
PAGING_KWARG = "pagedesk_paging"

# Layer kinds whose K/V fit our cache: one K and one V row per token and KV head.
_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}
# Config fields of architectures whose state is not (only) a per-token K/V cache.
_NON_KV_MARKERS = {
    "kv_lora_rank": "multi-head latent attention, whose cache holds compressed latents",
    "layers_block_type": "state-space (Mamba) layers, which keep a recurrent state",
    "attn_layer_indices": "state-space (Mamba) layers, which keep a recurrent state",
    "hybrid_override_pattern": "state-space (Mamba) layers, which keep a recurrent state",
    "num_kv_shared_layers": "layers that reuse another layer's K/V",
}


def _unsupported(message: str) -> Exception:
    from engine.models import UnsupportedModelError  # here: engine.models imports this module

    return UnsupportedModelError(message)


# ---------------------------------------------------------------------------- refusals
def generic_refusal(config) -> str | None:
    """Why the generic path cannot run `config` (one sentence naming the architecture), or
    None when it can. `config` is a transformers config, a raw config.json dict, or anything
    with `architectures` and `model_type` attributes (e.g. a SimpleNamespace)."""
    fields = _fields_of(config)
    model_type = fields.get("model_type")
    architectures = list(fields.get("architectures") or [])
    subject = f"Architecture {architectures[0]}" if architectures else f"Model type {model_type!r}"
    why = _declared_refusal(subject, model_type, architectures)
    if why:
        return why
    hf_config = _as_config(config, fields)
    if hf_config is None:
        return f"{subject}'s config.json cannot be read by transformers' {model_type} config."
    why = _kind_refusal(subject, model_type, hf_config)
    if why:
        return why
    cls, why = _causal_lm_class(architectures, model_type)
    if cls is None:
        return why
    subject = f"Architecture {cls.__name__}"
    if not getattr(cls, "_supports_attention_backend", False):
        return (
            f"{subject}'s transformers code does not route its attention through "
            "AttentionInterface (_supports_attention_backend is not set), so pagedesk's paged "
            "attention cannot be plugged in."
        )
    return _layout_refusal(subject, hf_config)


def _declared_refusal(subject: str, model_type: str | None, architectures: list[str]) -> str | None:
    """What the config.json's names alone rule out: nothing named, or custom code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not model_type:
        if not architectures:
            return "The model's config.json names neither an architecture nor a model_type."
        return f"{subject} has no model_type in its config.json, so transformers cannot build it."
    if model_type not in CONFIG_MAPPING_NAMES:
        return _custom_code(subject, model_type)
    return None


def _kind_refusal(subject: str, model_type: str, hf_config) -> str | None:
    """Encoder-decoders and bidirectional encoders: not decoder-only text generators."""
    if getattr(hf_config, "is_encoder_decoder", False) or getattr(
        hf_config, "add_cross_attention", False
    ):
        return f"{subject} is an encoder-decoder model; pagedesk runs decoder-only models."
    if _is_encoder_family(model_type) and not getattr(hf_config, "is_decoder", False):
        return (
            f"{subject} is a bidirectional encoder (its config does not set is_decoder), so it "
            "is not a causal language model pagedesk can generate with."
        )
    return None


def _fields_of(config) -> dict:
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "to_dict") and hasattr(config, "model_type"):
        return {"model_type": config.model_type, "architectures": getattr(config, "architectures", None)}
    return dict(vars(config)) if hasattr(config, "__dict__") else {}


def _as_config(config, fields: dict):
    """A transformers config for `config`: itself, or its model_type's class built from the
    raw fields (falling back to that class's defaults), or None if neither builds."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    rest = {k: v for k, v in fields.items() if k != "model_type" and v is not None}
    for kwargs in (rest, {}):
        try:
            return AutoConfig.for_model(fields["model_type"], **kwargs)
        except Exception:  # noqa: BLE001 - any failure of someone else's config code
            continue
    return None


def _is_encoder_family(model_type: str) -> bool:
    """BERT-like families: a masked-LM model type whose causal head is causal only when the
    config says is_decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type == "bert-generation"


def _custom_code(subject: str, model_type: str) -> str:
    if subject.startswith("Architecture"):
        subject = f"{subject} (model_type {model_type!r})"
    return (
        f"{subject} is not part of transformers: it needs the checkpoint's own code "
        "(trust_remote_code), which pagedesk never runs."
    )


@functools.lru_cache(maxsize=1)
def _causal_lm_names() -> dict[str, str]:
    """model_type -> the transformers class name of its causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = {}
    for model_type, value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        names[model_type] = value[0] if isinstance(value, (tuple, list)) else value
    return names


def _causal_lm_class(architectures: list[str], model_type: str) -> tuple[type | None, str]:
    """(the transformers class to build, "") or (None, the reason there is none)."""
    import transformers

    causal_names = set(_causal_lm_names().values())
    for arch in architectures:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and arch in causal_names:
            return cls, ""
    if architectures:
        arch = architectures[0]
        if not isinstance(getattr(transformers, arch, None), type):
            return None, _custom_code(f"Architecture {arch}", model_type)
        return None, (
            f"Architecture {arch} is not a causal language model (transformers does not list "
            "it for text generation), so pagedesk cannot generate with it."
        )
    name = _causal_lm_names().get(model_type)
    cls = getattr(transformers, name, None) if name else None
    if not isinstance(cls, type):
        return None, (
            f"Model type {model_type!r} has no causal language model class in transformers, "
            "so pagedesk cannot generate with it."
        )
    return cls, ""


def _settings_refusal(subject: str, config) -> str | None:
    """The sizes the cache is built from must be one top-level value each."""
    for field in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
        try:
            value = getattr(config, field, None)
        except Exception:  # noqa: BLE001 - transformers refuses one value for all layers
            return (
                f"{subject} sets {field} per layer, but pagedesk's KV cache has the "
                "same shape in every layer."
            )
        if value is None:
            return (
                f"{subject} keeps its text model's settings in a sub-config (as "
                "multimodal models do), which the generic path does not run."
            )
    return None


def _layout_refusal(subject: str, config) -> str | None:
    """Refuse what the paged cache cannot hold or the kernels cannot compute."""
    why = _settings_refusal(subject, config)
    if why:
        return why
    for marker, what in _NON_KV_MARKERS.items():
        if getattr(config, marker, None):
            return f"{subject} has {what}, which pagedesk's paged KV cache does not hold."
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if getattr(config, "multi_query", False) and kv_heads != 1:
        return (
            f"{subject} uses multi-query attention (one K/V head, config multi_query), "
            "but pagedesk sizes its KV cache from num_key_value_heads, which this config lacks."
        )
    other = sorted(set(getattr(config, "layer_types", None) or ()) - _ATTENTION_LAYER_TYPES)
    if other:
        return (
            f"{subject} has {', '.join(map(repr, other))} layers; pagedesk's paged "
            "attention runs only full and sliding-window attention layers."
        )
    experts = next((getattr(config, f) for f in _EXPERT_FIELDS if getattr(config, f, None)), None)
    if experts:
        # transformers merges per-expert checkpoint tensors on load through its internal
        # conversion mapping, which is not a public API; refuse before a 10 GB download loads.
        return (
            f"{subject} is a mixture of {experts} experts, whose per-expert checkpoint tensors "
            "the generic path cannot load yet."
        )
    # (Dynamic NTK is served only up to its original context, where transformers keeps the
    # default frequencies: the loader caps max_model_len there.)
    if "longrope" in _rope_types(config):
        return (
            f"{subject} uses LongRoPE, whose frequencies transformers switches on the "
            "batch's longest sequence, which a shared paged cache cannot follow."
        )
    return None


_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _rope_types(config) -> set[str]:
    """Every rope_type the config names (per layer type too, as Gemma 3 has them)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(params, dict):
        return set()
    tables = [p for p in params.values() if isinstance(p, dict)] or [params]
    return {str(t.get("rope_type", t.get("type", "default"))) for t in tables}


# ---------------------------------------------------------------------------- attention
@dataclass(frozen=True, slots=True)
class PagedContext:
    """What one forward pass's attention layers need: per-layer caches and the metadata."""

    kv_caches: list[KVCache]
    meta: AttentionMetadata
    layers_done: set[int] = field(default_factory=set)  # this pass's layers, to catch repeats


def paged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface over the paged cache.

    query [1, heads, T, head_dim], key/value [1, kv_heads, T, head_dim] (the flattened
    batch) -> ([1, T, heads, head_dim], None), the layout transformers' own functions return.
    """
    paging: PagedContext | None = kwargs.get(PAGING_KWARG)
    if paging is None:
        raise _unsupported(
            f"{type(module).__name__} called pagedesk's paged attention without the paging "
            "data: its model does not pass **kwargs down to attention."
        )
    _check_call(module, query, attention_mask, kwargs)
    k_cache, v_cache = _layer_cache(module, paging, key, value)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, head_dim]
    meta = paging.meta
    kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping, backend=meta.backend)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    kernels.unified_attention(
        q, k_cache, v_cache, meta.cu_query_lens, meta.seq_lens, meta.block_tables,
        float(scaling) if scaling is not None else query.shape[-1] ** -0.5, out=out,
        backend=meta.backend, max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len,
        **_kernel_options(module, kwargs, meta),
    )  # fmt: skip
    return out.unsqueeze(0), None


def _check_call(module: nn.Module, query: torch.Tensor, mask, kwargs: dict) -> None:
    what = type(module).__name__
    if query.shape[0] != 1:
        raise _unsupported(f"{what}: the paged attention expects one flattened sequence (batch 1).")
    if mask is not None:
        raise _unsupported(
            f"{what} built its own attention mask, which the paged kernels cannot apply."
        )
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        raise _unsupported(f"{what} is not causal attention; the paged kernels are causal only.")
    for extra in ("s_aux", "sinks", "position_bias", "alibi"):
        if kwargs.get(extra) is not None:
            raise _unsupported(
                f"{what} adds {extra!r} to its attention scores, which the paged kernels do not."
            )


def _layer_cache(
    module: nn.Module, paging: PagedContext, key: torch.Tensor, value: torch.Tensor
) -> KVCache:
    kv_caches, layers_done = paging.kv_caches, paging.layers_done
    layer = getattr(module, "layer_idx", None)
    what = type(module).__name__
    if not isinstance(layer, int) or not 0 <= layer < len(kv_caches):
        raise _unsupported(
            f"{what} has layer_idx {layer!r}, not one of the {len(kv_caches)} cache layers."
        )
    if layer in layers_done:
        raise _unsupported(
            f"{what} (layer {layer}) calls attention more than once in one pass, with one "
            "K/V cache per layer to write: pagedesk's paged cache cannot hold that."
        )
    layers_done.add(layer)
    k_cache, v_cache = kv_caches[layer]
    want = tuple(k_cache.shape[2:])
    got_k, got_v = (key.shape[1], key.shape[3]), (value.shape[1], value.shape[3])
    if got_k != want or got_v != tuple(v_cache.shape[2:]):
        raise _unsupported(
            f"{what} (layer {layer}) makes keys of {got_k[0]} heads x {got_k[1]} and values of "
            f"{got_v[0]} x {got_v[1]}, but the KV cache sized from the config holds "
            f"{want[0]} x {want[1]}: this architecture's KV layout is not the standard one."
        )
    return k_cache, v_cache


@functools.lru_cache(maxsize=8)
def _kernel_accepts(fn, option: str) -> bool:
    try:
        return option in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _kernel_options(module: nn.Module, kwargs: dict, meta: AttentionMetadata) -> dict:
    """sliding_window / softcap for this layer, passed only when set (and supported)."""
    window = _layer_option(module, kwargs, "sliding_window", "sliding_window")
    softcap = _layer_option(module, kwargs, "softcap", "attn_logit_softcapping")
    options = {}
    fn = kernels.unified_attention
    if window is not None:
        if _kernel_accepts(fn, "sliding_window"):
            options["sliding_window"] = int(window)
        elif meta.max_seq_len is None or meta.max_seq_len > window:
            # Within the window, windowed attention is full attention: only beyond it needed.
            raise _unsupported(
                f"{type(module).__name__} needs sliding-window attention (window {window}), "
                "which the installed kernels do not support."
            )
    if softcap:
        if not _kernel_accepts(fn, "softcap"):
            raise _unsupported(
                f"{type(module).__name__} needs attention logit soft-capping ({softcap}), "
                "which the installed kernels do not support."
            )
        options["softcap"] = float(softcap)
    return options


def _layer_option(module: nn.Module, kwargs: dict, kwarg: str, attr: str):
    """What the layer passes as `kwarg`; else its own `attr`; else the config's (for a
    window, only on a layer the config's layer_types call "sliding_attention")."""
    if kwarg in kwargs:
        return kwargs[kwarg]
    if hasattr(module, attr):
        return getattr(module, attr)
    config = getattr(module, "config", None)
    if attr == "sliding_window":
        layer_types = getattr(config, "layer_types", None) or ()
        layer = getattr(module, "layer_idx", None)
        if not (isinstance(layer, int) and layer < len(layer_types)):
            return None
        if layer_types[layer] != "sliding_attention":
            return None
    return getattr(config, attr, None)


@functools.lru_cache(maxsize=1)
def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)


# ---------------------------------------------------------------------------- building
_BUILD_LOCK = threading.Lock()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device but their buffers for real on
    the CPU (what accelerate's `init_empty_weights(include_buffers=False)` does): buffers such
    as RoPE frequencies are computed in `__init__` and are in no checkpoint.

    nn.Module.register_parameter is patched for the duration; the patch acts only in this
    thread, and builds take a lock so two never interleave their patch and restore."""
    original = nn.Module.register_parameter
    builder = threading.get_ident()

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta" and threading.get_ident() == builder:
            # Keep the object of a parameter already on meta: HF ties weights by identity.
            module._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    with _BUILD_LOCK:
        nn.Module.register_parameter = register_parameter
        try:
            with torch.device("cpu"):  # inside the loader's torch.device("meta")
                yield
        finally:
            nn.Module.register_parameter = original


class _HiddenOnly:
    """A base model's output holding only `last_hidden_state` (also `[0]`): any other field
    a head reads (past_key_values, attentions, router_logits...) is None."""

    def __init__(self, hidden: torch.Tensor):
        self.last_hidden_state = hidden

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __getitem__(self, index):
        return (self.last_hidden_state,)[index]


class _GivenHidden(nn.Module):
    """Stands in for the base model inside the head-only view: returns the hidden states it
    is handed as `inputs_embeds`, so the causal LM's forward runs only its head and the
    logits post-processing (Cohere's logit_scale, Granite's logits_scaling, soft-capping)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self._base = (base,)  # a tuple: not a submodule

    def forward(self, *args, inputs_embeds: torch.Tensor | None = None, **kwargs):
        return _HiddenOnly(inputs_embeds)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._base[0], name)  # e.g. a multiplier the head reads


def _head_only(hf_model: nn.Module) -> nn.Module:
    """A shallow copy of the causal LM sharing every module but with `_GivenHidden` as its
    base model: the same head, parameters and code, never the decoder layers."""
    head = copy.copy(hf_model)
    head._modules = dict(hf_model._modules)  # own dict: the original keeps its base model
    head._modules[hf_model.base_model_prefix] = _GivenHidden(hf_model.base_model)
    return head


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one Parameter (tied embeddings), each group in registration order."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _split(name: str) -> tuple[str, str]:
    owner, _, leaf = name.rpartition(".")
    return owner, leaf


class TransformersForCausalLM(nn.Module):
    """A transformers causal LM whose attention runs over pagedesk's paged KV cache (the
    model runner's interface: forward -> hidden, compute_logits, load_weights, param_view)."""

    def __init__(self, config):
        super().__init__()
        reason = generic_refusal(config)
        if reason is not None:
            raise _unsupported(reason)
        self.config = config
        hf_config = copy.deepcopy(config)  # the caller's config keeps its attention choice
        hf_config._attn_implementation = ATTN_IMPLEMENTATION
        cls, _ = _causal_lm_class(list(config.architectures or []), config.model_type)
        self.architecture = cls.__name__
        _register_attention()
        with _parameters_on_meta():
            hf_model = cls(hf_config)
        self.hf = hf_model
        self._check_modules()
        # Copies, not buffers: `.to(dtype)` must not round them, `to_empty` not drop them.
        self._saved_buffers = {
            n: b.detach().clone() for n, b in hf_model.named_buffers(remove_duplicate=False)
        }
        self._tied = _tied_groups(hf_model)
        self._param_names = {n for n, _ in hf_model.named_parameters(remove_duplicate=False)}
        self._persistent = set(hf_model.state_dict()) - self._param_names
        self._known = self._param_names | self._persistent | set(self._saved_buffers)
        object.__setattr__(self, "_head", _head_only(hf_model))  # not a submodule

    def _check_modules(self) -> None:
        if self.hf.base_model_prefix not in self.hf._modules:
            raise _unsupported(
                f"Architecture {self.architecture} keeps its decoder under another name than "
                f"its base_model_prefix {self.hf.base_model_prefix!r}, so its head cannot be "
                "run apart from it."
            )
        for name, _ in self.hf.named_parameters():
            if name.endswith(".sinks"):
                raise _unsupported(
                    f"Architecture {self.architecture} adds learned attention sinks to its "
                    "attention scores, which pagedesk's paged kernels do not compute."
                )
        for name, buf in self.hf.named_buffers():
            if buf.device.type == "meta":
                raise _unsupported(
                    f"Architecture {self.architecture} computes its buffer {name!r} from its "
                    "weights' device, so the generic path cannot rebuild it after loading."
                )

    # ------------------------------------------------------------ materialising
    def to_empty(self, *, device, recurse: bool = True) -> TransformersForCausalLM:
        """torch's to_empty, then the buffers put back and tied weights tied again (both
        are lost: buffers become uninitialised memory, each tied name its own tensor)."""
        super().to_empty(device=device, recurse=recurse)
        self._retie()
        for name, saved in self._saved_buffers.items():
            owner, leaf = _split(name)
            self.hf.get_submodule(owner)._buffers[leaf] = saved.to(device)
        return self

    def _retie(self) -> None:
        for names in self._tied:
            shared = self.hf.get_parameter(names[0])
            for name in names[1:]:
                owner, leaf = _split(name)
                self.hf.get_submodule(owner)._parameters[leaf] = shared

    # ------------------------------------------------------------ the runner's interface
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: int64 [T]; kv_caches: per layer (k_cache, v_cache), each
        [num_blocks, block_size, num_kv_heads, head_dim]. Returns the final hidden states
        [T, hidden] (after the last norm, before the head)."""
        out = self.hf.base_model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            **{PAGING_KWARG: PagedContext(kv_caches, attn_metadata)},
        )
        return out[0][0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab], through the causal LM's own head
        and post-processing."""
        out = self._head(inputs_embeds=hidden[None], use_cache=False)
        return out.logits[0].float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (Hugging Face names) into the parameters. A tensor that
        already is its destination (`param_view`, which the loader may read into) is not
        copied. ValueError on a shape mismatch, an unknown name, or a parameter left unloaded
        (one of a tied group is enough)."""
        self._check_complete(copy_checkpoint(weights, self.param_view, self._resolve))
        self._probe()

    def _check_complete(self, seen: set[str]) -> None:
        tied = {name: group for group in self._tied for name in group}
        raise_if_missing(
            name
            for name in self._param_names
            if name not in seen and not seen.intersection(tied.get(name, ()))
        )

    def _probe(self) -> None:
        """One two-token pass over a scratch cache right after loading, so that code which
        does not fit the paged attention (drops the paging keyword on its way down, builds
        its own mask, has a KV layout the cache sizing does not know, calls attention twice
        per layer...) is refused at load time, not in the middle of a request."""
        from engine.model_runner import cache_shape_of

        weight = next(self.hf.parameters())
        device, dtype = weight.device, weight.dtype
        shape = cache_shape_of(self.config, dtype)
        dims = (1, 2, shape.num_kv_heads, shape.head_dim)
        caches = [
            (torch.zeros(dims, dtype=dtype, device=device), torch.zeros(dims, dtype=dtype, device=device))
            for _ in range(shape.num_layers)
        ]  # fmt: skip
        i32 = dict(dtype=torch.int32, device=device)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(2, device=device),
            cu_query_lens=torch.tensor([0, 2], **i32),
            seq_lens=torch.tensor([2], **i32),
            block_tables=torch.zeros((1, 1), **i32),
            max_query_len=2,
            max_seq_len=2,
        )
        tokens = torch.zeros(2, dtype=torch.long, device=device)
        training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                hidden = self(tokens, torch.arange(2, device=device), caches, meta)
                self.compute_logits(hidden[-1:])
        finally:
            self.train(training)

    def param_view(self, hf_name: str) -> torch.Tensor | None:
        """The parameter (or persistent buffer) the checkpoint tensor `hf_name` fills, or None
        for one that is recomputed (RoPE frequencies). ValueError for a name this model does
        not have."""
        name = self._resolve(hf_name)
        if name in self._param_names:
            return self.hf.get_parameter(name).detach()
        if name in self._persistent:
            return self.hf.get_buffer(name)
        if name in self._saved_buffers or name.endswith("rotary_emb.inv_freq"):
            return None
        how = (
            "transformers merges per-expert tensors like this one on load, which the generic "
            "path does not do"
            if ".experts." in hf_name
            else "a checkpoint whose names transformers converts on load is not supported by "
            "the generic path"
        )
        raise ValueError(
            f"Unexpected weight {hf_name!r} for {self.architecture}: transformers' model has "
            f"no such tensor ({how})."
        )

    def _resolve(self, hf_name: str) -> str:
        """Our name for a checkpoint name; a base-model checkpoint leaves off its prefix."""
        if hf_name in self._known:
            return hf_name
        prefixed = f"{self.hf.base_model_prefix}.{hf_name}"
        return prefixed if prefixed in self._known else hf_name
