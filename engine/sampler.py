"""Picks each request's next token from its logits, all rows at once on the device.

Greedy rows take the argmax. Random rows are scaled by temperature, cut by top-k and
top-p, and sampled with the exponential-race trick (argmax of p / E, E ~ Exp(1)), which
lets a seeded request draw its noise from its own generator: the same seed gives the same
tokens whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.sampling_params import SamplingParams


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's top-k and top-p nucleus.

    top_k: int64 [n] (vocab size = no cut); top_p: float [n] (1.0 = no cut).
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device)
    cut = ranks[None, :] >= top_k[:, None]
    probs = sorted_logits.masked_fill(cut, float("-inf")).softmax(dim=-1)
    # Keep a token while the mass before it is below top_p: the top token always stays.
    mass_before = probs.cumsum(dim=-1) - probs
    cut |= mass_before >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> list[int]:
        """logits: float32 [n, vocab], one row per request; returns n token ids."""
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        tokens = logits.argmax(dim=-1)
        if not bool(greedy.all()):
            random_rows = (~greedy).nonzero().flatten()
            chosen = self._sample(
                logits[random_rows],
                [params[i] for i in random_rows.tolist()],
                [generators[i] for i in random_rows.tolist()],
            )
            tokens[random_rows] = chosen
        return tokens.tolist()

    def _sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        dev, vocab = logits.device, logits.shape[-1]
        temps = torch.tensor([p.temperature for p in params], device=dev, dtype=logits.dtype)
        logits = logits / temps[:, None]
        top_k = torch.tensor(
            [p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=dev
        )
        top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=logits.dtype)
        if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs)
        for i, gen in enumerate(generators):
            noise[i].exponential_(generator=gen or self.generator)
        return (probs / noise).argmax(dim=-1)
