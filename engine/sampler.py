"""Picks each request's next token from its logits, all rows at once on the device.

Order, as vLLM's: allowed_token_ids -> bad_words -> logit_bias (engine.logits_constraints)
-> penalties (repetition over prompt + output, presence / frequency over
the output) -> min_tokens (EOS and stop ids masked) -> greedy argmax, or temperature ->
min-p -> top-k / top-p -> a draw. The draw uses the exponential race (argmax of p / E,
E ~ Exp(1)), so a seeded request takes its noise from its own generator: the same seed
gives the same tokens whatever else is in the batch. Log-probabilities are those of the
model's raw distribution (vLLM's default), with the top-N and the chosen token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.logits_constraints import apply_constraints
from engine.request import Request
from engine.structured_outputs import apply_grammar_bitmask


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    # Per row: {token id: logprob} of the top-N plus the chosen token, or None if not asked.
    logprobs: list[dict[int, float] | None]
    chosen_logprobs: list[float | None]


def token_counts(token_lists: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] float counts of each token id in each row's list."""
    width = max((len(t) for t in token_lists), default=0)
    counts = torch.zeros(len(token_lists), vocab + 1, device=device)
    if width == 0:
        return counts[:, :vocab]
    # Pad with the extra column `vocab`, dropped after the scatter.
    padded = [list(t) + [vocab] * (width - len(t)) for t in token_lists]
    index = torch.tensor(padded, dtype=torch.long, device=device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    vocab, dev = logits.shape[-1], logits.device
    params = [r.sampling_params for r in requests]
    out_counts = token_counts([r.output_token_ids for r in requests], vocab, dev)
    if any(p.repetition_penalty != 1.0 for p in params):  # decided on the host: no sync
        rep = torch.tensor([p.repetition_penalty for p in params], device=dev)
        prompt_counts = token_counts([r.prompt_token_ids for r in requests], vocab, dev)
        seen = (prompt_counts + out_counts) > 0
        scaled = torch.where(logits > 0, logits / rep[:, None], logits * rep[:, None])
        logits = torch.where(seen, scaled, logits)
    freq = torch.tensor([p.frequency_penalty for p in params], device=dev)
    pres = torch.tensor([p.presence_penalty for p in params], device=dev)
    return logits - freq[:, None] * out_counts - pres[:, None] * (out_counts > 0).to(logits.dtype)


def apply_min_tokens(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Until a request has min_tokens outputs, it may not pick EOS or a stop token."""
    rows, cols = [], []
    for i, r in enumerate(requests):
        p = r.sampling_params
        if r.num_output_tokens < p.min_tokens:
            banned = set(p.stop_token_ids)
            if r.eos_token_id is not None:
                banned.add(r.eos_token_id)
            banned.update(r.extra_eos_token_ids)
            for t in banned:
                if t < logits.shape[-1]:
                    rows.append(i)
                    cols.append(t)
    if rows:
        logits = logits.clone()
        logits[rows, cols] = float("-inf")
    return logits


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top token's."""
    probs = logits.softmax(dim=-1)
    floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < floor, float("-inf"))


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

    def __call__(self, logits: torch.Tensor, requests: Sequence[Request]) -> SamplerOutput:
        """logits: float32 [n, vocab], one row per request, in the same order."""
        params = [r.sampling_params for r in requests]
        # vLLM masks grammar-forbidden tokens before the sampler: they get no logprob either.
        logits = apply_grammar_bitmask(logits, requests)
        raw = logits
        logits = apply_constraints(logits, requests)
        if any(p.has_penalties for p in params):
            logits = apply_penalties(logits, requests)
        if any(p.min_tokens for p in params):
            logits = apply_min_tokens(logits, requests)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if random_rows:
            rows = torch.tensor(random_rows, device=logits.device)
            tokens[rows] = self._sample(
                logits[rows], [params[i] for i in random_rows],
                [requests[i].generator for i in random_rows],
            )
        token_list = tokens.tolist()  # the step's one wait for the device
        logprobs, chosen = self._logprobs(raw, tokens, token_list, params)
        return SamplerOutput(token_list, logprobs, chosen)

    def _sample(self, logits, params, generators) -> torch.Tensor:
        dev, vocab = logits.device, logits.shape[-1]
        temps = torch.tensor([p.temperature for p in params], device=dev, dtype=logits.dtype)
        logits = logits / temps[:, None]
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=dev, dtype=logits.dtype)
            logits = apply_min_p(logits, min_p)
        if any(0 < p.top_k < vocab or p.top_p < 1.0 for p in params):
            top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=dev)
            top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=logits.dtype)
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        return (probs / self._noise(probs, generators)).argmax(dim=-1)

    def _noise(self, probs: torch.Tensor, generators) -> torch.Tensor:
        """Exp(1) noise: one draw for all the rows without a seed, and a draw from its own
        generator for each seeded row (so its tokens do not depend on its neighbours)."""
        noise = torch.empty_like(probs)
        seeded = [i for i, gen in enumerate(generators) if gen is not None]
        if len(seeded) < len(generators):
            noise.exponential_(generator=self.generator)
        for i in seeded:
            noise[i].exponential_(generator=generators[i])
        return noise

    @staticmethod
    def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, token_list: list[int],
                  params) -> tuple[list, list]:  # fmt: skip
        """Top-N and chosen-token logprobs of the rows that asked, read back in one pass."""
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        logprobs: list[dict[int, float] | None] = [None] * len(params)
        chosen: list[float | None] = [None] * len(params)
        if not wanted:
            return logprobs, chosen
        rows = torch.tensor(wanted, device=raw.device)
        lp = raw[rows].float().log_softmax(dim=-1)
        top_n = max(params[i].logprobs for i in wanted)
        top_vals, top_ids = lp.topk(max(top_n, 1), dim=-1)
        picked = lp.gather(1, tokens[rows][:, None]).squeeze(1)
        ids, vals, picks = top_ids.tolist(), top_vals.tolist(), picked.tolist()
        for j, i in enumerate(wanted):
            n = params[i].logprobs
            entry = dict(zip(ids[j][:n], vals[j][:n]))
            entry[token_list[i]] = picks[j]
            logprobs[i] = entry
            chosen[i] = picks[j]
        return logprobs, chosen
