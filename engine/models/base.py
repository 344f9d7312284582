"""What every native causal LM shares: the logits head and loading Hugging Face weights.

A family subclasses `PagedCausalLM` and hands it its decoder (whose `forward(input_ids,
positions, kv_caches, meta)` returns the final hidden states) and states:
  * `decoder_name` — the decoder's attribute, as the checkpoint names it ("model");
  * `embedding()` — the input embedding, reused as the head when the config ties them;
  * `stacked_shards()` — which Hugging Face tensors fill rows of one merged matrix of ours
    (q/k/v -> qkv_proj, gate/up -> gate_up_proj), and which rows;
  * `hf_prefixes` — prefixes some checkpoints leave off (GPT-2's "transformer.");
  * `ignored_suffixes` — checkpoint tensors we recompute or never need;
  * `final_logit_softcap` — Gemma's tanh capping of the logits, None for most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.distributed.parallel_state import current_group
from engine.models.layers import (
    KVCache, Linear, linear, packable, packed_linear, packed_weight, packing_available,
)  # fmt: skip


class CheckpointSlice(NamedTuple):
    """The part of a checkpoint tensor one tensor-parallel rank holds: [start, stop) along
    `dim` (0: rows, 1: columns)."""

    dim: int
    start: int
    stop: int


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    def key(t: torch.Tensor) -> tuple:
        return t.device, t.dtype, t.data_ptr(), t.stride()

    return key(a) == key(b)


def copy_checkpoint(
    weights: Iterable[tuple[str, torch.Tensor]],
    param_view: Callable[[str], torch.Tensor | None],
    key: Callable[[str], str],
) -> set[str]:
    """Copy each checkpoint tensor into `param_view(name)` (skipped when None, not copied when
    it already is that memory); returns `key(name)` of every tensor loaded. ValueError on a
    shape mismatch."""
    seen: set[str] = set()
    with torch.no_grad():
        for name, tensor in weights:
            dst = param_view(name)
            if dst is None:
                continue
            if dst.shape != tensor.shape:
                raise ValueError(
                    f"Weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dst.shape)}."
                )
            if not _same_memory(tensor, dst):
                dst.copy_(tensor)
            seen.add(key(name))
    return seen


def raise_if_missing(missing: Iterable[str]) -> None:
    """ValueError naming (the first 8 of) the parameters the checkpoint did not fill."""
    missing = sorted(missing)
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise ValueError(f"Weights missing from the checkpoint: {', '.join(missing[:8])}{more}.")


class PagedCausalLM(nn.Module):
    """A causal LM over the paged KV cache: the model runner's interface."""

    decoder_name = "model"  # the decoder's attribute: the checkpoint's name for it
    hf_prefixes: tuple[str, ...] = ()
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)

    def __init__(self, config, model: nn.Module):
        super().__init__()
        self.config = config
        self.add_module(self.decoder_name, model)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.tp = current_group()  # TP=1 unless built for a tensor-parallel group
        # Tied: no lm_head at all, compute_logits reuses the embedding (no shared Parameter
        # to keep tied through meta -> to_empty).
        self.lm_head = None if self.tie_word_embeddings else self._make_lm_head()
        self.final_logit_softcap: float | None = None
        self.packed_tied_head: torch.Tensor | None = None  # see pack_tied_head

    def pack_tied_head(self, stored: torch.dtype = torch.float32) -> bool:
        """Keep a packed copy of a tied head's matrix (layers.py `packed_weight`, kept in
        `stored`) beside the embedding (which lookups need plain), as vLLM's CPU build does
        for tied heads: the head is the largest matmul of a small model (SmolLM2: 113 MB of
        its 540), and packed it is ~25% faster at 16 rows. Costs its size again (half of it
        in bfloat16). False where not tied, sharded, not float32 on the CPU, or already
        packed."""
        weight = self.embedding().weight
        if self.lm_head is not None or self.tp.is_parallel or self.packed_tied_head is not None:
            return False
        if not packable(weight) or not packing_available(stored):
            return False
        self.packed_tied_head = packed_weight(weight, stored)
        return True

    def _make_lm_head(self) -> Linear:
        if not self.tp.is_parallel:
            return Linear(self.head_input_size(), self.config.vocab_size, bias=False)
        from engine.models.parallel_layers import ColumnParallelLinear, vocab_range

        rows = vocab_range(self.config.vocab_size, self.tp.rank, self.tp.world_size)[2]
        return ColumnParallelLinear(self.head_input_size(), rows, False, self.tp)

    # ------------------------------------------------------------ what a family states
    supports_tensor_parallel = False  # True: the family shards itself for a TP group

    def embedding(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def head_input_size(self) -> int:
        return self.config.hidden_size

    def stacked_shards(self) -> dict[str, tuple[str, slice]]:
        """HF name fragment -> (our merged fragment, the rows it fills)."""
        return {}

    # ------------------------------------------------------------ running
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: int64 [T]; kv_caches: per layer (k_cache, v_cache), each
        [num_blocks, block_size, num_kv_heads, head_dim]. Returns hidden states [T, hidden]."""
        return self.decoder(input_ids, positions, kv_caches, attn_metadata)

    @property
    def decoder(self) -> nn.Module:
        return getattr(self, self.decoder_name)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab] (tensor-parallel: on rank 0, and
        None on the other ranks)."""
        if self.tp.is_parallel:
            from engine.models.parallel_layers import parallel_logits

            weight = self.embedding().weight if self.lm_head is None else None
            logits = parallel_logits(hidden, weight, self.config.vocab_size, self.tp, self.lm_head)
            if logits is None:
                return None
        elif self.packed_tied_head is not None:
            logits = packed_linear(hidden, self.packed_tied_head, self.embedding().weight.shape[0])
        elif self.lm_head is None:
            logits = linear(hidden, self.embedding().weight).float()
        else:
            logits = self.lm_head(hidden).float()
        if self.final_logit_softcap:
            cap = self.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------ loading
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the (merged) parameters.

        A tensor that already is its destination (`param_view(name)`, which a loader may
        read straight into) is not copied. Raises ValueError on a shape mismatch, an unknown
        name, or a parameter left unloaded.
        """
        seen = copy_checkpoint(weights, self.param_view, self._canonical)
        raise_if_missing(self._expected_hf_names() - seen)

    def param_view(self, hf_name: str) -> torch.Tensor | None:
        """The part of our parameters that the Hugging Face tensor `hf_name` fills (rows of a
        merged matrix are contiguous), or None for a tensor we do not need (recomputed RoPE
        frequencies, a tied lm_head). ValueError for a name this model does not have."""
        name = self._canonical(hf_name)
        if name.endswith(self.ignored_suffixes) or (
            name == "lm_head.weight" and self.lm_head is None
        ):
            return None
        target, rows = self._locate(name)
        try:
            param = self.get_parameter(target).detach()
        except AttributeError:
            raise ValueError(f"Unexpected weight {hf_name!r} for {type(self).__name__}.") from None
        view = param if rows is None else param[rows]
        cut = self.checkpoint_slice(hf_name)
        if cut is not None and cut.dim == 0 and view.shape[0] > cut.stop - cut.start:
            view = view[: cut.stop - cut.start]  # the last rank's vocab rows: padded
        return view

    def checkpoint_slice(self, hf_name: str) -> CheckpointSlice | None:
        """The part of checkpoint tensor `hf_name` this rank reads; None: all of it (TP=1)."""
        return None

    def _canonical(self, hf_name: str) -> str:
        """The name with the prefix some checkpoints leave off put back."""
        for prefix in self.hf_prefixes:
            if not hf_name.startswith(prefix) and hf_name != "lm_head.weight":
                return prefix + hf_name
        return hf_name

    def _locate(self, hf_name: str) -> tuple[str, slice | None]:
        """Our parameter name and the rows of it that `hf_name` fills (None: all of it)."""
        for fragment, (merged, rows) in self.stacked_shards().items():
            if fragment in hf_name:
                return hf_name.replace(fragment, merged), rows
        return hf_name, None

    def _expected_hf_names(self) -> set[str]:
        stacked = self.stacked_shards()
        names: set[str] = set()
        for name, _ in self.named_parameters():
            shards = [name.replace(merged, hf) for hf, (merged, _) in stacked.items() if merged in name]
            names.update(shards or [name])
        return names


def qkv_shards(q_size: int, kv_size: int, names=("q_proj", "k_proj", "v_proj")) -> dict:
    """Rows of a merged qkv_proj filled by separate q/k/v checkpoint tensors."""
    q, k, v = names
    return {
        f".{q}.": (".qkv_proj.", slice(0, q_size)),
        f".{k}.": (".qkv_proj.", slice(q_size, q_size + kv_size)),
        f".{v}.": (".qkv_proj.", slice(q_size + kv_size, q_size + 2 * kv_size)),
    }


def gate_up_shards(intermediate_size: int) -> dict:
    """Rows of a merged gate_up_proj filled by separate gate/up checkpoint tensors."""
    return {
        ".gate_proj.": (".gate_up_proj.", slice(0, intermediate_size)),
        ".up_proj.": (".gate_up_proj.", slice(intermediate_size, 2 * intermediate_size)),
    }
