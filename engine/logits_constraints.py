"""The per-request constraints on the logits (vLLM's): allowed_token_ids, bad_words and
logit_bias, in vLLM v1's order, for the rows that ask, all rows in one operation each.

Which rows and columns to touch is decided on the host from the requests (as for the
penalties), so no step waits for the device here. A request's allowed-token mask and its
bias tensors are built on the device once, on its first step, and reused while it lives
(vLLM keeps them in its persistent batch): a step copies no per-token lists. The logits
are never changed in place: the caller keeps the raw ones for the logprobs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from engine.bad_words import banned_tokens
from engine.request import Request

# Per request, while it lives: its mask of the tokens allowed_token_ids drops (True = drop,
# [vocab]) and its logit_bias as (token ids, biases) tensors, on the logits' device.
_drop_masks: weakref.WeakKeyDictionary[Request, torch.Tensor] = weakref.WeakKeyDictionary()
_biases: weakref.WeakKeyDictionary[Request, tuple[torch.Tensor, torch.Tensor]] = (
    weakref.WeakKeyDictionary())


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
    rows = [i for i, r in enumerate(requests) if r.sampling_params.allowed_token_ids is not None]
    drop = torch.stack([_drop_mask(requests[i], logits) for i in rows])
    if len(rows) == len(requests):  # every row asks: no gather (where beats masked_fill on CPUs)
        return torch.where(drop, float("-inf"), logits)
    index = _ids(rows, logits.device)
    return logits.index_put((index,), torch.where(drop, float("-inf"), logits[index]))


def _drop_mask(request: Request, logits: torch.Tensor) -> torch.Tensor:
    mask = _drop_masks.get(request)
    if mask is None or mask.device != logits.device or mask.shape[0] != logits.shape[-1]:
        mask = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[_ids(request.sampling_params.allowed_token_ids, logits.device)] = False
        _drop_masks[request] = mask
    return mask


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
    rows = [i for i, r in enumerate(requests) if r.sampling_params.logit_bias]
    biases = [_bias(requests[i], logits) for i in rows]
    dev = logits.device
    counts = _ids([len(cols) for cols, _ in biases], dev)
    index = (_ids(rows, dev).repeat_interleave(counts), torch.cat([cols for cols, _ in biases]))
    # Each (row, token) appears once (a dict's keys): a plain put of the sums is exact.
    added = logits[index] + torch.cat([values for _, values in biases])
    return logits.index_put(index, added)


def _bias(request: Request, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cached = _biases.get(request)
    if cached is None or cached[0].device != logits.device or cached[1].dtype != logits.dtype:
        bias = request.sampling_params.logit_bias
        cached = (_ids(list(bias), logits.device),
                  torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device))
        _biases[request] = cached
    return cached


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
