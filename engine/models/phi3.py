"""Phi-3 (and Phi-3.5, Phi-4-mini): a Llama-shaped decoder whose checkpoints already fuse
q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, with su/longrope scaling (two sets
of RoPE frequencies, see `RotaryEmbedding`), an optional partial rotary factor and a
sliding window on every layer when the config sets one."""

from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    def stacked_shards(self) -> dict[str, tuple[str, slice]]:
        return {}  # the checkpoint's names are already ours
