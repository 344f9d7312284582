"""The per-request constraints on the logits (vLLM's): allowed_token_ids, bad_words and
logit_bias, in vLLM v1's order, for the rows that ask, all rows in one operation each.

Which rows and columns to touch is decided on the host from the requests (as for the
penalties), so no step waits for the device here. The logits are never changed in place:
the caller keeps the raw ones for the logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.bad_words import banned_tokens
from engine.request import Request


def apply_constraints(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """allowed_token_ids -> bad_words -> logit_bias; rows that ask for none are untouched.

    vLLM puts min_tokens between bad_words and logit_bias and the penalties after: the
    sampler applies min_tokens after the penalties, which gives the same logits (a token
    masked to -inf stays there under a finite bias or penalty).
    """
    params = [r.sampling_params for r in requests]
    if any(p.allowed_token_ids is not None for p in params):
        logits = apply_allowed_token_ids(logits, requests)
    if any(r.bad_words_token_ids for r in requests):
        logits = apply_bad_words(logits, requests)
    if any(p.logit_bias for p in params):
        logits = apply_logit_bias(logits, requests)
    return logits


def apply_allowed_token_ids(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Mask every token outside a row's allowed_token_ids to -inf."""
    rows, cols, constrained = [], [], []
    for i, r in enumerate(requests):
        allowed = r.sampling_params.allowed_token_ids
        if allowed is not None:
            constrained.append(i)
            rows += [i] * len(allowed)
            cols += allowed
    dev = logits.device
    drop = torch.zeros_like(logits, dtype=torch.bool)
    drop[_ids(constrained, dev)] = True  # a constrained row drops all but its own ids
    drop[_ids(rows, dev), _ids(cols, dev)] = False
    return logits.masked_fill(drop, float("-inf"))


def apply_bad_words(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Ban, per row, the last token of each bad word the output is one token from."""
    rows, cols = [], []
    for i, r in enumerate(requests):
        if r.bad_words_token_ids:
            banned = banned_tokens(r.bad_words_token_ids, r.output_token_ids)
            rows += [i] * len(banned)
            cols += banned
    if not rows:
        return logits
    dev = logits.device
    minus_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=dev)
    return logits.index_put((_ids(rows, dev), _ids(cols, dev)), minus_inf)


def apply_logit_bias(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """Add each row's logit_bias to the logits of the token ids it lists."""
    rows, cols, biases = [], [], []
    for i, r in enumerate(requests):
        bias = r.sampling_params.logit_bias
        if bias:
            rows += [i] * len(bias)
            cols += bias.keys()
            biases += bias.values()
    dev = logits.device
    values = torch.tensor(biases, dtype=logits.dtype, device=dev)
    return logits.index_put((_ids(rows, dev), _ids(cols, dev)), values, accumulate=True)


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
